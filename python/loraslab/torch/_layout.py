"""Which part of a tensor this rank writes, and from where: the local shard of an FSDP2 DTensor
(Shard(0): torch.chunk's rows, trailing ranks short or empty; Shard(1): torch.chunk's columns of
every row, a block), or, for a tensor every rank holds whole (DDP, no wrapper, a replicated
DTensor), this rank's torch.chunk slice of its rows, so N ranks still write N slices in
parallel."""
from __future__ import annotations

import dataclasses
import math

import torch

DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
          torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
          torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


class Unsupported(ValueError):
    """A layout or wrapper loraslab refuses, by name, before anything is written."""


def chunk_rows(rows: int, size: int, rank: int) -> tuple[int, int]:
    """torch.chunk's rows of `rank`: ceil(rows / size) each, the tail short, trailing empty."""
    per = -(-rows // size) if size else 0
    r0 = min(rows, per * rank)
    return r0, min(rows, r0 + per) - r0


def is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without DTensor: nothing is one
        return False
    return isinstance(t, DTensor)


@dataclasses.dataclass
class Rows:
    """rows [row0, row0 + nrows) of the global tensor, as a contiguous tensor `local`; with ncols
    > 0 only the elements [col0, col0 + ncols) of each row (a Shard(1) block, the row being
    everything after dimension 0, flattened)."""
    shape: tuple
    row0: int
    nrows: int
    local: torch.Tensor
    col0: int = 0
    ncols: int = 0


def local_rows(t: torch.Tensor, name: str, rank: int, size: int) -> Rows:
    """The part of t this rank writes (rank/size: the writer's communicator)."""
    t = t.detach()
    if is_dtensor(t) and not hsdp(t) and (len(t.placements) > 1 or _root(t.device_mesh)
                                          is not t.device_mesh):
        return _mesh_block(t, name, size)
    if is_dtensor(t):
        from torch.distributed.tensor import Replicate, Shard
        pl = t.placements
        mesh_rank, mesh_size = None, None
        if hsdp(t):  # (Replicate(), Shard(d)): replica 0's shard group writes
            pl = pl[1:]
            mesh_rank, mesh_size = t.device_mesh.get_local_rank(1), t.device_mesh.size(1)
        if len(pl) != 1:
            raise Unsupported(f"tensor `{name}`: a {len(t.placements)}-D device mesh "
                              f"({t.placements}): only HSDP's (Replicate(), Shard(0 or 1)) is "
                              "supported, not tensor parallelism")
        p = pl[0]
        if isinstance(p, Replicate):
            return _slice(t.to_local(), rank, size)
        if type(p) is not Shard or p.dim not in (0, 1) or (p.dim == 1 and t.ndim < 2):
            raise Unsupported(f"tensor `{name}`: placement {p}: only Shard(0) (FSDP2's "
                              "default), Shard(1) and Replicate can be written")
        if mesh_size is None:
            mesh_rank, mesh_size = t.device_mesh.get_local_rank(), t.device_mesh.size()
        if mesh_size != size or mesh_rank != rank:
            raise Unsupported(f"tensor `{name}`: its mesh (rank {mesh_rank} of {mesh_size}) is "
                              f"not the writer's group (rank {rank} of {size}): pass the FSDP "
                              "group as process_group")
        local = t.to_local()
        shape = tuple(t.shape)
        if p.dim == 1:
            return _columns(local, shape, name, rank, size)
        r0, n = chunk_rows(shape[0] if shape else 1, size, rank)
        if tuple(local.shape[1:]) != shape[1:] or (shape and local.shape[0] != n):
            raise Unsupported(f"tensor `{name}`: local shard {tuple(local.shape)} is not "
                              f"torch.chunk's {n} rows of {shape}")
        return Rows(shape, r0, n, local.contiguous())
    return _slice(t, rank, size)


def _root(mesh):
    """The device mesh a submesh was cut from (itself for a mesh of its own)."""
    get = getattr(mesh, "_get_root_mesh", None)
    if get is None:
        from torch.distributed.device_mesh import _mesh_resources
        get = lambda: _mesh_resources.get_root_mesh(mesh)  # noqa: E731
    return get() or mesh


def _mesh_block(t: torch.Tensor, name: str, size: int) -> Rows:
    """A DTensor on a mesh of several dimensions, or on a submesh of one (FSDP2 x tensor
    parallelism: _StridedShard rows, Shard(1) columns, a factor sharded over the data-parallel
    submesh only): its local shard is one rectangle of rows x columns, which DTensor itself
    places (compute_local_shape_and_global_offset, as distributed checkpointing does).  Of the
    ranks holding the same shard (Replicate on a mesh dimension, or the other submeshes of the
    same root), the one at coordinate 0 of every Replicate dimension, in the submesh holding the
    root mesh's first rank, writes it; the others pass nothing.  The library checks that the
    writers' rectangles tile the tensor."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    try:
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:  # a torch without it: nothing is one
        _StridedShard = Shard
    mesh, pl, shape = t.device_mesh, t.placements, tuple(t.shape)
    root = _root(mesh)
    if root.size() != size:
        raise Unsupported(f"tensor `{name}`: its device mesh spans {root.size()} ranks, the "
                          f"writer's group {size}: pass the group of the whole mesh as "
                          "process_group")
    for p in pl:
        if not isinstance(p, (Shard, _StridedShard, Replicate)):
            raise Unsupported(f"tensor `{name}`: placement {p} ({pl}): only Shard and Replicate "
                              "placements hold the tensor's values")
    coord = mesh.get_coordinate() or []
    local = t.to_local()
    lead = int(root.mesh.flatten()[0])
    writes = lead in mesh.mesh.flatten().tolist() and all(
        c == 0 for c, p in zip(coord, pl) if isinstance(p, Replicate))
    if not writes:
        return Rows(shape, 0, 0, local.reshape(-1)[:0])
    ls, off = compute_local_shape_and_global_offset(shape, mesh, pl)
    ls, off = tuple(ls), tuple(off)
    if tuple(local.shape) != ls:
        raise Unsupported(f"tensor `{name}`: local shard {tuple(local.shape)} is not the "
                          f"{ls} its placements {pl} give")
    if not shape:
        return Rows(shape, 0, 1, local.reshape(1).contiguous())
    if ls[2:] != shape[2:]:
        raise Unsupported(f"tensor `{name}`: placements {pl} shard a dimension after the "
                          "second: not a block of rows and columns")
    if math.prod(ls) == 0:
        return Rows(shape, 0, 0, local.reshape(-1)[:0])
    if len(shape) == 1 or ls[1] == shape[1]:
        return Rows(shape, off[0], ls[0], local.contiguous())
    inner = math.prod(shape[2:])
    return Rows(shape, off[0], ls[0], local.contiguous(), off[1] * inner, ls[1] * inner)


def _columns(local: torch.Tensor, shape: tuple, name: str, rank: int, size: int) -> Rows:
    """A Shard(1) shard: torch.chunk's columns c0:c0+nc of every row, which in the row-major
    tensor are the elements [c0 * inner, (c0 + nc) * inner) of each row (inner: the elements
    of one column, the dimensions after 1)."""
    c0, nc = chunk_rows(shape[1], size, rank)
    want = (shape[0], nc) + shape[2:]
    if tuple(local.shape) != want:
        raise Unsupported(f"tensor `{name}`: local shard {tuple(local.shape)} is not "
                          f"torch.chunk's {nc} columns of {shape}")
    inner = math.prod(shape[2:])
    if nc == 0:  # nothing here: an empty part
        return Rows(shape, 0, 0, local.contiguous())
    return Rows(shape, 0, shape[0], local.contiguous(), c0 * inner, nc * inner)


def _slice(full: torch.Tensor, rank: int, size: int) -> Rows:
    shape = tuple(full.shape)
    rows = shape[0] if shape else 1
    r0, n = chunk_rows(rows, size, rank)
    flat = full.reshape(1) if not shape else full
    return Rows(shape, r0, n, flat[r0:r0 + n].contiguous())


def hsdp(t: torch.Tensor) -> bool:
    """Whether t is an HSDP DTensor: (Replicate(), Shard(0 or 1)) on a 2-D mesh."""
    if not is_dtensor(t) or len(t.placements) != 2:
        return False
    from torch.distributed.tensor import Replicate, Shard
    a, b = t.placements
    return isinstance(a, Replicate) and type(b) is Shard and b.dim in (0, 1)
