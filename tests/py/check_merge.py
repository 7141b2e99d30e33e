#!/usr/bin/python3
"""Check a merged loraslab HDF5 file against an independent numpy reference.

  check_merge.py --base DIR [--adapter DIR] --merged FILE [--fp32-accumulation]

Reads the file with h5py (not with loraslab), recomputes every targeted weight in float64 as
PEFT defines it (W0 + scaling * B @ A, scaling = alpha/r or alpha/sqrt(r), per-module r/alpha
from rank_pattern/alpha_pattern), rounds once into the base dtype and requires: every element
within 1 ulp, at least 99% exact.  Untouched tensors must be bit-identical to the base.  Also
checks the layout: attributes, dtype strings, CRC-32C of every tensor, contiguous storage.

--fp32-accumulation (a merge on the GPU, which accumulates in fp32 as PEFT does): an element more
than 1 ulp off passes if it is within the forward error bound of an fp32 dot product,
(r + 2) 2^-24 (|W0| + |s| |B| @ |A|); that only matters where W0 and the delta nearly cancel.
The 99% exact requirement stays.
"""
import argparse
import json
import math
import re
import sys

import h5py
import numpy as np

import lsl_st

try:
    import crc32c as _crc32c  # Debian's python3-crc32c

    def crc(b):
        return _crc32c.crc32c(b)
except ImportError:  # pragma: no cover
    _T = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        _T.append(c)

    def crc(b):
        c = 0xFFFFFFFF
        for x in b:
            c = _T[(c ^ x) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF


def pick(pat, module, default):
    for k, v in pat.items():
        if re.match(rf"(.*\.)?({k})$", module):
            return v
    return default


def stored_bits(dtype, arr):
    """h5py returns bf16 as float32 and f16 as float16: back to the raw little-endian bits."""
    if dtype == "BF16":
        a = np.asarray(arr, dtype=np.float32).view(np.uint32)
        assert np.all((a & 0xFFFF) == 0), "bf16 value not exactly representable"
        return (a >> 16).astype(np.uint16)
    if dtype == "F16":
        return np.asarray(arr, dtype=np.float16).view(np.uint16)
    return np.asarray(arr).view(lsl_st.DTYPES[dtype][0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter")
    p.add_argument("--merged", required=True)
    p.add_argument("--fp32-accumulation", action="store_true")
    a = p.parse_args()
    base = lsl_st.read_checkpoint(a.base)
    mods, repl, cfg = {}, {}, None
    if a.adapter:
        cfg = json.load(open(f"{a.adapter}/adapter_config.json"))
        ad, _ = lsl_st.read(f"{a.adapter}/adapter_model.safetensors")
        kinds = [(r"\.lora_A\.weight$", "A"), (r"\.lora_B\.weight$", "B"), (r"\.lora_B\.bias$", "bias"),
                 (r"\.lora_embedding_A$", "EA"), (r"\.lora_embedding_B$", "EB"),
                 (r"\.lora_magnitude_vector(\.weight)?$", "mag")]
        for k, v in ad.items():
            rest = k[len("base_model.model."):]
            for rx, kind in kinds:
                m = re.search(rx, rest)
                if m:
                    mods.setdefault(rest[: m.start()], {})[kind] = v
                    break
            else:
                repl[rest.replace(".base_layer.", ".")] = v
    gpt2 = bool(cfg and cfg.get("fan_in_fan_out")) and \
        json.load(open(f"{a.base}/config.json")).get("model_type") == "gpt2"
    # What each output tensor must be: ("copy", dtype, bits) or ("ref", dtype, float64 values).
    want, fp32_bound = {}, {}
    for name, (dt, w0) in base.items():
        want[name] = ("copy", dt, w0)
    for name, (dt, arr) in repl.items():
        want[name] = ("copy", dt, arr)
    for module, f in mods.items():
        wname = module + ".weight"
        dt, w0 = repl.get(wname, base[wname])  # a replaced base layer is W0 (PEFT loads it first)
        emb = "EA" in f
        (adt, A), (bdt, B) = (f["EA"], f["EB"]) if emb else (f["A"], f["B"])
        r = A.shape[0]
        alpha = pick(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        if emb:
            # PEFT's Embedding merge rounds its delta to the weight dtype before adding it there
            # (fp32 sum, rounded).  The delta is evaluated in the factors' precision: fp32
            # factors keep product and scaling in fp32; low-precision ones are rounded to the
            # weight dtype, the product rounded to it, times scaling (fp32) rounded to it.
            rd = lambda x: lsl_st.to_f64(dt, lsl_st.from_f64(dt, x))
            if adt == "F32" and bdt == "F32":
                prod = (lsl_st.to_f64(bdt, B) @ lsl_st.to_f64(adt, A)).T.astype(np.float32)
                q = rd((prod * np.float32(s)).astype(np.float64))
            else:
                prod = rd(rd(lsl_st.to_f64(bdt, B)) @ rd(lsl_st.to_f64(adt, A))).T
                q = rd(prod.astype(np.float32) * np.float32(s))
            ref = rd(q.astype(np.float32) + lsl_st.to_f64(dt, w0).astype(np.float32))
        else:
            delta = lsl_st.to_f64(bdt, B) @ lsl_st.to_f64(adt, A)
            ref = lsl_st.to_f64(dt, w0) + s * (delta.T if gpt2 else delta)
            if a.fp32_accumulation and "mag" not in f:
                mag = np.abs(lsl_st.to_f64(bdt, B)) @ np.abs(lsl_st.to_f64(adt, A))
                fp32_bound[wname] = (r + 2) * 2.0**-24 * (np.abs(lsl_st.to_f64(dt, w0)) +
                                                          abs(s) * (mag.T if gpt2 else mag))
        if "mag" in f:
            mdt, mv = f["mag"]
            if gpt2:  # the norm of each output = each stored column, across all rows
                ref = ref * (lsl_st.to_f64(mdt, mv) / np.linalg.norm(ref, axis=0))[None, :]
            else:
                ref = (lsl_st.to_f64(mdt, mv) / np.linalg.norm(ref, axis=1))[:, None] * ref
        want[wname] = ("ref", dt, ref, r, s)
        if "bias" in f:
            bdt2, bv = f["bias"]
            bn = module + ".bias"
            dtb, b0 = base[bn]
            want[bn] = ("ref", dtb, lsl_st.to_f64(dtb, b0) + s * lsl_st.to_f64(bdt2, bv), 1, s)
    failures = []
    worst_ulp, exact_total, n_total, merged, within_bound = 0, 0, 0, 0, 0
    with h5py.File(a.merged, "r") as f:
        if int(f.attrs["loraslab_format_version"]) != 2:
            failures.append("loraslab_format_version != 2")
        for key in ("loraslab_version", "base_path"):
            if key not in f.attrs:
                failures.append(f"root attribute {key} missing")
        if a.adapter and json.loads(f.attrs["adapter_config_json"]) != cfg:
            failures.append("adapter_config_json attribute differs from the adapter's config")
        g = f["tensors"]
        if set(g.keys()) != set(base.keys()):
            failures.append(f"tensor set differs: missing {sorted(set(base) - set(g))[:5]}, "
                            f"extra {sorted(set(g) - set(base))[:5]}")
        for name, w in want.items():
            if name not in g:
                continue
            ds, dt = g[name], w[1]
            if ds.attrs["dtype"] != dt:
                failures.append(f"{name}: dtype attr {ds.attrs['dtype']} != {dt}")
                continue
            if ds.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
                failures.append(f"{name}: not contiguous")
            got = stored_bits(dt, ds[()])
            if int(ds.attrs["crc32c"]) != crc(np.ascontiguousarray(got).tobytes()):
                failures.append(f"{name}: crc32c attribute does not match the stored bytes")
            if w[0] == "copy":
                if "lora_rank" in ds.attrs:
                    failures.append(f"{name}: lora attributes on an untouched tensor")
                if got.shape != w[2].shape or not np.array_equal(got, w[2]):
                    failures.append(f"{name}: differs from its source (base or adapter)")
                continue
            merged += 1
            ref, r, s = w[2], w[3], w[4]
            expect = lsl_st.from_f64(dt, ref)
            d = np.abs(lsl_st.ordered(dt, got) - lsl_st.ordered(dt, expect))
            worst = int(d.max()) if d.size else 0
            exact = int((d == 0).sum())
            worst_ulp = max(worst_ulp, worst)
            exact_total += exact
            n_total += d.size
            if worst > 1:
                bad = d > 1
                if name in fp32_bound:
                    bad &= np.abs(lsl_st.to_f64(dt, got) - ref) > fp32_bound[name]
                    within_bound += int((d > 1).sum() - bad.sum())
                if bad.any():
                    i = np.unravel_index(int(np.where(bad, d, 0).argmax()), d.shape)
                    failures.append(f"{name}: {int(d[i])} ulp off at {i} (got {got[i]}, "
                                    f"want {expect[i]})")
            if d.size and exact < 0.99 * d.size:
                failures.append(f"{name}: only {exact}/{d.size} elements exact")
            if int(ds.attrs["lora_rank"]) != r or abs(float(ds.attrs["lora_scaling"]) - s) > 1e-12:
                failures.append(f"{name}: lora attributes r={ds.attrs['lora_rank']} "
                                f"scaling={ds.attrs['lora_scaling']}, want r={r} scaling={s}")
            if int(ds.attrs["lora_dora"]) != int(name[:-len(".weight")] in mods and "mag" in mods[name[:-len(".weight")]]):
                failures.append(f"{name}: lora_dora attribute wrong")
            if int(ds.attrs["lora_rslora"]) != int(bool(cfg.get("use_rslora"))):
                failures.append(f"{name}: lora_rslora attribute wrong")
    expected_merged = sum(1 for w in want.values() if w[0] == "ref")
    if merged != expected_merged:
        failures.append(f"{merged} merged tensors checked, {expected_merged} expected")
    pct = 100.0 * exact_total / n_total if n_total else 100.0
    extra = (f" ({within_bound} elements over 1 ulp within the fp32 accumulation bound)"
             if a.fp32_accumulation else "")
    print(f"check_merge: {len(base)} tensors, {merged} merged; worst {worst_ulp} ulp{extra}, "
          f"{pct:.3f}% exact; {len(failures)} failures")
    for m in failures[:20]:
        print("  FAIL", m)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
