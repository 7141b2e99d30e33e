"""Finding and loading libloraslab.so.0, and the C declarations the package uses."""
from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess
from typing import Optional

SONAME = "libloraslab.so.0"


class ConvertConfig(ctypes.Structure):
    """lsl_convert_config (include/loraslab.h)."""

    _fields_ = [
        ("input", ctypes.c_char_p),
        ("outdir", ctypes.c_char_p),
        ("max_shard_bytes", ctypes.c_uint64),
        ("staging_bytes", ctypes.c_uint64),
        ("no_verify", ctypes.c_int),
        ("overwrite", ctypes.c_int),
        ("quiet", ctypes.c_int),
        ("stripe_count", ctypes.c_uint64),
        ("stripe_size", ctypes.c_uint64),
        ("plan", ctypes.c_int),
    ]


class JobStats(ctypes.Structure):
    """lsl_job_stats (include/loraslab.h)."""

    _fields_ = [
        ("seconds", ctypes.c_double),
        ("tensors", ctypes.c_uint64),
        ("merged_tensors", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("rss_baseline_max", ctypes.c_uint64),
        ("rss_peak_max", ctypes.c_uint64),
        ("rss_growth_min", ctypes.c_uint64),
        ("rss_growth_max", ctypes.c_uint64),
    ]


def _candidates() -> list[str]:
    """Where to look, in order (README.md of this package)."""
    out: list[str] = []
    if os.environ.get("LORASLAB_LIBRARY"):
        out.append(os.environ["LORASLAB_LIBRARY"])
    prefix = os.environ.get("LORASLAB_PREFIX")
    if prefix:
        out += [str(p) for p in sorted(pathlib.Path(prefix).glob("lib*/**/" + SONAME))]
    try:  # written by `cmake --install` next to the modules
        from . import _installed  # type: ignore[attr-defined]

        out.append(str((pathlib.Path(__file__).parent / _installed.LIBRARY).resolve()))
    except ImportError:
        pass
    if shutil.which("pkg-config"):
        r = subprocess.run(["pkg-config", "--variable=libdir", "loraslab"],
                           capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip():
            out.append(os.path.join(r.stdout.strip(), SONAME))
    out.append(SONAME)  # the system loader: LD_LIBRARY_PATH, ldconfig
    return out


_lib: Optional[ctypes.CDLL] = None


def loaded() -> bool:
    """Whether the library has been loaded in this process (nothing of it runs before)."""
    return _lib is not None


def lib() -> ctypes.CDLL:
    """The loaded library, with its prototypes declared (loaded on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    tried = []
    for path in _candidates():
        try:
            handle = ctypes.CDLL(path)
            break
        except OSError as e:
            tried.append(f"{path}: {e}")
    else:
        raise OSError("loraslab: cannot load libloraslab.so.0; set LORASLAB_LIBRARY or "
                      "LORASLAB_PREFIX.  Tried:\n  " + "\n  ".join(tried))
    c = ctypes
    protos = {
        "lsl_status_name": (c.c_char_p, [c.c_int]),
        "lsl_last_error": (c.c_char_p, []),
        "lsl_version_string": (c.c_char_p, []),
        "lsl_convert_world": (c.c_int, [c.POINTER(ConvertConfig), c.POINTER(JobStats)]),
        "lsl_verify_world": (c.c_int, [c.c_char_p, c.c_uint64, c.c_int, c.POINTER(JobStats)]),
        "lsl_inspect_json": (c.c_int, [c.c_char_p, c.POINTER(c.c_void_p)]),
        "lsl_free": (None, [c.c_void_p]),
        "lsl_parse_size": (c.c_int, [c.c_char_p, c.POINTER(c.c_uint64)]),
        "lsl_convert_cb_all": (c.c_int, [c.c_void_p, c.POINTER(ConvertConfig),
                                         c.POINTER(JobStats)]),
        "lsl_verify_cb_all": (c.c_int, [c.c_void_p, c.c_char_p, c.c_uint64, c.c_int,
                                        c.POINTER(JobStats)]),
        "lsl_world_rank": (c.c_int, []),
        "lsl_world_size": (c.c_int, []),
        "lsl_world_finalize": (None, []),
        "lsl_remove_temporaries": (None, []),
    }
    for name, (res, args) in protos.items():
        f = getattr(handle, name)
        f.restype = res
        f.argtypes = args
    from . import _capi

    _capi.declare(handle)
    _lib = handle
    return handle
