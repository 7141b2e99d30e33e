"""convert, verify, inspect: the offline tools, collective over the MPI world."""
from __future__ import annotations

import ctypes
import json
import os
from typing import Any, Optional, Union

from ._errors import raise_status
from ._lib import ConvertConfig, JobStats, lib, loaded

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
    """The loaded library's version ("0.2.0")."""
    return lib().lsl_version_string().decode()


def convert(input: PathLike, outdir: PathLike, *, max_shard_size: Optional[str] = None,
            staging_mib: int = 64, no_verify: bool = False, overwrite: bool = False,
            quiet: bool = False, progress: str = "text", _comm: Any = None) -> dict[str, Any]:
    """loraslab HDF5 file -> Hugging Face safetensors directory (`loraslab convert`).

    Collective over the MPI world; returns the job's figures (seconds, tensors, bytes, peak host
    memory over ranks).  Raises Error (on every rank alike) on any failure, with nothing left at
    ``outdir``."""
    cfg = ConvertConfig(_path(input), _path(outdir), 0, staging_mib << 20, int(no_verify),
                        int(overwrite), _progress(quiet, progress))
    if max_shard_size is not None:
        b = ctypes.c_uint64()
        _check(lib().lsl_parse_size(str(max_shard_size).encode(), ctypes.byref(b)))
        cfg.max_shard_bytes = b.value
    stats = JobStats()
    if _comm is not None:  # loraslab.torch: over torch.distributed callbacks
        _check(lib().lsl_convert_cb_all(ctypes.addressof(_comm.cb), ctypes.byref(cfg),
                                        ctypes.byref(stats)), _comm)
    else:
        _check(lib().lsl_convert_world(ctypes.byref(cfg), ctypes.byref(stats)))
    return _stats(stats)


def verify(path: PathLike, *, staging_mib: int = 64, quiet: bool = False,
           progress: str = "text", _comm: Any = None) -> dict[str, Any]:
    """Re-read a loraslab file or a converted directory and check every checksum
    (`loraslab verify`).  Collective; raises Error (LSL_ERR_CORRUPT names what differs)."""
    stats = JobStats()
    if _comm is not None:
        _check(lib().lsl_verify_cb_all(ctypes.addressof(_comm.cb), _path(path), staging_mib << 20,
                                       _progress(quiet, progress), ctypes.byref(stats)), _comm)
    else:
        _check(lib().lsl_verify_world(_path(path), staging_mib << 20,
                                      _progress(quiet, progress), ctypes.byref(stats)))
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
