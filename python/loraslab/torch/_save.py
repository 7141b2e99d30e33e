"""save_merged: the walk, the layout and the writer put together."""
from __future__ import annotations

import contextlib
import ctypes as c
import json
import os
import sys
from typing import Any, Optional, Union

import torch
import torch.distributed as dist

from .. import _capi
from .._errors import Error
from .._lib import lib
from . import _launch
from ._layout import DTYPES, Rows, Unsupported, chunk_rows, full, local_rows
from . import _fsdp1, _layout
from ._walk import FlatParams, Item, Lora, walk

PathLike = Union[str, "os.PathLike[str]"]
_FACTOR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _dtype(t: torch.Tensor, name: str) -> int:
    if t.dtype not in DTYPES:
        raise Unsupported(f"tensor `{name}`: dtype {t.dtype} has no safetensors equivalent here")
    return _capi.DTYPES[DTYPES[t.dtype]]


def _unwrap(model: torch.nn.Module, adapter_name: Optional[str]) -> tuple:
    """(the PEFT model, its base model, the adapter to merge)."""
    inner = getattr(model, "module", model)  # DDP, and an FSDP1 root (its wrapped module)
    inner = getattr(inner, "_fsdp_wrapped_module", inner)
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not hasattr(inner, "peft_config") or not hasattr(inner, "base_model"):
        raise Unsupported(f"{type(inner).__name__} is not a PEFT model (peft.PeftModel)")
    adapter = adapter_name or inner.active_adapter
    if isinstance(adapter, (list, tuple)):
        if len(adapter) != 1:
            raise Unsupported(f"several active adapters {list(adapter)}: name one")
        adapter = adapter[0]
    if adapter not in inner.peft_config:
        raise Unsupported(f"adapter {adapter!r} not in the model ({sorted(inner.peft_config)})")
    cfg = inner.peft_config[adapter]
    if getattr(cfg, "peft_type", None) is not None and str(cfg.peft_type).split(".")[-1] != "LORA":
        raise Unsupported(f"adapter {adapter!r} is {cfg.peft_type}, not LoRA")
    return inner, inner.base_model.model, adapter


def _check_items(items: list[Item]) -> None:
    """What the writer would refuse, refused here by name, before any output exists."""
    for it in items:
        _dtype(it.tensor, it.name)
        lo = it.lora
        if lo is None:
            continue
        for f in (lo.a, lo.b):
            if f.dtype not in _FACTOR_DTYPES:
                raise Unsupported(f"tensor `{it.name}`: LoRA factor dtype {f.dtype}")
        if it.tensor.dtype not in _FACTOR_DTYPES:
            raise Unsupported(f"tensor `{it.name}`: a LoRA target of dtype {it.tensor.dtype}")
        if isinstance(it.tensor, _fsdp1.Piece) and lo.magnitude is not None:
            cols = it.tensor.numel() // max(1, it.tensor.shape[0]) if it.tensor.shape else 1
            if cols and (it.tensor.e0 % cols or it.tensor.ne % cols):
                raise Unsupported(f"tensor `{it.name}`: DoRA on an FSDP1 piece that starts or "
                                  "ends mid-row (its row norms span ranks) is not supported in "
                                  "this version; use FSDP2 (fully_shard)")
        if lo.kind == "embedding" and lo.magnitude is not None:
            raise Unsupported(f"tensor `{it.name}`: DoRA on an embedding (as `loraslab merge`, "
                              "this version refuses it)")
        if it.tensor.is_cuda and (lo.magnitude is not None or lo.kind == "embedding"):
            raise Unsupported(f"tensor `{it.name}`: DoRA and LoRA on embeddings merge on the CPU "
                              "only in this version; the tensor is on the GPU")


class _Keep(list):
    """Tensors that must stay alive until the put returns."""

    def ptr(self, t: Optional[torch.Tensor]) -> Optional[int]:
        if t is None:
            return None
        self.append(t)
        return t.data_ptr() if t.numel() else None


def _lora_part(it: Item, rows: Rows, rank: int, size: int, keep: _Keep) -> _capi.LoraPart:
    lo: Lora = it.lora  # type: ignore[assignment]
    r0, n = rows.row0, rows.nrows
    lp = _capi.LoraPart()
    lp.rank, lp.alpha, lp.scaling = lo.r, lo.alpha, lo.scaling
    lp.flags = _capi.LORA_RSLORA if lo.rslora else 0
    if lo.kind == "linear":
        a = local_rows(lo.a, it.name + " lora_A", rank, size)
        b = local_rows(lo.b, it.name + " lora_B", rank, size)
        if b.row0 != r0 or b.nrows != n:  # B not chunked like W: take W's rows of it
            b_rows = full(lo.b)[r0:r0 + n]
        else:
            b_rows = b.local
        lp.a_shard, lp.a_off, lp.a_count, a_t = _capi.SHARD_ROWS, a.row0, a.nrows, a.local
    elif lo.kind == "bias":
        a0, an = chunk_rows(1, size, rank)
        a_t = lo.a[a0:a0 + an].contiguous()
        b_rows = full(lo.b)[r0:r0 + n].reshape(n, 1)
        lp.a_shard, lp.a_off, lp.a_count = _capi.SHARD_ROWS, a0, an
    else:  # W += s * (B @ A)^T: b = (W's rows as columns of A)^T, a = B^T by columns
        a_full = full(lo.a)
        b_rows = a_full[:, r0:r0 + n].t().contiguous()
        bl = local_rows(lo.b, it.name + " lora_B", rank, size)
        a_t = bl.local.t().contiguous()
        lp.a_shard, lp.a_off, lp.a_count = _capi.SHARD_COLS, bl.row0, bl.nrows
        if lo.kind == "embedding":  # PEFT rounds an Embedding's delta to W's dtype, then adds
            lp.flags |= _capi.LORA_DELTA_IN_WEIGHT_DTYPE
    lp.a_dtype, lp.b_dtype = _dtype(a_t, it.name), _dtype(b_rows, it.name)
    lp.a, lp.b = keep.ptr(a_t.contiguous()), keep.ptr(b_rows.contiguous())
    if lo.magnitude is not None:
        m = full(lo.magnitude).float().cpu()
        if lo.kind == "transposed":  # the norm runs down the columns: every column's m
            lp.flags |= _capi.LORA_DORA_COLUMNS
        else:
            m = m[r0:r0 + n].contiguous()
        lp.magnitude, lp.magnitude_dtype = keep.ptr(m), _capi.DTYPES["F32"]
    return lp


def _check(status: int, comm: Any = None) -> None:
    if status != 0:
        lb = lib()
        err = Error(status, lb.lsl_status_name(status).decode(),
                    lb.lsl_last_error().decode("utf-8", "replace"))
        cause = getattr(comm, "error", None)
        raise err from cause


def _gloo(group: Optional[Any]) -> Optional[Any]:
    """A gloo group over the writing ranks (None without torch.distributed): the host-side
    collectives run there whatever backend the training uses.  Every rank of the world must
    enter (torch's rule for new_group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.new_group(backend="gloo", ranks=None if group is None else
                          dist.get_process_group_ranks(group))


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
                process_group: Optional[Any] = None) -> None:
    """Write the merged checkpoint of a PEFT LoRA model to `path` (a loraslab HDF5 file that
    `loraslab convert` turns into a directory `transformers` loads).

    Collective over the job (or `process_group`): every rank calls it.  `model` is a PEFT model
    wrapped by FSDP2 (`fully_shard`), FSDP1 (`FullyShardedDataParallel`), DDP, or nothing.  Each
    rank writes what it holds: its FSDP2 rows, its FSDP1 element ranges, or its slice of a
    replicated tensor; only LoRA factors are gathered; GPU tensors go in as device pointers, the
    work ordered after torch's current stream (FSDP1 pieces on the GPU are copied to the host
    first: one parameter's piece at a time); the model is not changed.  Host memory: the staging
    budget (`staging_mib`) plus small buffers (plus, under FSDP1 on GPUs, the largest piece).

    Raises loraslab.Error on every rank alike, with nothing left at `path`."""
    peft_model = None
    try:
        peft_model, base, adapter = _unwrap(model, adapter_name)
        params = None
        if _fsdp1.is_fsdp1(model):
            size = dist.get_world_size(process_group) if dist.is_initialized() else 1
            params = FlatParams(_fsdp1.index(model, size))
        items = list(walk(base, adapter, params))
        _check_items(items)
        kind, why = _launch.choose(process_group)
        failed = ""
    except Exception as e:  # noqa: BLE001 - any local failure must reach the agreement below
        failed = str(e) if isinstance(e, (Unsupported, ValueError)) else f"{type(e).__name__}: {e}"
        items, kind, why, base, adapter = [], "", "", None, None
    gloo = _gloo(process_group)
    writers = _hsdp_writers(items)
    try:
        _agree(not failed, failed, gloo)
        if writers is None:
            _save(peft_model, path, items, kind, why, adapter, base, gloo, overwrite,
                  staging_mib, quiet)
        else:
            _save_hsdp(writers, peft_model, path, items, adapter, base, gloo, overwrite,
                       staging_mib, quiet)
    finally:
        if gloo is not None:
            dist.destroy_process_group(gloo)


def _hsdp_writers(items: list[Item]) -> Optional[list[int]]:
    """Under HSDP, the global ranks of replica 0's shard group (they write; the replicas hold
    the same shards); else None."""
    for it in items:
        if _layout.hsdp(it.tensor):
            return [int(r) for r in it.tensor.device_mesh.mesh[0].flatten().tolist()]
    return None


def _save_hsdp(writers: list[int], peft_model: Any, path: PathLike, items: list[Item],
               adapter: str, base: torch.nn.Module, gloo: Any, overwrite: bool,
               staging_mib: int, quiet: bool) -> None:
    """Replica 0's shard group writes over callbacks on a gloo group of its own; every rank then
    learns its status (the other replicas raise the same loraslab.Error)."""
    sub = dist.new_group(ranks=writers, backend="gloo")  # every rank enters, torch's rule
    result: list[Any] = [None]
    try:
        if dist.get_rank() in writers:
            try:
                _save(peft_model, path, items, "callbacks", "HSDP: replica 0 writes", adapter,
                      base, sub, overwrite, staging_mib, quiet)
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
          adapter: str, base: torch.nn.Module, gloo: Optional[Any], overwrite: bool,
          staging_mib: int, quiet: bool) -> None:
    lb = lib()
    comm = None
    if kind == "callbacks":
        from ._comm import TorchComm
        comm = TorchComm(gloo)
    cfg = _capi.WriterConfig(staging_mib << 20, 0, int(overwrite), 1 if quiet else 0,
                             b"save_merged")
    w = c.c_void_p()
    p = os.fsencode(os.fspath(path))
    try:
        if comm is not None:
            _check(lb.lsl_writer_create_cb_all(c.byref(comm.cb), p, c.byref(cfg), c.byref(w)),
                   comm)
            rank, size = comm.rank, comm.size
        else:
            _check(lb.lsl_writer_create_world(p, c.byref(cfg), c.byref(w)))
            rank, size = lb.lsl_world_rank(), lb.lsl_world_size()
        if rank == 0 and not quiet:
            how = ("MPI (collective MPI-IO)" if comm is None else
                   "torch.distributed callbacks (gloo), positional writes")
            print(f"loraslab: save_merged over {how}: {why}; adapter {adapter!r}, "
                  f"{len(items)} tensors, {size} rank{'s' if size > 1 else ''}", file=sys.stderr)
        _write(lb, w, items, peft_model, adapter, base, rank, size, comm)
        _check(lb.lsl_writer_close_all(c.byref(w)), comm)
    except BaseException:
        if w.value:
            lb.lsl_writer_abort_all(c.byref(w))
        raise


def _jsonable(o: Any) -> Any:
    """A set as a sorted list (as PEFT's save_pretrained writes target_modules; a set's order
    varies between processes), anything else as its text."""
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    return str(o)


def _write(lb: Any, w: c.c_void_p, items: list[Item], peft_model: Any, adapter: str,
           base: torch.nn.Module, rank: int, size: int, comm: Any) -> None:
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        _check(lb.lsl_writer_set_attr_all(w, b"base_config_json",
                                          config.to_json_string().encode()), comm)
    acfg = peft_model.peft_config[adapter].to_dict()
    text = json.dumps(acfg, default=_jsonable, sort_keys=True)  # the same bytes on every rank
    _check(lb.lsl_writer_set_attr_all(w, b"adapter_config_json", text.encode()), comm)
    infos = (_capi.TensorInfo * max(1, len(items)))()
    names = []
    for i, it in enumerate(items):
        shape = tuple(it.tensor.shape)
        names.append(it.name.encode())
        infos[i].name, infos[i].dtype, infos[i].ndim = names[-1], _dtype(it.tensor, it.name), \
            len(shape)
        for d, s in enumerate(shape):
            infos[i].shape[d] = s
    _check(lb.lsl_writer_define_all(w, len(items), infos), comm)
    i = 0
    while i < len(items):
        if isinstance(items[i].tensor, _fsdp1.Piece):
            _check(_put_piece(lb, w, i, items[i], rank, size, _Keep()), comm)
            i += 1
            continue
        j = i
        while j < len(items) and j - i < _BATCH and not isinstance(items[j].tensor, _fsdp1.Piece):
            j += 1
        _put_batch(lb, w, items, range(i, j), rank, size, comm)
        i = j


# Tensors per batched put: their LoRA A's are gathered in one collective step (a few collective
# latencies each would add up over a model's hundreds of tensors at a thousand ranks); every
# rank holds the batch's whole A's (r x in each) until the call returns.
_BATCH = 16


def _put_batch(lb: Any, w: c.c_void_p, items: list[Item], idx: range, rank: int, size: int,
               comm: Any) -> None:
    keep = _Keep()
    parts = (_capi.Part * len(idx))()
    local_error: Optional[BaseException] = None
    device: Optional[torch.device] = None
    name = ""
    try:
        for k, i in enumerate(idx):
            it = items[i]
            name = it.name
            rows = local_rows(it.tensor, it.name, rank, size)
            part = parts[k]
            part.row0, part.nrows, part.data = rows.row0, rows.nrows, keep.ptr(rows.local)
            part.mem = _capi.MEM_DEVICE if rows.local.is_cuda else _capi.MEM_HOST
            if rows.local.is_cuda:
                device = rows.local.device
                part.stream = torch.cuda.current_stream(device).cuda_stream
            if it.lora is not None:
                lp = _lora_part(it, rows, rank, size, keep)
                keep.append(lp)
                part.lora = c.pointer(lp)
    except (Unsupported, ValueError, RuntimeError) as e:
        local_error = e  # join with an empty batch: the lengths differ, every rank fails
    indices = (c.c_uint64 * len(idx))(*idx)
    ctx: Any = torch.cuda.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        st = lb.lsl_writer_put_batch_all(w, 0 if local_error else len(idx), indices, parts)
    if local_error is not None:
        raise Error(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG",
                    f"tensor `{name}`: {local_error}") from local_error
    _check(st, comm)
    del keep


def _collective(tool: Any, process_group: Optional[Any], *args: Any, **kw: Any) -> Any:
    """A loraslab tool collective over the torch job, on the transport save_merged would use."""
    kind, _ = _launch.choose(process_group)
    if kind == "mpi":
        return tool(*args, **kw)
    from ._comm import TorchComm
    gloo = _gloo(process_group)
    try:
        return tool(*args, _comm=TorchComm(gloo), **kw)
    finally:
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


def _rows_touched(p: "_fsdp1.Piece") -> tuple[int, int]:
    cols = 1
    for d in p.shape[1:]:
        cols *= d
    if not p.ne or not cols:
        return 0, 0
    r0 = p.e0 // cols
    return r0, -(-(p.e0 + p.ne) // cols) - r0


def _put_piece(lb: Any, w: c.c_void_p, i: int, it: Item, rank: int, size: int,
               keep: _Keep) -> int:
    """An FSDP1 piece: an element-range put from host memory (a piece on the GPU is copied to
    the host first: the element path has no device kernel yet).  Its LoRA factors are gathered
    whole (they are small); B's rows are those the range touches."""
    p: _fsdp1.Piece = it.tensor
    lp = None
    try:
        data = p.local.detach().cpu().contiguous()
        part = _capi.ElemPart(p.e0 if p.ne else 0, p.ne, keep.ptr(data), _capi.MEM_HOST, None)
        lo = it.lora
        if lo is not None:
            r0, n = _rows_touched(p)
            gat = lambda t: (_fsdp1.gather(t, None) if isinstance(t, _fsdp1.Piece)  # noqa: E731
                             else full(t)).detach().cpu().contiguous()
            a_full, b_full = gat(lo.a), gat(lo.b)
            lp = _capi.LoraPart()
            lp.rank, lp.alpha, lp.scaling = lo.r, lo.alpha, lo.scaling
            lp.flags = _capi.LORA_RSLORA if lo.rslora else 0
            if lo.kind in ("linear", "bias"):
                a0, an = chunk_rows(a_full.shape[0], size, rank)
                a_t = a_full[a0:a0 + an]
                b_rows = b_full.reshape(b_full.shape[0], -1)[r0:r0 + n]
                lp.a_shard, lp.a_off, lp.a_count = _capi.SHARD_ROWS, a0, an
            else:
                b_rows = a_full[:, r0:r0 + n].t()
                c0, cn = chunk_rows(b_full.shape[0], size, rank)
                a_t = b_full[c0:c0 + cn].t()
                lp.a_shard, lp.a_off, lp.a_count = _capi.SHARD_COLS, c0, cn
                if lo.kind == "embedding":
                    lp.flags |= _capi.LORA_DELTA_IN_WEIGHT_DTYPE
            a_t, b_rows = a_t.contiguous(), b_rows.contiguous()
            lp.a_dtype, lp.b_dtype = _dtype(a_t, it.name), _dtype(b_rows, it.name)
            lp.a, lp.b = keep.ptr(a_t), keep.ptr(b_rows)
            if lo.magnitude is not None:
                m = gat(lo.magnitude).float()
                if lo.kind == "transposed":
                    lp.flags |= _capi.LORA_DORA_COLUMNS
                else:
                    m = m[r0:r0 + n].contiguous()
                lp.magnitude, lp.magnitude_dtype = keep.ptr(m), _capi.DTYPES["F32"]
            keep.append(lp)
            part.lora = c.pointer(lp)
        return lb.lsl_writer_put_elems_all(w, i, c.byref(part))
    except (ValueError, RuntimeError) as e:
        lb.lsl_writer_put_elems_all(w, i, None)  # join the collective with nothing
        raise Error(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG",
                    f"tensor `{it.name}`: {e}") from e
