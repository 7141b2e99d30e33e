"""The writer's parts from what a rank holds: rows (FSDP2, DDP, none) in batches, element ranges
(FSDP1 pieces), and the LoRA factors each needs, as the C structs of _capi."""
from __future__ import annotations

import contextlib
import ctypes as c
import dataclasses
import math
from typing import Any, Optional

import torch

from .. import _capi
from .._errors import Error, raise_status
from .._lib import lib
from . import _fsdp1
from ._layout import DTYPES, Rows, Unsupported, chunk_rows, full, local_rows
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


def rows_of(t: torch.Tensor, name: str, rows: Rows, rank: int, size: int) -> torch.Tensor:
    """W's rows [rows.row0, + rows.nrows) of a factor whose first dimension is W's (lora_B, its
    bias, a DoRA magnitude): the local shard itself where the factor is chunked as W is (FSDP2,
    DDP: no communication), else gathered whole and cut (FSDP1's pieces arrive gathered).  The
    choice rests on global shapes and placements, the same on every rank, so the gather inside
    full() is entered by all or none."""
    try:
        mine = local_rows(t, name, rank, size)
    except Unsupported:
        mine = None
    if mine is not None and mine.row0 == rows.row0 and mine.nrows == rows.nrows:
        return mine.local
    return full(t)[rows.row0:rows.row0 + rows.nrows]


def lora_part(it: Item, rows: Rows, rank: int, size: int, keep: Keep) -> _capi.LoraPart:
    lo: Lora = it.lora  # type: ignore[assignment]
    r0, n = rows.row0, rows.nrows
    lp = _capi.LoraPart()
    lp.rank, lp.alpha, lp.scaling = lo.r, lo.alpha, lo.scaling
    lp.flags = _capi.LORA_RSLORA if lo.rslora else 0
    if lo.kind == "linear":
        a = local_rows(lo.a, it.name + " lora_A", rank, size)
        b_rows = rows_of(lo.b, it.name + " lora_B", rows, rank, size)
        lp.a_shard, lp.a_off, lp.a_count, a_t = _capi.SHARD_ROWS, a.row0, a.nrows, a.local
    elif lo.kind == "bias":
        a0, an = chunk_rows(1, size, rank)
        a_t = lo.a[a0:a0 + an].contiguous()
        b_rows = rows_of(lo.b, it.name + " lora_B.bias", rows, rank, size).reshape(n, 1)
        lp.a_shard, lp.a_off, lp.a_count = _capi.SHARD_ROWS, a0, an
    else:  # W += s * (B @ A)^T: b = (W's rows as columns of A)^T, a = B^T by columns
        a_full = full(lo.a)
        b_rows = a_full[:, r0:r0 + n].t().contiguous()
        bl = local_rows(lo.b, it.name + " lora_B", rank, size)
        a_t = bl.local.t().contiguous()
        lp.a_shard, lp.a_off, lp.a_count = _capi.SHARD_COLS, bl.row0, bl.nrows
        if lo.kind == "embedding":  # PEFT rounds an Embedding's delta to W's dtype, then adds
            lp.flags |= _capi.LORA_DELTA_IN_WEIGHT_DTYPE
    lp.a_dtype, lp.b_dtype = dtype_code(a_t, it.name), dtype_code(b_rows, it.name)
    lp.a, lp.b = keep.ptr(a_t.contiguous()), keep.ptr(b_rows.contiguous())
    if lo.magnitude is not None:
        if lo.kind == "transposed":  # the norm runs down the columns: every column's m
            m = full(lo.magnitude)
            lp.flags |= _capi.LORA_DORA_COLUMNS
        else:
            m = rows_of(lo.magnitude, it.name + " magnitude", rows, rank, size)
        m = m.float().to(b_rows.device).contiguous()  # where the part's data lives
        lp.magnitude, lp.magnitude_dtype = keep.ptr(m), _capi.DTYPES["F32"]
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
    f = lo.a if lo.kind in ("linear", "bias") else lo.b  # transposed: B^T is gathered
    return math.prod(f.shape) * torch.empty((), dtype=f.dtype).element_size()


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
            part.mem = _capi.MEM_DEVICE if rows.local.is_cuda else _capi.MEM_HOST
            if rows.local.is_cuda:
                device = rows.local.device
                part.stream = torch.cuda.current_stream(device).cuda_stream
            if it.lora is not None:
                lp = lora_part(it, rows, rank, size, keep)
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
    check(st, comm)
    del keep


def rows_touched(p: "_fsdp1.Piece") -> tuple[int, int]:
    cols = p.cols
    if not p.ne or not cols:
        return 0, 0
    r0 = p.e0 // cols
    return r0, -(-(p.e0 + p.ne) // cols) - r0


def put_piece(lb: Any, w: c.c_void_p, i: int, it: Item, rank: int, size: int,
              keep: Keep) -> int:
    """An FSDP1 piece: an element-range put, of device pointers on torch's current stream for a
    GPU piece, else from host memory.
    Its LoRA factors are gathered whole (they are small) where the piece is; B's rows are those
    the range touches."""
    p: _fsdp1.Piece = it.tensor
    try:
        dev = p.is_cuda
        data = p.local.detach().contiguous() if dev else p.local.detach().cpu().contiguous()
        part = _capi.ElemPart(p.e0 if p.ne else 0, p.ne, keep.ptr(data),
                              _capi.MEM_DEVICE if dev else _capi.MEM_HOST, None, None)
        if dev:
            part.stream = torch.cuda.current_stream(data.device).cuda_stream
        if it.lora is not None:
            # the factors whole, so the row path's rules cut them as for a replicated tensor
            def gat(t: Any) -> Optional[torch.Tensor]:
                if t is None:
                    return None
                g = _fsdp1.gather(t) if isinstance(t, _fsdp1.Piece) else full(t)
                return g.to(data.device) if dev else g.cpu()
            lo = dataclasses.replace(it.lora, a=gat(it.lora.a), b=gat(it.lora.b),
                                     magnitude=gat(it.lora.magnitude))
            r0, n = rows_touched(p)
            lp = lora_part(dataclasses.replace(it, lora=lo), Rows(p.shape, r0, n, data), rank,
                           size, keep)
            keep.append(lp)
            part.lora = c.pointer(lp)
        ctx: Any = torch.cuda.device(data.device) if dev else contextlib.nullcontext()
        with ctx:
            return lb.lsl_writer_put_elems_all(w, i, c.byref(part))
    except (ValueError, RuntimeError) as e:
        lb.lsl_writer_put_elems_all(w, i, None)  # join the collective with nothing
        raise Error(_capi.ERR_INVALID_ARG, "LSL_ERR_INVALID_ARG",
                    f"tensor `{it.name}`: {e}") from e
