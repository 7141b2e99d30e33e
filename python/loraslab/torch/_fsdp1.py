"""FSDP1 (FullyShardedDataParallel): where each original parameter's local piece is.

Each wrapped unit flattens its parameters into one FlatParameter and gives every rank one
contiguous element range of it; `_shard_param_infos` says, per original parameter, which
elements of it this rank holds and where they sit in the local shard (torch's
`_flat_param.py`; reference/torch-shards.md section 1).  The pieces are element ranges of the
parameter, usually starting and ending mid-row: loraslab writes them with element-range puts.
Reads private FSDP1 attributes (`_handle`, `_fqns`, `_shapes`, `_shard_param_infos`), which
have been stable since torch 2.1; a torch without them is refused by name."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean(name: str) -> str:
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name.rstrip(".").replace("_fsdp_wrapped_module", "").strip(".")


@dataclasses.dataclass
class Piece:
    """Elements [e0, e0 + ne) of a parameter of `shape`, held here as `local` (1-D)."""
    name: str
    shape: tuple
    dtype: torch.dtype
    e0: int
    ne: int
    local: torch.Tensor
    group: Optional[Any] = None  # the unit's shard group: the ranks whose pieces tile it

    @property
    def is_cuda(self) -> bool:
        return self.local.is_cuda

    @property
    def cols(self) -> int:
        """Elements per row (the product of the dimensions after the first)."""
        n = 1
        for s in self.shape[1:]:
            n *= s
        return n

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def is_fsdp1(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:
        return False
    return isinstance(model, FSDP) or any(isinstance(m, FSDP) for m in model.modules())


def hybrid_writers(root: torch.nn.Module) -> Optional[list[int]]:
    """Under HYBRID_SHARD (or _HYBRID_SHARD_ZERO2), the global ranks of the shard group that
    holds inter-node rank 0 (replica 0: it writes, the replicas hold the same pieces), in shard
    group order; None otherwise.  Collective over the default group (an all-gather of each
    rank's place) when hybrid: every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy as S
    hybrid = (S.HYBRID_SHARD, S._HYBRID_SHARD_ZERO2)
    unit = next((m for m in root.modules() if isinstance(m, FSDP)
                 and getattr(m, "sharding_strategy", None) in hybrid), None)
    if unit is None or not dist.is_initialized():
        return None
    inter = dist.get_rank(unit._inter_node_pg)
    shard = dist.get_process_group_ranks(unit.process_group)
    places: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(places, (inter, shard))
    writers = next(sh for r, sh in places if r == 0)
    if writers != sorted(writers):
        raise ValueError(f"HYBRID_SHARD: replica 0's shard group {writers} is not in rank order; "
                         "its pieces could not be written in order")
    return writers


def index(root: torch.nn.Module, size: int) -> dict[str, Piece]:
    """Every original parameter's piece, by its name relative to the wrapped model (wrapper names
    removed), in flat-parameter order.  size: the writer's rank count (under HYBRID_SHARD, one
    shard group's)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    out: dict[str, Piece] = {}
    for uname, unit in root.named_modules():
        if not isinstance(unit, FSDP):
            continue
        handle = getattr(unit, "_handle", None)
        if handle is None:
            continue
        fp = handle.flat_param
        for attr in ("_fqns", "_shapes", "_shard_param_infos"):
            if not hasattr(fp, attr):
                raise ValueError(f"FSDP1 unit {uname!r}: this torch's FlatParameter has no {attr}")
        if handle.world_size != size:
            raise ValueError(f"FSDP1 unit {uname!r} is sharded over {handle.world_size} ranks, "
                             f"the writer has {size}: pass the FSDP group as process_group")
        data = fp.data  # when idle: this rank's full-precision shard (host with CPU offload)
        prefix = clean(uname)
        for fqn, shape, info in zip(fp._fqns, fp._shapes, fp._shard_param_infos):
            name = ".".join(p for p in (prefix, clean(fqn)) if p)
            shape = tuple(shape)
            if info.in_shard:
                e0, ne = int(info.intra_param_start_idx), int(info.numel_in_shard)
                off = int(info.offset_in_shard)
                local = data[off:off + ne]
            else:
                e0, ne, local = 0, 0, data[:0]
            out[name] = Piece(name, shape, data.dtype, e0, ne, local, unit.process_group)
    return out
