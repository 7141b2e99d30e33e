"""Minimal safetensors reader/writer and 16-bit float helpers for the tests (numpy only).

Written from the format rules (reference/formats.md 1.5), independent of the C code under test.
"""
import json
import struct

import numpy as np

DTYPES = {  # name -> (numpy storage dtype, safetensors enum order)
    "BOOL": (np.uint8, 0), "U8": (np.uint8, 4), "I8": (np.int8, 5), "I16": (np.int16, 11),
    "U16": (np.uint16, 12), "F16": (np.uint16, 13), "BF16": (np.uint16, 14), "I32": (np.int32, 15),
    "U32": (np.uint32, 16), "F32": (np.float32, 17), "F64": (np.float64, 19), "I64": (np.int64, 20),
    "U64": (np.uint64, 21),
}


def f32_to_bf16_bits(x):
    """Round float32 to bfloat16 (round to nearest even), returning uint16 bits."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    r[nan] = 0x7FC0
    return r


def bf16_bits_to_f64(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def f16_bits_to_f64(b):
    return np.asarray(b, dtype=np.uint16).view(np.float16).astype(np.float64)


def to_f64(dtype, arr):
    if dtype == "BF16":
        return bf16_bits_to_f64(arr)
    if dtype == "F16":
        return f16_bits_to_f64(arr)
    return np.asarray(arr).astype(np.float64)


def from_f64(dtype, x):
    """Round float64 values once into dtype's bits (bf16 through f32: see formats.md 3.4)."""
    if dtype == "BF16":
        return f32_to_bf16_bits(np.asarray(x, dtype=np.float64).astype(np.float32))
    if dtype == "F16":
        return np.asarray(x, dtype=np.float64).astype(np.float16).view(np.uint16)
    if dtype == "F32":
        return np.asarray(x, dtype=np.float64).astype(np.float32)
    raise ValueError(dtype)


def ordered(dtype, bits):
    """Map float bits to integers whose difference counts ulps."""
    if dtype == "F32":
        u = np.asarray(bits, dtype=np.float32).view(np.uint32).astype(np.int64)
        sign, mag = u >> 31, u & 0x7FFFFFFF
    else:
        u = np.asarray(bits, dtype=np.uint16).astype(np.int64)
        sign, mag = u >> 15, u & 0x7FFF
    return np.where(sign == 1, -mag, mag)


def write(path, tensors, metadata=None):
    """tensors: {name: (dtype_name, numpy array of the storage dtype, shape)} in any order."""
    if metadata is None:
        metadata = {"format": "pt"}
    names = sorted(tensors, key=lambda n: (-DTYPES[tensors[n][0]][1], n.encode()))
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for n in names:
        dt, arr, shape = tensors[n]
        b = np.ascontiguousarray(arr, dtype=DTYPES[dt][0]).tobytes()
        header[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read(path):
    """{name: (dtype_name, array of storage dtype shaped)} and the metadata."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    out = {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        arr = np.frombuffer(data[8 + n + b:8 + n + en], dtype=DTYPES[e["dtype"]][0])
        out[name] = (e["dtype"], arr.reshape(e["shape"]))
    return out, meta


def read_checkpoint(d):
    import os
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read(os.path.join(d, f))[0])
    return out
