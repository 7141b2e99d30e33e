#!/usr/bin/python3
"""Check safetensors files against the format's writer rules, using only json and struct.

  check_safetensors.py FILE...

For each file: u64 header length N, N % 8 == 0, header padded with spaces only, compact JSON
exactly as serde_json writes it (no spaces, serde escaping), __metadata__ == {"format": "pt"} as
the first key, tensors ordered by dtype (descending safetensors enum order) then name bytewise,
data_offsets contiguous from 0 and covering the data exactly, sizes matching shape x dtype.
"""
import json
import struct
import sys

ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
         "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
         "F64", "I64", "U64"]
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
        "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
        "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
        "U64": 64}


def check(path):
    errs = []
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    raw = data[8:8 + n]
    if n % 8:
        errs.append(f"header length {n} is not a multiple of 8")
    text = raw.rstrip(b" ")
    if raw[len(text):].strip(b" "):
        errs.append("header padding is not spaces")
    pairs = json.loads(text, object_pairs_hook=lambda p: p)
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        errs.append("duplicate keys")
    if not keys or keys[0] != "__metadata__" or dict(pairs)["__metadata__"] != [("format", "pt")]:
        errs.append('__metadata__ is not first or not exactly {"format":"pt"}')
    header = {k: dict(v) for k, v in pairs}
    compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).encode()
    if compact != text:
        errs.append("header is not compact serde-style JSON")
    tensors = [(k, header[k]) for k in keys if k != "__metadata__"]
    for k, e in tensors:
        if list(e) != ["dtype", "shape", "data_offsets"]:
            errs.append(f"{k}: field order {list(e)}")
    want = sorted(tensors, key=lambda kv: (-ORDER.index(kv[1]["dtype"]), kv[0].encode()))
    if [k for k, _ in want] != [k for k, _ in tensors]:
        errs.append("tensors not ordered by dtype (descending) then name")
    off = 0
    for k, e in tensors:
        b, end = e["data_offsets"]
        count = 1
        for d in e["shape"]:
            count *= d
        if b != off or end - b != count * BITS[e["dtype"]] // 8:
            errs.append(f"{k}: data_offsets {e['data_offsets']} (expected to start at {off})")
        off = end
    if 8 + n + off != len(data):
        errs.append(f"data covers {off} bytes, file holds {len(data) - 8 - n}")
    return errs


bad = 0
for p in sys.argv[1:]:
    e = check(p)
    bad += bool(e)
    print(f"check_safetensors: {p}: {'ok' if not e else '; '.join(e)}")
sys.exit(1 if bad else 0)
