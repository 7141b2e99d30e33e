"""Where the library's progress lines and warnings go (lsl_set_log): stderr by default, or a
Python `logging.Logger`, so a training job's own log handlers (rank filters, files) apply."""
from __future__ import annotations

import logging
from typing import Optional

from ._capi import LOG_FN
from ._lib import lib

_installed: Optional[object] = None  # the ctypes callback must outlive its registration


def log_to(logger: Optional[logging.Logger]) -> None:
    """Send the library's lines to `logger` (INFO: progress and notes, WARNING: warnings), or,
    with None, back to stderr.  Process-wide; not while a loraslab call runs in another thread.
    Errors are not lines: they raise loraslab.Error."""
    global _installed
    lb = lib()
    if logger is None:
        lb.lsl_set_log(LOG_FN(), None)
        _installed = None
        return

    def sink(level: int, line: bytes, _ctx: object) -> None:
        logger.log(logging.WARNING if level == 1 else logging.INFO,
                   line.decode("utf-8", "replace"))
    cb = LOG_FN(sink)
    lb.lsl_set_log(cb, None)
    _installed = cb
