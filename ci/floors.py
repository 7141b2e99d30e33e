#!/usr/bin/env python3
"""The source tree's floors (docs/ARCHITECTURE.md), checked: every #include of a header in
another folder of src/ goes down this list, never up; CUDA kernels live only in src/device/;
the command-line tool includes only the public header.  Exits 1 naming each offending line."""
from __future__ import annotations

import os
import re
import sys

FLOORS = ["tools", "api", "merge", "convert", "engine", "backend", "io", "comm", "device",
          "formats", "core"]


def main() -> int:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    where: dict[str, str] = {}
    for d in sorted(os.listdir(root)):
        if os.path.isdir(os.path.join(root, d)):
            for f in os.listdir(os.path.join(root, d)):
                where[f] = d
    bad = []
    for f, d in sorted(where.items()):
        if d not in FLOORS:
            bad.append(f"src/{d}/: a folder ci/floors.py does not place")
            continue
        if f.endswith(".cu") and d != "device":
            bad.append(f"src/{d}/{f}: CUDA kernels belong in src/device/")
        with open(os.path.join(root, d, f), errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                if not m:
                    continue
                h = m.group(1)
                if d == "tools" and h != "loraslab.h":
                    bad.append(f"src/tools/{f}:{n}: the CLI uses the public API only ({h})")
                e = where.get(h)
                if e and e != d and e in FLOORS and FLOORS.index(e) < FLOORS.index(d):
                    bad.append(f"src/{d}/{f}:{n}: includes {h} from src/{e}/, a floor above")
    for b in bad:
        print("floors:", b)
    if not bad:
        print(f"floors: {len(where)} files in {len(set(where.values()))} floors, nothing "
              "included from above")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
