"""Where the library's progress lines and warnings go (lsl_set_log): stderr by default, or a
Python `logging.Logger`, so a training job's own log handlers (rank filters, files) apply."""
from __future__ import annotations

import ctypes
import logging
from typing import Optional

from ._lib import lib

_SINK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_installed: Optional[object] = None  # the ctypes callback must outlive its registration


def log_to(logger: Optional[logging.Logger]) -> None:
    """Send the library's lines to `logger` (INFO: progress and notes, WARNING: warnings), or,
    with None, back to stderr.  Process-wide; not while a loraslab call runs in another thread.
    Errors are not lines: they raise loraslab.Error."""
    global _installed
    lb = lib()
    lb.lsl_set_log.restype = None
    lb.lsl_set_log.argtypes = [_SINK, ctypes.c_void_p]
    if logger is None:
        lb.lsl_set_log(_SINK(), None)
        _installed = None
        return

    def sink(level: int, line: bytes, _ctx: object) -> None:
        logger.log(logging.WARNING if level == 1 else logging.INFO,
                   line.decode("utf-8", "replace"))
    cb = _SINK(sink)
    lb.lsl_set_log(cb, None)
    _installed = cb
