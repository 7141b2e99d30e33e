#!/usr/bin/env python3
"""Paper estimate of a Qwen2.5-32B merge on a published Lustre (docs/io-estimate.md).

  io_estimate.py [--ranks 64 1024] [--ranks-per-node 8] [--osts 156] [--ost-gbs 0.224]

Applies the I/O plan's rules (src/io/lsl_ioplan.c: one 4 MiB stripe per GiB, 2 to 64, when the
directory has the one-stripe default; collective buffering with one aggregator per stripe when
a rank's mean piece of a tensor is under four stripes) to the 32B tensor list split in even row
blocks (lsl_partition_rows), and bounds the write time by the OSTs the file is striped over at
the per-OST bandwidth of the system, times the shared-file efficiency VPIC-IO sustained
(0.66-0.8 of peak).  Prints the inputs with every figure so the arithmetic can be checked."""
from __future__ import annotations

import argparse
import math

from scale_shapes import SHAPES


def tensors(layers: int = 64) -> list[tuple[int, int]]:
    """(rows, row bytes) of each bf16 tensor of Qwen2.5-32B, in file order."""
    s = SHAPES["qwen32b"]
    kv = s.hidden // s.heads * s.kv_heads
    out = [(s.vocab, 2 * s.hidden)]
    for _ in range(layers):
        out += [(s.hidden, 2 * s.hidden), (kv, 2 * s.hidden), (kv, 2 * s.hidden),
                (s.hidden, 2 * s.hidden), (s.hidden, 2), (kv, 2), (kv, 2),
                (s.intermediate, 2 * s.hidden), (s.intermediate, 2 * s.hidden),
                (s.hidden, 2 * s.intermediate), (s.hidden, 2), (s.hidden, 2)]
    return out + [(s.hidden, 2), (s.vocab, 2 * s.hidden)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--osts", type=int, default=156)  # NERSC Hopper /scratch (parallel-io.md b)
    p.add_argument("--ost-gbs", type=float, default=35.0 / 156)  # its ~35 GB/s peak over 156
    a = p.parse_args()
    ts = tensors()
    total = sum(r * b for r, b in ts)
    stripe = 4 << 20
    count = min(64, max(2, math.ceil(total / (1 << 30))))
    print(f"Qwen2.5-32B: {len(ts)} tensors, {total / 1e9:.1f} GB; plan: {count} x 4 MiB stripes "
          f"(one per GiB, at most 64); system: {a.osts} OSTs x {a.ost_gbs:.3f} GB/s")
    print("| ranks | nodes | mean piece | collective buffering | aggregators | stripes shared "
          "| ceiling (plan / all OSTs) | estimate at 0.66-0.8 (plan) | with --stripe-count -1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in a.ranks:
        nodes = max(1, n // a.ranks_per_node)
        mean = total / len(ts) / n
        cb = mean < 4 * stripe and n > 1
        agg = f"{min(count, n)}, {math.ceil(min(count, n) / nodes)}/node" if cb else "-"
        shared, stripes, off = set(), 0, 0
        for rows, rb in ts:
            chunk = -(-rows // n)
            off = -(-off // stripe) * stripe if rows * rb >= 64 << 10 else off
            for k in range(1, n):
                b = off + min(rows, k * chunk) * rb
                if k * chunk < rows and b % stripe:
                    shared.add(b // stripe)
            stripes += (off + rows * rb - 1) // stripe - off // stripe + 1
            off += rows * rb
        ceil_plan = count * a.ost_gbs
        ceil_all = a.osts * a.ost_gbs
        lo, hi = total / 1e9 / (0.8 * ceil_plan), total / 1e9 / (0.66 * ceil_plan)
        lo2, hi2 = total / 1e9 / (0.8 * ceil_all), total / 1e9 / (0.66 * ceil_all)
        print(f"| {n} | {nodes} | {mean / 1e6:.2f} MB | {'on' if cb else 'off'} | {agg} | "
              f"{len(shared)} of {stripes} | {ceil_plan:.1f} / {ceil_all:.1f} GB/s | "
              f"{lo:.1f}-{hi:.1f} s | {lo2:.1f}-{hi2:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
