"""The writer's parts from what a rank holds: rows (FSDP2, DDP, none) in batches, element ranges
(FSDP1 pieces), and the LoRA factors each needs, as the C structs of _capi."""
from __future__ import annotations

import contextlib
import ctypes as c
import math
from typing import Any, Optional

import torch

from .. import _capi
from .._errors import Error, raise_status
from .._lib import lib
from . import _fsdp1
from ._layout import DTYPES, Unsupported, hsdp, is_dtensor, local_rows
from ._walk import Item, Lora

FACTOR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def dtype_code(t: torch.Tensor, name: str) -> int:
    if t.dtype not in DTYPES:
        raise Unsupported(f"tensor `{name}`: dtype {t.dtype} has no safetensors equivalent here")
    return _capi.DTYPES[DTYPES[t.dtype]]


class Keep(list):
    """Tensors that must stay alive until the put returns."""

    def ptr(self, t: Optional[torch.Tensor]) -> Optional[int]:
        if t is None:
            return None
        self.append(t)
        return t.data_ptr() if t.numel() else None


def replicated(t: torch.Tensor) -> bool:
    """Whether every rank of a DTensor's mesh holds all of it."""
    from torch.distributed.tensor import Replicate
    return all(isinstance(p, Replicate) for p in t.placements)


def factor(t: Any, name: str, rank: int, size: int, device: torch.device,
           keep: Keep) -> _capi.Factor:
    """A LoRA factor as this rank holds it, for the library to gather what the merge needs: an
    FSDP1 piece as its element range, an FSDP2 (or HSDP) Shard(0) shard as its rows' elements, a
    Shard(1) shard as its columns (the local block transposed: a range of the factor's
    transpose), a factor every rank holds whole (DDP, no wrapper, a replicated DTensor) whole.
    On the part's device."""
    transposed = 0
    if isinstance(t, _fsdp1.Piece):
        local, e0, n = t.local.detach(), (t.e0 if t.ne else 0), t.ne
    else:
        t = t.detach()
        if is_dtensor(t) and (hsdp(t) or not replicated(t)):
            rows = local_rows(t, name, rank, size)
            cols = math.prod(rows.shape[1:])
            if rows.ncols:  # columns [col0, col0 + ncols) of a 2-D factor
                local, transposed = rows.local.t(), 1
                e0, n = rows.col0 * rows.shape[0], rows.ncols * rows.shape[0]
            else:
                local, e0, n = rows.local, rows.row0 * cols, rows.nrows * cols
        else:
            local = t.to_local() if is_dtensor(t) else t
            e0, n = 0, local.numel()
    local = local.to(device).contiguous()
    return _capi.Factor(keep.ptr(local), dtype_code(local, name), e0, n, transposed)


def lora_part(it: Item, device: torch.device, rank: int, size: int,
              keep: Keep) -> _capi.LoraPart:
    """Item's LoRA as the model holds it: the library gathers what each rank's rows need."""
    lo: Lora = it.lora  # type: ignore[assignment]
    lp = _capi.LoraPart()
    lp.rank, lp.alpha, lp.scaling = lo.r, lo.alpha, lo.scaling
    lp.flags = _capi.LORA_RSLORA if lo.rslora else 0
    if lo.kind in ("transposed", "embedding"):  # W += s * (B @ A)^T
        lp.flags |= _capi.LORA_TRANSPOSED
    if lo.kind == "embedding":  # PEFT rounds an Embedding's delta to W's dtype, then adds
        lp.flags |= _capi.LORA_DELTA_IN_WEIGHT_DTYPE
    lp.a = factor(lo.a, it.name + " lora_A", rank, size, device, keep)
    lp.b = factor(lo.b, it.name + (" lora_B.bias" if lo.kind == "bias" else " lora_B"), rank,
                  size, device, keep)
    if lo.magnitude is not None:
        m = lo.magnitude
        if not isinstance(m, _fsdp1.Piece) and m.dtype not in FACTOR_DTYPES:
            m = m.float()
        lp.magnitude = factor(m, it.name + " magnitude", rank, size, device, keep)
    return lp


def check(status: int, comm: Any = None) -> None:
    """Raise the library's last error as loraslab.Error (chained to a callback's exception; a
    KeyboardInterrupt in a callback is re-raised as itself)."""
    if status != 0:
        raise_status(lib(), status, getattr(comm, "error", None))


# Tensors per batched put: their LoRA A's are gathered in one collective step (a few collective
# latencies each would add up over a model's hundreds of tensors at a thousand ranks); every
# rank holds the batch's whole A's (r x in each) in host memory until the call returns, up to
# four copies of them inside the gather (the shards copied down, the send and receive buffers,
# the whole A's).  So a batch also stops at BATCH_A_BYTES of whole A's: 16 tensors of a 32B
# model's were 17 MB, and four copies of them were most of FSDP2's host memory above the
# staging budget (docs/history.md, issue 16).
BATCH = 16
BATCH_A_BYTES = 4 << 20
# A directory's batch merges its tensors' chunks in turn, so several shards are written at
# once (lsl_put_interleave.c): room for the whole A's of a big tensor from each of a few shards
# (a 32B model's down_proj A is 3.5 MB).
BATCH_A_BYTES_DIR = 16 << 20


def a_bytes(it: Item) -> int:
    """Bytes of the whole A a batched put gathers for this item (the same on every rank), from
    the global shape: of a DTensor, a plain tensor or an FSDP1 piece."""
    lo = it.lora
    if lo is None:
        return 0
    fs = [lo.a] if lo.kind in ("linear", "bias") else [lo.a, lo.b]  # transposed: both whole
    return sum(math.prod(f.shape) * torch.empty((), dtype=f.dtype).element_size() for f in fs)


def batches(items: list[Item], order: Optional[list[int]] = None,
            cap: int = BATCH_A_BYTES) -> list[list[int]]:
    """The puts, in `order` (lsl_writer_put_order's, which takes a directory's shards in turn;
    default: as listed): an FSDP1 piece alone, the other items in batches of at most BATCH
    tensors and `cap` bytes of whole A's (a larger A alone).  The same on every rank."""
    order = list(range(len(items))) if order is None else order
    out, i = [], 0
    while i < len(order):
        j = i + 1
        if not isinstance(items[order[i]].tensor, _fsdp1.Piece):
            held = a_bytes(items[order[i]])
            while j < len(order) and j - i < BATCH \
                    and not isinstance(items[order[j]].tensor, _fsdp1.Piece) \
                    and held + a_bytes(items[order[j]]) <= cap:
                held += a_bytes(items[order[j]])
                j += 1
        out.append(order[i:j])
        i = j
    return out


def put_batch(lb: Any, w: c.c_void_p, items: list[Item], idx: list[int], rank: int, size: int,
              comm: Any) -> None:
    """Collective: items[idx] (rows, not FSDP1 pieces) in one batched put."""
    keep = Keep()
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
            part.col0, part.ncols = rows.col0, rows.ncols
            part.mem = _capi.MEM_DEVICE if rows.local.is_cuda else _capi.MEM_HOST
            if rows.local.is_cuda:
                device = rows.local.device
                part.stream = torch.cuda.current_stream(device).cuda_stream
            if it.lora is not None:
                lp = lora_part(it, rows.local.device, rank, size, keep)
                keep.append(lp)
                part.lora = c.pointer(lp)
    except (Unsupported, ValueError, RuntimeError) as e:
        local_error = e  # join with an empty batch: the lengths differ, every rank fails
    indices = (c.c_uint64 * len(idx))(*idx)
    ctx: Any = torch.cuda.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        st = lb.lsl_writer_put_batch_all(w, 0 if local_error else len(idx), indices, parts)
    if local_error is not None:
        said = str(local_error)
        raise Error(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG",
                    said if said.startswith("tensor `") else f"tensor `{name}`: {said}") \
            from local_error
    check(st, comm)
    del keep


def put_piece(lb: Any, w: c.c_void_p, i: int, it: Item, rank: int, size: int,
              keep: Keep) -> int:
    """An FSDP1 piece: an element-range put, of device pointers on torch's current stream for a
    GPU piece, else from host memory, with its LoRA factors' own pieces."""
    p: _fsdp1.Piece = it.tensor
    try:
        dev = p.is_cuda
        data = p.local.detach().contiguous() if dev else p.local.detach().cpu().contiguous()
        part = _capi.ElemPart(p.e0 if p.ne else 0, p.ne, keep.ptr(data),
                              _capi.MEM_DEVICE if dev else _capi.MEM_HOST, None, None)
        if dev:
            part.stream = torch.cuda.current_stream(data.device).cuda_stream
        if it.lora is not None:  # the factors' own pieces: the library gathers them
            lp = lora_part(it, data.device, rank, size, keep)
            keep.append(lp)
            part.lora = c.pointer(lp)
        ctx: Any = torch.cuda.device(data.device) if dev else contextlib.nullcontext()
        with ctx:
            return lb.lsl_writer_put_elems_all(w, i, c.byref(part))
    except (ValueError, RuntimeError) as e:
        lb.lsl_writer_put_elems_all(w, i, None)  # join the collective with nothing
        raise Error(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG",
                    f"tensor `{it.name}`: {e}") from e
