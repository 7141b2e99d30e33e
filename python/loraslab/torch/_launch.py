"""Under which launcher the job runs, and so which communicator the writer gets.

- mpiexec / srun (an MPI world as large as torch's, the same ranks): MPI, collective MPI-IO.
- torchrun (also one torchrun per node inside srun): no MPI world (MPI_Init there gives each
  process a world of its own), so callbacks over torch.distributed and positional writes.
- one process without torch.distributed: MPI, a world of one.
LSL_TORCH_COMM=mpi|callbacks overrides the choice.  MPI is started only by the writer itself."""
from __future__ import annotations

import os
from typing import Optional

import torch.distributed as dist

_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def _env_int(names: tuple) -> Optional[int]:
    for n in names:
        v = os.environ.get(n)
        if v is not None and v.strip().isdigit():
            return int(v)
    return None


def choose(group: Optional["dist.ProcessGroup"]) -> tuple[str, str]:
    """("mpi" | "callbacks", a phrase saying why)."""
    forced = os.environ.get("LSL_TORCH_COMM", "")
    if forced in ("mpi", "callbacks"):
        return forced, f"LSL_TORCH_COMM={forced}"
    if forced:
        raise ValueError(f"LSL_TORCH_COMM={forced!r}: use mpi, callbacks, or leave it unset")
    if not dist.is_available() or not dist.is_initialized():
        return "mpi", "one process (no torch.distributed)"
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        return "callbacks", "torchrun (no MPI world)"
    world = dist.get_world_size()
    if group is not None and dist.get_world_size(group) != world:
        return "callbacks", "a process group smaller than the world"
    size, rank = _env_int(_SIZE_VARS), _env_int(_RANK_VARS)
    if size == world and rank == dist.get_rank():
        return "mpi", "an MPI launcher with torch's ranks"
    return "callbacks", "no MPI world matching torch's"
