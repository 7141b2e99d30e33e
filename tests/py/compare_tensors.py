#!/usr/bin/python3
"""Bit-compare the tensors of two checkpoints (HF directory / .safetensors file / loraslab .h5).

  compare_tensors.py A B      exit 0 when both hold the same tensor names, dtypes, shapes, bytes
  compare_tensors.py A B --ulp N
                              float tensors may differ by N ulp (e.g. a GPU merge against the
                              CPU merge); prints the worst distance and the identical fraction
  compare_tensors.py A B --ulp N --min-identical PCT
                              as --ulp, but elements further apart pass as long as each float
                              tensor is at least PCT% bit-identical: a GPU merge (fp32
                              accumulation) against the CPU merge (fp64), which part where W0
                              and the delta nearly cancel (the float64 bound itself is checked
                              by check_merge.py --fp32-accumulation)
"""
import os
import sys

import numpy as np

import lsl_st


def load(p):
    if p.endswith(".h5"):
        import h5py
        out = {}
        with h5py.File(p, "r") as f:
            for name, ds in f["tensors"].items():
                dt = ds.attrs["dtype"]
                v = ds[()]
                if dt == "BF16":
                    v = (np.asarray(v, np.float32).view(np.uint32) >> 16).astype(np.uint16)
                elif dt == "F16":
                    v = np.asarray(v, np.float16).view(np.uint16)
                out[name] = (dt, np.ascontiguousarray(v).view(lsl_st.DTYPES[dt][0]))
        return out
    if os.path.isdir(p):
        return lsl_st.read_checkpoint(p)
    return lsl_st.read(p)[0]


def ordered(v):
    """Float bits as integers whose difference counts ulps."""
    i = v.view({2: np.int16, 4: np.int32, 8: np.int64}[v.dtype.itemsize]).astype(np.int64)
    top = np.int64(1) << (8 * v.dtype.itemsize - 1)
    return np.where(i < 0, -(i & (top - 1)), i)


a, b = load(sys.argv[1]), load(sys.argv[2])
tol = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--ulp" else 0
min_pct = float(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--min-identical" else None
worst, same, total = 0, 0, 0


def differs(k):
    global worst, same, total
    if k not in a or k not in b or a[k][0] != b[k][0] or a[k][1].shape != b[k][1].shape:
        return True
    x, y = a[k][1], b[k][1]
    if x.tobytes() == y.tobytes():
        same, total = same + x.size, total + x.size
        return False
    if not tol or a[k][0] not in ("BF16", "F16", "F32", "F64"):
        return True
    d = np.abs(ordered(np.ascontiguousarray(x).reshape(-1)) - ordered(np.ascontiguousarray(y).reshape(-1)))
    worst, same, total = max(worst, int(d.max())), same + int((d == 0).sum()), total + d.size
    if min_pct is not None:
        return 100.0 * int((d == 0).sum()) < min_pct * d.size
    return int(d.max()) > tol


diff = [k for k in sorted(set(a) | set(b)) if differs(k)]
extra = f"; worst {worst} ulp, {100.0 * same / max(total, 1):.4f}% identical" if tol else ""
print(f"compare_tensors: {len(a)} vs {len(b)} tensors, {len(diff)} differ {diff[:5]}{extra}")
sys.exit(1 if diff else 0)
