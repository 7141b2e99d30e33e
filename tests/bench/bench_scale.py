#!/usr/bin/env python3
"""The scale benchmark: a Qwen2.5-shaped PEFT LoRA model exported five ways at one rank, each
row in its own process (scale_row.py) so that a row that dies does not take the run with it.

  bench_scale.py --shape qwen32b --layers 64 --out /dev/shm/lsl-scale [--rows R,R,...]
                 [--device cuda] [--lsl build-gpu/loraslab] [--floor-gib 8] [--json FILE]

Rows: ceiling (pwrite of 8 MiB pieces from a pinned buffer, fsync), ceiling-k (the same bytes
as K files from K threads, K the directory's shard count), loraslab-fsdp2, loraslab-fsdp1
(loraslab.torch.save_merged to an HDF5 file), loraslab-fsdp2-hf, loraslab-fsdp1-hf (to the
safetensors directory, shards of --max-shard bytes), peft (merge_and_unload + save_pretrained), dcp
(PEFT's merge, then DCP's HuggingFaceStorageWriter with consolidation), recipe (the motivating
report's summon-merge-pin, then save_file), convert (loraslab-fsdp2, then `loraslab convert`,
`verify`, one tensor read back by safetensors against the HDF5 file).

Memory cap: while a row runs, the host's MemAvailable is sampled every 20 ms; below --floor-gib
the row is killed and reported as a host-OOM failure, before the kernel's OOM killer would pick
a process of its own.  Prints one line per row, then a table with each loraslab row's GB/s
against the ceiling's and its speed against every peer row that completed."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from scale_shapes import SHAPES, merged_bytes  # noqa: E402
ROWS = ["ceiling", "ceiling-k", "loraslab-fsdp2", "loraslab-fsdp1", "loraslab-fsdp2-hf",
        "loraslab-fsdp1-hf", "peft", "dcp", "recipe"]


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def why_failed(rc: int, tail: str) -> str:
    t = tail.lower()
    if "cuda out of memory" in t or "outofmemoryerror" in t:
        return "GPU OOM"
    if "pin" in t and ("memory" in t or "alloc" in t) and "error" in t:
        return "pinned allocation failure"
    if "no space left" in t or "enospc" in t or "nospace" in t:
        return "filesystem full"
    if rc == -9:
        return "killed by SIGKILL (the kernel's OOM killer?)"
    if "memoryerror" in t or "cannot allocate memory" in t:
        return "host OOM"
    last = [x for x in tail.strip().splitlines() if x.strip()]
    return f"exit {rc}: {last[-1][:160] if last else ''}"


def warm(a: argparse.Namespace) -> float:
    """Write the checkpoint's size once and delete it (untimed): on a tmpfs in a fresh VM the
    first touch of each page costs the host's allocation, and whichever row ran first paid for
    it (the 32B ceiling: 2.12 GB/s first, 2.75 GB/s after other rows)."""
    path, piece = os.path.join(a.out, "warm.bin"), 8 << 20
    total = merged_bytes(SHAPES[a.shape], a.layers)
    zeros = bytes(piece)
    t0 = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, total, piece):
            os.pwrite(fd, zeros[:min(piece, total - off)], off)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)
    return time.time() - t0


def run_row(row: str, a: argparse.Namespace) -> dict:
    out = os.path.join(a.out, row)
    cmd = [sys.executable, os.path.join(HERE, "scale_row.py"), row, "--shape", a.shape,
           "--layers", str(a.layers), "--device", a.device, "--out", out, "--lsl", a.lsl,
           "--max-shard", str(a.max_shard)]
    log = open(os.path.join(a.out, f"{row}.log"), "w+")
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    floor, low, peak = a.floor_gib * 2**30, None, 0
    while p.poll() is None:
        peak = max(peak, rss_of(p.pid))
        avail = mem_available()
        if avail < floor:
            low = avail
            p.kill()
            p.wait()
            break
        time.sleep(0.02)
    wall = time.time() - t0
    subprocess.run(["rm", "-rf", out])  # a killed row leaves its files
    log.seek(0)
    text = log.read()
    log.close()
    res = {"row": row, "shape": a.shape, "layers": a.layers, "process_seconds": round(wall, 1),
           "process_peak_rss_gib": round(peak / 2**30, 2)}
    lines = [x for x in text.splitlines() if x.startswith("RESULT ")]
    if low is not None:
        res["status"] = (f"failed: host OOM (MemAvailable {low / 2**30:.1f} GiB < "
                         f"{a.floor_gib} GiB floor; row at {peak / 2**30:.1f} GiB RSS), killed")
    elif p.returncode == 0 and lines:
        res.update(json.loads(lines[-1][7:]))
        res["status"] = "completed"
    else:
        res["status"] = "failed: " + why_failed(p.returncode, text[-3000:])
    return res


def table(results: list[dict]) -> list[str]:
    by = {r["row"]: r for r in results}
    ok = {k: r for k, r in by.items() if r["status"] == "completed"}
    out = ["| row | status | seconds | GB/s | RSS growth MiB | pinned peak GiB |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        done = r["status"] == "completed"
        gbs = r["payload_bytes"] / r["seconds"] / 1e9 if done and r["seconds"] > 0 else None
        r["gbs"] = round(gbs, 3) if gbs else None
        pin = r.get("pinned_peak_bytes")
        out.append(f"| {r['row']} | {r['status']} | {r['seconds'] if done else '-'} | "
                   f"{r['gbs'] if gbs else '-'} | {r['rss_growth_mib'] if done else '-'} | "
                   f"{round(pin / 2**30, 2) if pin else '-'} |")
    for k in ("loraslab-fsdp2", "loraslab-fsdp1", "loraslab-fsdp2-hf", "loraslab-fsdp1-hf",
              "convert"):
        if k not in ok:
            continue
        r = ok[k]
        bits = []
        # a directory against K files at once, one file against one file
        ceil = ok.get("ceiling-k" if k.endswith("-hf") else "ceiling")
        if ceil and ceil.get("gbs"):
            bits.append(f"{r['gbs'] / ceil['gbs']:.2f}x {ceil['row']}'s GB/s")
        for peer in ("peft", "dcp", "recipe"):
            if peer in ok:
                bits.append(f"{ok[peer]['seconds'] / r['seconds']:.2f}x {peer}'s speed")
            elif peer in by:
                bits.append(f"{peer} did not complete")
        out.append(f"ratio {k} ({r['shape']}, {r['layers']} layers): " + "; ".join(bits))
        if "readback" in r:
            ck = ok.get("ceiling-k")
            vs = (f", {r['payload_bytes'] / r['convert_seconds'] / 1e9 / ck['gbs']:.2f}x "
                  f"ceiling-k's GB/s" if ck and ck.get("gbs") and r["convert_seconds"] else "")
            out.append(f"convert: {r['convert_bytes']} bytes in {r['convert_seconds']} s at one "
                       f"rank{vs}, verify {r['verify']}, readback {r['readback']}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen32b")
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--lsl", default="loraslab")
    p.add_argument("--floor-gib", type=float, default=8.0)
    p.add_argument("--json", default="")
    p.add_argument("--no-warm", action="store_true", help="skip the untimed first write")
    p.add_argument("--max-shard", type=int, default=5_000_000_000,
                   help="the directory rows' shard size in bytes (save_pretrained's 5 GB)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = []
    if not a.no_warm:
        print(f"scale: warmed {a.out} with the checkpoint's size in {warm(a):.1f} s", flush=True)
    for row in a.rows.split(","):
        r = run_row(row, a)
        print("scale: " + json.dumps(r), flush=True)
        results.append(r)
    for line in table(results):
        print(line)
    if a.json:
        with open(a.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0 if all(r["status"] == "completed" for r in results
                    if r["row"].startswith(("loraslab", "ceiling", "convert"))) else 1


if __name__ == "__main__":
    sys.exit(main())
