#!/usr/bin/env python3
"""What a loraslab write trace (LSL_TRACE=FILE) would do to a Lustre file of a given layout.

  lustre_model.py TRACE.jsonl [...] --stripe-size 1MiB --stripe-count 4 [--json]

For each file in the trace, with RAID-0 striping from OST 0 (stripe k of the file on OST
k % count): the bytes each OST receives, the stripes written by more than one rank (extent-lock
ping-pong between clients) overall and within one collective call (the same call index on
every rank: writes of one MPI_File_write_at_all), bytes written twice (overlaps: a bug), and the
fraction of bytes in stripe-aligned pieces (a piece starting on a stripe boundary and ending on
one, or at the end of the file).  A rank's contiguous pieces form runs (its part of a tensor);
a cut between two pieces of a run is interior, and should fall on a stripe boundary
(unaligned_interior_cuts), and a stripe two ranks write in one call should be one that a run
boundary cuts (conflicts_off_boundary counts the others).  Plain Python, no Lustre needed: tests/fs/trace_test.sh checks
the trace and this model against a real run."""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys


def size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def model(writes: list[dict], ss: int, sc: int) -> dict:
    end = max(w["offset"] + w["length"] for w in writes)
    ost = [0] * sc
    by_stripe: dict[int, set] = collections.defaultdict(set)
    by_call_stripe: dict[tuple, set] = collections.defaultdict(set)
    aligned = 0
    spans = []
    for w in writes:
        o, n, r = w["offset"], w["length"], w["rank"]
        spans.append((o, o + n, r))
        first, last = o // ss, (o + n - 1) // ss
        for s in range(first, last + 1):
            lo, hi = max(o, s * ss), min(o + n, (s + 1) * ss)
            ost[s % sc] += hi - lo
            by_stripe[s].add(r)
            by_call_stripe[(w["call"], s)].add(r)
        if o % ss == 0 and ((o + n) % ss == 0 or o + n == end):
            aligned += n
    # runs: each rank's pieces that continue one another
    starts, ends = set(), set()  # (rank, offset) of run starts / run ends
    cuts = unaligned = 0
    by_rank: dict[tuple, list] = collections.defaultdict(list)
    for w in writes:  # a run is one rank's pieces of one tensor ("what"), where traced
        if w["length"]:
            by_rank[(w["rank"], w.get("what"))].append((w["offset"], w["offset"] + w["length"]))
    for (r, _), ps in by_rank.items():
        ps.sort()
        for i, (lo, hi) in enumerate(ps):
            if i == 0 or ps[i - 1][1] != lo:
                starts.add((r, lo))
            if i + 1 == len(ps) or ps[i + 1][0] != hi:
                ends.add((r, hi))
            else:
                cuts += 1
                unaligned += hi % ss != 0
    off_boundary = 0
    in_call: dict[int, list] = collections.defaultdict(list)
    for w in writes:
        in_call[w["call"]].append(w)
    for (call, s), ranks in by_call_stripe.items():
        if len(ranks) < 2:
            continue
        lo_s, hi_s = s * ss, (s + 1) * ss
        for w in in_call[call]:
            if w["rank"] not in ranks or not w["length"]:
                continue
            o, e, r = w["offset"], w["offset"] + w["length"], w["rank"]
            if e <= lo_s or o >= hi_s:
                continue
            if (lo_s < o < hi_s and (r, o) not in starts) or (lo_s < e < hi_s and (r, e) not in ends):
                off_boundary += 1
                break
    spans.sort()
    overlap, reach = 0, 0
    for lo, hi, _ in spans:
        overlap += max(0, min(hi, reach) - lo)
        reach = max(reach, hi)
    total = sum(w["length"] for w in writes)
    mean = total / sc
    return {"bytes": total, "writes": len(writes), "ranks": len({w["rank"] for w in writes}),
            "ost_bytes": ost, "ost_imbalance": round(max(ost) / mean, 3) if mean else 0.0,
            "stripes": len(by_stripe),
            "shared_stripes": sum(1 for v in by_stripe.values() if len(v) > 1),
            "conflicting_stripes_in_a_call": sum(1 for v in by_call_stripe.values() if len(v) > 1),
            "overlap_bytes": overlap, "aligned_fraction": round(aligned / total, 4) if total else 1.0,
            "interior_cuts": cuts, "unaligned_interior_cuts": unaligned,
            "conflicts_off_boundary": off_boundary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", nargs="+")
    p.add_argument("--stripe-size", type=size, default=1 << 20)
    p.add_argument("--stripe-count", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    files: dict[str, list] = collections.defaultdict(list)
    for t in a.trace:
        with open(t) as f:
            for line in f:
                w = json.loads(line)
                files[w["file"]].append(w)
    out = {name: model(ws, a.stripe_size, a.stripe_count) for name, ws in sorted(files.items())}
    if a.json:
        print(json.dumps(out))
        return 0
    for name, m in out.items():
        print(f"{name}: {m['bytes']} bytes in {m['writes']} writes from {m['ranks']} ranks; "
              f"stripe {a.stripe_size} x {a.stripe_count}: OST bytes {m['ost_bytes']} "
              f"(max/mean {m['ost_imbalance']}); {m['shared_stripes']} of {m['stripes']} stripes "
              f"written by several ranks, {m['conflicting_stripes_in_a_call']} within one call; "
              f"{100 * m['aligned_fraction']:.1f}% of bytes in stripe-aligned pieces; "
              f"{m['overlap_bytes']} bytes written twice; {m['unaligned_interior_cuts']} of "
              f"{m['interior_cuts']} cuts inside a rank's run off a stripe boundary; "
              f"{m['conflicts_off_boundary']} shared stripes in a call away from run boundaries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
