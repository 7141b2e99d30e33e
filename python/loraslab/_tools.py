"""convert, verify, inspect: the offline tools, collective over the MPI world."""
from __future__ import annotations

import ctypes
import json
import os
from typing import Any, Optional, Union

from ._capi import ConvertConfig, JobStats
from ._errors import raise_status
from ._lib import lib, loaded

PathLike = Union[str, "os.PathLike[str]"]
PROGRESS = {"text": 0, "none": 1, "json": 2}


def _check(status: int, comm: Any = None) -> None:
    if status != 0:
        raise_status(lib(), status, getattr(comm, "error", None))


def _path(p: PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


def _progress(quiet: bool, progress: str) -> int:
    if progress not in PROGRESS:
        raise ValueError(f"progress must be one of {sorted(PROGRESS)}, not {progress!r}")
    return PROGRESS["none"] if quiet else PROGRESS[progress]


def _stats(s: JobStats) -> dict[str, Any]:
    return {name: getattr(s, name) for name, _ in JobStats._fields_}


_world: Optional[ctypes.c_void_p] = None  # the lsl_comm over MPI_COMM_WORLD, made once


def world() -> ctypes.c_void_p:
    """The handle over MPI's world (lsl_comm_world: MPI starts here if nobody started it)."""
    global _world
    if _world is None:
        h = ctypes.c_void_p()
        _check(lib().lsl_comm_world(ctypes.byref(h)))
        _world = h
    return _world


def _handle(comm: Any) -> ctypes.c_void_p:
    """The handle a collective call runs over: a torch communicator's, or the MPI world's."""
    return comm.handle if comm is not None else world()


def finalize() -> None:
    """Finish MPI now if loraslab started it; otherwise do nothing.  Collective over the world.

    MPI started by loraslab is finished at interpreter exit anyway; call this before leaving
    with ``os._exit`` (which runs no exit handlers), since Open MPI's launcher fails a job whose
    process exits with MPI still initialised.  No collective loraslab call may follow."""
    if loaded():
        lib().lsl_world_finalize()


def remove_temporaries() -> None:
    """Remove the temporary outputs of loraslab calls under way in this process (async-signal
    safe in C; `lsl_remove_temporaries`).  For a job's own signal handler that ends the process:
    save_merged already installs one that does this for the time of the call."""
    lib().lsl_remove_temporaries()


def version() -> str:
    """The loaded library's version ("0.3.0")."""
    return lib().lsl_version_string().decode()


def convert(input: PathLike, outdir: PathLike, *, max_shard_size: Optional[str] = None,
            staging_mib: int = 64, no_verify: bool = False, overwrite: bool = False,
            quiet: bool = False, progress: str = "text", _comm: Any = None) -> dict[str, Any]:
    """loraslab HDF5 file -> Hugging Face safetensors directory (`loraslab convert`).

    Collective over the MPI world; returns the job's figures (seconds, tensors, bytes, peak host
    memory over ranks).  Raises Error (on every rank alike) on any failure, with nothing left at
    ``outdir``."""
    cfg = ConvertConfig(input=_path(input), outdir=_path(outdir), staging_bytes=staging_mib << 20,
                        no_verify=int(no_verify), overwrite=int(overwrite),
                        quiet=_progress(quiet, progress))
    if max_shard_size is not None:
        b = ctypes.c_uint64()
        _check(lib().lsl_parse_size(str(max_shard_size).encode(), ctypes.byref(b)))
        cfg.max_shard_bytes = b.value
    stats = JobStats()
    # _comm: loraslab.torch's communicator over torch.distributed callbacks
    _check(lib().lsl_convert_all(_handle(_comm), ctypes.byref(cfg), ctypes.byref(stats)), _comm)
    return _stats(stats)


def verify(path: PathLike, *, staging_mib: int = 64, quiet: bool = False,
           progress: str = "text", _comm: Any = None) -> dict[str, Any]:
    """Re-read a loraslab file or a converted directory and check every checksum
    (`loraslab verify`).  Collective; raises Error (LSL_ERR_CORRUPT names what differs)."""
    stats = JobStats()
    _check(lib().lsl_verify_all(_handle(_comm), _path(path), staging_mib << 20,
                                _progress(quiet, progress), ctypes.byref(stats)), _comm)
    return _stats(stats)


def inspect(path: PathLike) -> dict[str, Any]:
    """The file's layout as `loraslab inspect --json` prints it (valid against
    schemas/loraslab-file.schema.json).  Not collective."""
    out = ctypes.c_void_p()
    _check(lib().lsl_inspect_json(_path(path), ctypes.byref(out)))
    try:
        return json.loads(ctypes.string_at(out.value).decode("utf-8"))
    finally:
        lib().lsl_free(out)
