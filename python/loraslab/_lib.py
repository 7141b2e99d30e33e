"""Finding and loading libloraslab.so.0 (its prototypes: _capi.py)."""
from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess
from typing import Optional

SONAME = "libloraslab.so.0"


def _candidates() -> list[str]:
    """Where to look, in order (README.md of this package)."""
    out: list[str] = []
    if os.environ.get("LORASLAB_LIBRARY"):
        out.append(os.environ["LORASLAB_LIBRARY"])
    prefix = os.environ.get("LORASLAB_PREFIX")
    if prefix:
        out += [str(p) for p in sorted(pathlib.Path(prefix).glob("lib*/**/" + SONAME))]
    try:  # written by `cmake --install` or the pip build next to the modules
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
    from . import _capi

    _capi.declare(handle)
    _lib = handle
    return handle
