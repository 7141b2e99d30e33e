#!/usr/bin/python3
"""Bit-compare the tensors of two checkpoints (HF directory / .safetensors file / loraslab .h5).

  compare_tensors.py A B      exit 0 when both hold the same tensor names, dtypes, shapes, bytes
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


a, b = load(sys.argv[1]), load(sys.argv[2])
diff = [k for k in sorted(set(a) | set(b))
        if k not in a or k not in b or a[k][0] != b[k][0] or a[k][1].shape != b[k][1].shape
        or a[k][1].tobytes() != b[k][1].tobytes()]
print(f"compare_tensors: {len(a)} vs {len(b)} tensors, {len(diff)} differ {diff[:5]}")
sys.exit(1 if diff else 0)
