"""save_merged: the walk, the layout and the writer put together."""
from __future__ import annotations

import contextlib
import ctypes as c
import datetime
import json
import os
import signal
import sys
import threading
from typing import Any, Iterator, Optional, Union

import torch
import torch.distributed as dist

from .. import _capi
from .._errors import Error
from .._lib import lib
from .._tools import world
from . import _fsdp1, _launch, _layout, _serving
from ._layout import Unsupported
from ._parts import (BATCH_A_BYTES, BATCH_A_BYTES_DIR, FACTOR_DTYPES, Keep, batches, check,
                     dtype_code, put_batch, put_piece)
from ._walk import FlatParams, Item, walk

PathLike = Union[str, "os.PathLike[str]"]


def _unwrap(model: torch.nn.Module, adapter_name: Optional[str]) -> tuple:
    """(the PEFT model, its base model, the adapter to merge)."""
    inner = getattr(model, "module", model)  # DDP, and an FSDP1 root (its wrapped module)
    inner = getattr(inner, "_fsdp_wrapped_module", inner)
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not hasattr(inner, "peft_config") or not hasattr(inner, "base_model"):
        raise Unsupported(f"{type(inner).__name__} is not a PEFT model (peft.PeftModel)")
    # PEFT's active_adapter is the first of active_adapters; merge_and_unload() merges them all
    active = getattr(inner, "active_adapters", None)
    active = [active] if isinstance(active, str) else list(active or [inner.active_adapter])
    if adapter_name is None and len(active) != 1:
        raise Unsupported(f"several active adapters {active}: pass adapter_name= to merge one "
                          "(loraslab merges one adapter at a time)")
    adapter = adapter_name or active[0]
    if adapter not in inner.peft_config:
        raise Unsupported(f"adapter {adapter!r} not in the model ({sorted(inner.peft_config)})")
    cfg = inner.peft_config[adapter]
    if getattr(cfg, "peft_type", None) is not None and str(cfg.peft_type).split(".")[-1] != "LORA":
        raise Unsupported(f"adapter {adapter!r} is {cfg.peft_type}, not LoRA")
    return inner, inner.base_model.model, adapter


def _is_meta(t: Any) -> bool:
    t = getattr(t, "local", t)  # an FSDP1 piece
    t = t.to_local() if hasattr(t, "to_local") else t
    return bool(getattr(t, "is_meta", False))


def _check_items(items: list[Item]) -> None:
    """What the writer would refuse, refused here by name, before any output exists."""
    for it in items:
        lo = it.lora
        for what, t in (("the weight", it.tensor), ("LoRA A", lo and lo.a), ("LoRA B", lo and lo.b),
                        ("the DoRA magnitude", lo and lo.magnitude)):
            if t is not None and _is_meta(t):
                raise Unsupported(f"tensor `{it.name}`: {what} is on the meta device (never "
                                  "materialised: load or initialise the weights first, e.g. "
                                  "FSDP's param_init_fn or to_empty() and a load)")
        dtype_code(it.tensor, it.name)
        if lo is None:
            continue
        for f in (lo.a, lo.b):
            if f.dtype not in FACTOR_DTYPES:
                raise Unsupported(f"tensor `{it.name}`: LoRA factor dtype {f.dtype}")
        if it.tensor.dtype not in FACTOR_DTYPES:
            raise Unsupported(f"tensor `{it.name}`: a LoRA target of dtype {it.tensor.dtype}")
        if lo.kind == "embedding" and lo.magnitude is not None:
            raise Unsupported(f"tensor `{it.name}`: DoRA on an embedding (as `loraslab merge`, "
                              "this version refuses it)")


def _timeout(group: Optional[Any]) -> datetime.timedelta:
    """The job's own collective timeout (init_process_group(timeout=)): a group made without one
    gets torch's 30-minute default, so a rank that never calls save_merged would hold the others
    that long."""
    from torch.distributed import distributed_c10d as c10d
    pg = group if group is not None else c10d._get_default_group()
    for dev in ("cpu", "cuda"):
        try:
            return pg._get_backend(torch.device(dev)).options._timeout
        except Exception:  # noqa: BLE001 - no backend for that device, or an older torch
            continue
    return c10d.default_pg_timeout


def _gloo(group: Optional[Any]) -> Optional[Any]:
    """A gloo group over the writing ranks (None without torch.distributed): the host-side
    collectives run there whatever backend the training uses, with the job's timeout.  Every rank
    of the world must enter (torch's rule for new_group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    timeout = _timeout(group)
    try:
        return dist.new_group(backend="gloo", timeout=timeout, ranks=None if group is None else
                              dist.get_process_group_ranks(group))
    except Exception as e:  # noqa: BLE001 - a missing rank surfaces as a store or backend error
        raise Error(_capi.ERR_COMM, "LSL_ERR_COMM",
                    f"save_merged: rank {dist.get_rank()}: not every rank of the job entered "
                    f"save_merged within the job's timeout ({timeout.total_seconds():g} s); it is "
                    "collective: every rank must call it (one that raised earlier or skipped the "
                    f"call leaves the others waiting) ({type(e).__name__}: {e})") from e


def _check_world() -> None:
    """A launcher's world without torch.distributed (never started, or destroyed): each rank would
    take its shards for whole tensors."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size > 1 and not (dist.is_available() and dist.is_initialized()):
        raise Error(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG",
                    f"save_merged: this process is rank {os.environ.get('RANK', '?')} of "
                    f"WORLD_SIZE={size}, but torch.distributed is not initialised (or "
                    "destroy_process_group already ran): call save_merged on every rank while "
                    "the process group is up")


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP during the save: loraslab's temporaries go, and the signal then
    does what it would have done (lsl_signals_install: a default action exits 128 + signal).  A
    Python handler (Ctrl-C's KeyboardInterrupt, a job's own) is deferred to the end of the call,
    so every rank first fails the save alike (LSL_ERR_INTERRUPTED); then it runs, and
    KeyboardInterrupt reaches the caller as itself."""
    lb = lib()
    saved: dict[int, Any] = {}
    pending: list[int] = []
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            h = signal.getsignal(s)
            if callable(h):
                saved[s] = h
                signal.signal(s, lambda sig, _frame: pending.append(sig))
    lb.lsl_signals_install()  # over Python's own C handler, which it calls on
    try:
        yield
    finally:
        lb.lsl_signals_restore()
        for s, h in saved.items():
            signal.signal(s, h)
        for sig in pending:
            saved[sig](sig, None)


def _agree(ok: bool, why: str, gloo: Optional[Any]) -> None:
    """Every rank learns whether every rank passed its checks, before any output exists."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if gloo is not None:
        dist.all_reduce(flag, group=gloo)
    if int(flag.item()):
        raise Error(_capi.ERR_UNSUPPORTED, "LSL_ERR_UNSUPPORTED",
                    why or "another rank refused the model (its message says why)")


def save_merged(model: torch.nn.Module, path: PathLike, *, adapter_name: Optional[str] = None,
                overwrite: bool = False, staging_mib: int = 64, quiet: bool = False,
                process_group: Optional[Any] = None, stripe_count: int = 0,
                stripe_size: int = 0, format: Optional[str] = None,
                max_shard_size: Union[int, str] = "5GB", tokenizer: Optional[Any] = None) -> None:
    """Write the merged checkpoint of a PEFT LoRA model to `path`: a Hugging Face directory that
    transformers, vLLM and SGLang load (model.safetensors or model-0000i-of-0000K.safetensors
    shards of at most `max_shard_size` and their index, config.json, generation_config.json,
    the files of `tokenizer` (anything with save_pretrained), loraslab.json, checksums.json), or,
    when `path` ends in .h5/.hdf5 (or `format="h5"`), one loraslab HDF5 file, the archive, that
    `loraslab convert` turns into that directory.

    Collective over the job (or `process_group`): every rank calls it.  `model` is a PEFT model
    wrapped by FSDP2 (`fully_shard`), FSDP1 (`FullyShardedDataParallel`), DDP, or nothing.  Each
    rank writes what it holds, into its place in the output: its FSDP2 rows, its FSDP1 element
    ranges, or its slice of a replicated tensor; only LoRA factors are gathered; GPU tensors
    (FSDP1 pieces too) go in as device pointers, the work ordered after torch's current stream
    (DoRA and LoRA on embeddings have no GPU kernel: their tensors are copied down chunk by chunk
    through the staging budget and merged on the CPU, to the bytes a CPU job writes); the model
    is not changed.  Host memory: the staging budget (`staging_mib`) plus small buffers.
    `stripe_count` (-1: every OST) and `stripe_size` (bytes, a multiple of 64 KiB) set the Lustre
    layout, as `loraslab merge --stripe-count/--stripe-size` do; 0 leaves it to the I/O plan.

    A signal during the call (SIGINT, SIGTERM, SIGHUP) removes what it wrote: with no handler of
    the job's the process exits 128 + signal; with one (Ctrl-C's KeyboardInterrupt included) every
    rank raises loraslab.Error LSL_ERR_INTERRUPTED and the handler runs after.

    Raises loraslab.Error on every rank alike, with nothing left at `path`."""
    with _signals():
        _save_merged(model, path, adapter_name, overwrite, staging_mib, quiet, process_group,
                     stripe_count, stripe_size, format, max_shard_size, tokenizer)


def _shard_bytes(size: Union[int, str]) -> int:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    b = c.c_uint64()
    if lib().lsl_parse_size(str(size).encode(), c.byref(b)) != 0 or b.value == 0:
        raise ValueError(f"max_shard_size takes a byte count or a size such as '5GB', "
                         f"'500MB', '2GiB', not {size!r}")
    return b.value


def _save_merged(model: torch.nn.Module, path: PathLike, adapter_name: Optional[str],
                 overwrite: bool, staging_mib: int, quiet: bool, process_group: Optional[Any],
                 stripe_count: int, stripe_size: int, fmt: Optional[str],
                 max_shard_size: Union[int, str], tokenizer: Optional[Any]) -> None:
    _check_world()
    cfg = _capi.WriterConfig(staging_bytes=staging_mib << 20, overwrite=int(overwrite),
                             quiet=1 if quiet else 0, progress_label=b"save_merged",
                             stripe_count=_capi.STRIPE_ALL if stripe_count == -1 else
                             max(0, stripe_count), stripe_size=stripe_size)
    peft_model = None
    files: list[tuple[str, bytes]] = []
    try:
        cfg.format = _serving.output_format(fmt)
        cfg.max_shard_bytes = _shard_bytes(max_shard_size)
        peft_model, base, adapter = _unwrap(model, adapter_name)
        params, hybrid = None, None
        if _fsdp1.is_fsdp1(model):
            size = dist.get_world_size(process_group) if dist.is_initialized() else 1
            hybrid = _fsdp1.hybrid_writers(model) if process_group is None else None
            params = FlatParams(_fsdp1.index(model, len(hybrid) if hybrid else size))
        items = list(walk(base, adapter, params))
        _check_items(items)
        files = _serving.serving_files(base, tokenizer)
        kind, why = _launch.choose(process_group)
        failed = ""
    except Exception as e:  # noqa: BLE001 - any local failure must reach the agreement below
        failed = str(e) if isinstance(e, (Unsupported, ValueError)) else f"{type(e).__name__}: {e}"
        items, kind, why, base, adapter, hybrid = [], "", "", None, None, None
    gloo = _gloo(process_group)
    writers = hybrid or _hsdp_writers(items)
    try:
        _agree(not failed, failed, gloo)
        if writers is None:
            _save(peft_model, path, items, kind, why, adapter, base, gloo, cfg, files)
        else:
            _save_hsdp(writers, peft_model, path, items, adapter, base, gloo, cfg, files)
    finally:
        if gloo is not None:
            dist.destroy_process_group(gloo)


def _hsdp_writers(items: list[Item]) -> Optional[list[int]]:
    """Under FSDP2's HSDP, the global ranks of replica 0's shard group (they write; the replicas
    hold the same shards); else None.  (FSDP1's HYBRID_SHARD: _fsdp1.hybrid_writers.)"""
    for it in items:
        if _layout.hsdp(it.tensor):
            return [int(r) for r in it.tensor.device_mesh.mesh[0].flatten().tolist()]
    return None


def _save_hsdp(writers: list[int], peft_model: Any, path: PathLike, items: list[Item],
               adapter: str, base: torch.nn.Module, gloo: Any,
               cfg: _capi.WriterConfig, files: list[tuple[str, bytes]]) -> None:
    """Replica 0's shard group writes over callbacks on a gloo group of its own; every rank then
    learns its status (the other replicas raise the same loraslab.Error)."""
    sub = dist.new_group(ranks=writers, backend="gloo")  # every rank enters, torch's rule
    result: list[Any] = [None]
    try:
        if dist.get_rank() in writers:
            try:
                _save(peft_model, path, items, "callbacks", "HSDP: replica 0 writes", adapter,
                      base, sub, cfg, files)
                result = [(0, "", "")]
            except Error as e:
                result = [(e.status, e.name, e.message)]
            except Exception as e:  # noqa: BLE001 - the other replicas wait for a status
                result = [(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG", f"{type(e).__name__}: {e}")]
        dist.broadcast_object_list(result, src=writers[0], group=gloo)
    finally:
        dist.destroy_process_group(sub)
    status, name, message = result[0]
    if status:
        raise Error(status, name, message)


def _save(peft_model: Any, path: PathLike, items: list[Item], kind: str, why: str,
          adapter: str, base: torch.nn.Module, gloo: Optional[Any],
          cfg: _capi.WriterConfig, files: list[tuple[str, bytes]]) -> None:
    lb = lib()
    comm = None
    if kind == "callbacks":
        from ._comm import TorchComm
        comm = TorchComm(gloo)
    w = c.c_void_p()
    p = os.fsencode(os.fspath(path))
    try:
        handle = comm.handle if comm is not None else world()
        check(lb.lsl_writer_create_all(handle, p, c.byref(cfg), c.byref(w)), comm)
        rank, size = lb.lsl_comm_rank(handle), lb.lsl_comm_size(handle)
        if comm is not None:
            comm.close()  # the writer made its own communicator from the handle
        if rank == 0 and not cfg.quiet:
            hdf5 = cfg.format == _capi.OUTPUT_HDF5 or (
                cfg.format == _capi.OUTPUT_AUTO and
                os.fspath(path).lower().endswith((".h5", ".hdf5")))
            how = ("MPI (collective MPI-IO)" if comm is None and hdf5 else
                   "MPI, positional writes" if comm is None else
                   "torch.distributed callbacks (gloo), positional writes")
            print(f"loraslab: save_merged over {how}: {why}; adapter {adapter!r}, "
                  f"{len(items)} tensors, {size} rank{'s' if size > 1 else ''}", file=sys.stderr)
        _write(lb, w, items, peft_model, adapter, base, rank, size, comm, files)
        check(lb.lsl_writer_close_all(c.byref(w)), comm)
    except BaseException:
        if w.value:
            lb.lsl_writer_abort_all(c.byref(w))
        raise


def _config_text(base: torch.nn.Module) -> str:
    """config.json as save_pretrained writes it: with "architectures" naming the model's class
    (vLLM picks the model class by it), which a model built with from_config lacks."""
    d = json.loads(base.config.to_json_string())
    if not d.get("architectures"):
        d["architectures"] = [type(base).__name__]
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def _jsonable(o: Any) -> Any:
    """A set as a sorted list (as PEFT's save_pretrained writes target_modules; a set's order
    varies between processes), anything else as its text."""
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    return str(o)


def _add_files(lb: Any, w: c.c_void_p, files: list[tuple[str, bytes]], comm: Any) -> None:
    """The serving files, rank 0's (the others pass the same, unread)."""
    n = len(files)
    names = (c.c_char_p * max(1, n))(*[name.encode() for name, _ in files])
    bufs = [c.create_string_buffer(data, len(data)) for _, data in files]
    datas = (c.c_void_p * max(1, n))(*[c.addressof(b) for b in bufs])
    lens = (c.c_uint64 * max(1, n))(*[len(data) for _, data in files])
    check(lb.lsl_writer_add_files_all(w, n, names, datas, lens), comm)


def _write(lb: Any, w: c.c_void_p, items: list[Item], peft_model: Any, adapter: str,
           base: torch.nn.Module, rank: int, size: int, comm: Any,
           files: list[tuple[str, bytes]]) -> None:
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        check(lb.lsl_writer_set_attr_all(w, b"base_config_json", _config_text(base).encode()),
              comm)
    acfg = peft_model.peft_config[adapter].to_dict()
    text = json.dumps(acfg, default=_jsonable, sort_keys=True)  # the same bytes on every rank
    check(lb.lsl_writer_set_attr_all(w, b"adapter_config_json", text.encode()), comm)
    _add_files(lb, w, files, comm)
    infos = (_capi.TensorInfo * max(1, len(items)))()
    names = []
    for i, it in enumerate(items):
        shape = tuple(it.tensor.shape)
        names.append(it.name.encode())
        infos[i].name, infos[i].dtype, infos[i].ndim = names[-1], dtype_code(it.tensor, it.name), \
            len(shape)
        for d, s in enumerate(shape):
            infos[i].shape[d] = s
    check(lb.lsl_writer_define_all(w, len(items), infos), comm)
    # a directory's shards in turn, so its writes go to several files at once
    order = (c.c_uint64 * max(1, len(items)))()
    check(lb.lsl_writer_put_order(w, order), comm)
    order_list = list(order)[:len(items)]
    cap = BATCH_A_BYTES_DIR if order_list != sorted(order_list) else BATCH_A_BYTES
    for idx in batches(items, order_list, cap):
        if isinstance(items[idx[0]].tensor, _fsdp1.Piece):
            check(put_piece(lb, w, idx[0], items[idx[0]], rank, size, Keep()), comm)
        else:
            put_batch(lb, w, items, idx, rank, size, comm)


def _collective(tool: Any, process_group: Optional[Any], *args: Any, **kw: Any) -> Any:
    """A loraslab tool collective over the torch job, on the transport save_merged would use."""
    kind, _ = _launch.choose(process_group)
    if kind == "mpi":
        return tool(*args, **kw)
    from ._comm import TorchComm
    gloo = _gloo(process_group)
    comm = None
    try:
        comm = TorchComm(gloo)
        return tool(*args, _comm=comm, **kw)
    finally:
        if comm is not None:
            comm.close()
        dist.destroy_process_group(gloo)


def convert(input: PathLike, outdir: PathLike, *, process_group: Optional[Any] = None,
            **kw: Any) -> dict:
    """loraslab.convert collective over the torch job (every rank calls it): under torchrun over
    torch.distributed callbacks, under mpiexec/srun over MPI.  Keywords as loraslab.convert."""
    from .._tools import convert as tool
    return _collective(tool, process_group, input, outdir, **kw)


def verify(path: PathLike, *, process_group: Optional[Any] = None, **kw: Any) -> dict:
    """loraslab.verify collective over the torch job (see convert)."""
    from .._tools import verify as tool
    return _collective(tool, process_group, path, **kw)
