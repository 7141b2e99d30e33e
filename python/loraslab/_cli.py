"""The `loraslab` command of a pip-installed package: the C tool bundled in loraslab/bin, run in
this process's place (exec), so its exit status and signals are the tool's own."""
from __future__ import annotations

import os
import pathlib
import sys


def main() -> None:
    tool = pathlib.Path(__file__).resolve().parent / "bin" / "loraslab"
    if not tool.is_file():
        sys.exit("loraslab: this package was not installed with its command (pip install . "
                 "builds it; a plain copy of python/ has none)")
    os.execv(str(tool), [str(tool), *sys.argv[1:]])
