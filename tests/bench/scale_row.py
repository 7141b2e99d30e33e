"""One row of the scale benchmark, in its own process (bench_scale.py runs each):

  scale_row.py ROW --shape S --layers L --device D --out DIR [--lsl LOSLAB_CLI] [--keep]

ROW: ceiling | ceiling-k | loraslab-fsdp2 | loraslab-fsdp1 | loraslab-fsdp2-hf |
loraslab-fsdp1-hf | peft | dcp | recipe | convert.  The -hf rows write the safetensors
directory directly (shards of --max-shard bytes); ceiling-k writes the same bytes as K files from
K threads, K the number of shards that directory has.  The model is
built first (not timed); the timed part is the export, files synced.  Prints one line
`RESULT {json}`: seconds, bytes written (and the checkpoint's tensor bytes, the same for every
row: GB/s counts those), peak host RSS growth over the process's RSS before the
export (sampled every 5 ms), and torch's pinned-memory peak where it reports one."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale_model  # noqa: E402
from scale_shapes import SHAPES, merged_bytes  # noqa: E402

PIECE = 8 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """The process's peak RSS while the block runs, from a sampling thread (ru_maxrss would
    count the model build)."""

    def __enter__(self) -> "Peak":
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())


def pinned_peak() -> int | None:
    if not torch.cuda.is_available():
        return None
    stats = torch.cuda.host_memory_stats()  # rounded block sizes, cached blocks included
    for k in ("allocated_bytes.peak", "allocated_bytes.all.peak", "reserved_bytes.all.peak"):
        if k in stats:
            return int(stats[k])
    return None


def tree_bytes(d: str, skip: str = "") -> int:
    n = 0
    for root, dirs, files in os.walk(d):
        if skip:
            dirs[:] = [x for x in dirs if x != skip]
        n += sum(os.path.getsize(os.path.join(root, f)) for f in files
                 if f.endswith((".safetensors", ".h5")))
    return n


def write_file(path: str, size: int, mv: memoryview) -> None:
    """size bytes into path as pwrites of PIECE from mv (one pinned buffer), then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < size:
            n = min(PIECE, size - off)
            off += os.pwrite(fd, mv[:n], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def pinned_piece() -> memoryview:
    buf = torch.empty(PIECE, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    buf.random_(0, 256)
    return memoryview(buf.numpy())


def ceiling(a: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], int]]:
    """One process, one file, pwrite of 8 MiB pieces from a pinned buffer, then fsync."""
    total = merged_bytes(SHAPES[a.shape], a.layers)
    path = os.path.join(a.out, "ceiling.bin")
    mv = pinned_piece()
    return lambda: write_file(path, total, mv), lambda: os.path.getsize(path)


def ceiling_k(a: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], int]]:
    """K threads, each pwriting its own file (8 MiB pieces from one pinned buffer) and syncing
    it: the same bytes as the directory's K shards, the ceiling of writing them at once."""
    total = merged_bytes(SHAPES[a.shape], a.layers)
    k = max(1, -(-total // a.max_shard))
    mv = pinned_piece()
    paths = [os.path.join(a.out, f"ceiling-{i}.bin") for i in range(k)]
    sizes = [total // k + (1 if i < total % k else 0) for i in range(k)]

    def run() -> None:
        ts = [threading.Thread(target=write_file, args=(p, n, mv)) for p, n in zip(paths, sizes)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return run, lambda: sum(os.path.getsize(p) for p in paths)


def model_row(a: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], int]]:
    scale_model.init_dist(a.device)
    peft = scale_model.build(a.shape, a.layers, a.device)
    row = a.row if a.row != "convert" else "loraslab-fsdp2"
    if row.startswith("loraslab-"):
        import loraslab.torch
        model = scale_model.wrap(peft, row.split("-")[1], a.device)
        if row.endswith("-hf"):  # the safetensors directory, in one pass
            path = os.path.join(a.out, "merged")
            return (lambda: loraslab.torch.save_merged(model, path, quiet=True,
                                                       max_shard_size=a.max_shard),
                    lambda: tree_bytes(path))
        path = os.path.join(a.out, "merged.h5")
        return (lambda: loraslab.torch.save_merged(model, path, quiet=True),
                lambda: os.path.getsize(path))
    if row == "recipe":
        import scale_recipe
        model = scale_model.wrap(peft, "fsdp1", a.device)
        path = os.path.join(a.out, "recipe.safetensors")
        return lambda: scale_recipe.export(model, path), lambda: os.path.getsize(path)
    out = os.path.join(a.out, row)

    def peft_row() -> None:  # PEFT's merge in place on the GPU, then save_pretrained
        peft.merge_and_unload().save_pretrained(out)
        os.sync()

    def dcp_row() -> None:  # PEFT's merge, then DCP's own route to a consolidated HF checkpoint
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter
        merged = peft.merge_and_unload()
        dcp.save(merged.state_dict(), storage_writer=HuggingFaceStorageWriter(
            out, save_distributed=True, enable_consolidation=True))
        os.sync()
    return (peft_row if row == "peft" else dcp_row), lambda: tree_bytes(out, skip="sharded")


def check_convert(a: argparse.Namespace, h5: str) -> dict:
    """loraslab convert + verify of the row's file, then one tensor read back by safetensors
    against the HDF5 dataset, byte for byte."""
    import subprocess

    import h5py
    from safetensors import safe_open
    hf = os.path.join(a.out, "hf")
    t0 = time.time()
    subprocess.run([a.lsl, "convert", "-q", "--max-shard-size", str(a.max_shard), h5, hf],
                   check=True)
    t1 = time.time()
    subprocess.run([a.lsl, "verify", "-q", h5], check=True)
    subprocess.run([a.lsl, "verify", "-q", hf], check=True)
    name = "model.layers.0.self_attn.k_proj.weight"  # merged, and small: h5py converts bf16
    files = [f for f in os.listdir(hf) if f.endswith(".safetensors")]
    got = None
    for f in files:
        with safe_open(os.path.join(hf, f), framework="pt") as st:
            if name in st.keys():
                got = st.get_tensor(name).view(torch.int16).numpy().tobytes()
    with h5py.File(h5, "r") as f:  # bf16 comes back as float32: its top half is the bf16
        want = f["tensors"][name][()].astype("float32").view("uint32") >> 16
        want = want.astype("uint16").tobytes()
    return {"convert_seconds": round(t1 - t0, 3), "convert_bytes": tree_bytes(hf),
            "verify": "passed", "readback": "equal" if got == want else "DIFFERENT"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("row")
    p.add_argument("--shape", default="qwen32b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p.add_argument("--lsl", default="loraslab")
    p.add_argument("--max-shard", type=int, default=5_000_000_000)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    run, size = ceiling(a) if a.row == "ceiling" else ceiling_k(a) if a.row == "ceiling-k" \
        else model_row(a)
    if a.device == "cuda":
        torch.cuda.synchronize()
    with Peak() as pk:
        t0 = time.time()
        run()
        t = time.time() - t0
    res = {"row": a.row, "shape": a.shape, "layers": a.layers, "seconds": round(t, 3),
           "bytes": size(),  # on disk: headers, and an HDF5 file's alignment gaps, included
           "payload_bytes": merged_bytes(SHAPES[a.shape], a.layers),
           "rss_growth_mib": round((pk.peak - pk.base) / 2**20, 1),
           "files": -(-merged_bytes(SHAPES[a.shape], a.layers) // a.max_shard),
           "pinned_peak_bytes": pinned_peak()}
    if a.row == "convert":
        res.update(check_convert(a, os.path.join(a.out, "merged.h5")))
    print("RESULT " + json.dumps(res), flush=True)
    shutil.rmtree(a.out, ignore_errors=True)  # the next row needs the room
    os._exit(0)  # skip interpreter teardown of NCCL and gloo (see NOTES.md: exit-time aborts)


if __name__ == "__main__":
    sys.exit(main())
