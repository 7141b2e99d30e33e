#!/usr/bin/env bash
# The scale benchmark's harness on the CPU (tiny shapes, 2 layers, gloo, 100 kB shards so the
# directory rows write several files): every row, peers included, must complete, the loraslab rows must write the bytes the ceiling writes, and the
# converted tensor must read back equal.  The GPU run is ci/device-test.sh's scale step.
#   scale_smoke.sh BUILD_DIR
set -uo pipefail
build=$1
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/scale-smoke
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=$here/../python LORASLAB_LIBRARY=$build/libloraslab.so.0 PYTHONWARNINGS=ignore
python3 "$here/bench/bench_scale.py" --shape tiny --layers 2 --device cpu --out "$out/run" \
  --lsl "$build/loraslab" --floor-gib 1 --json "$out/rows.jsonl" \
  --max-shard 100000 \
  --rows ceiling,ceiling-k,loraslab-fsdp2,loraslab-fsdp1,loraslab-fsdp2-hf,loraslab-fsdp1-hf,peft,dcp,recipe,convert \
  | tee "$out/log"
python3 - "$out/rows.jsonl" <<'PY'
import json, sys
rows = {r["row"]: r for r in map(json.loads, open(sys.argv[1]))}
bad = [f"{k}: {r['status']}" for k, r in rows.items() if r["status"] != "completed"]
want = rows["ceiling"].get("bytes")  # the checkpoint's tensor bytes
for k in ("ceiling-k", "loraslab-fsdp2", "loraslab-fsdp1", "loraslab-fsdp2-hf",
          "loraslab-fsdp1-hf", "convert", "peft", "dcp", "recipe"):
    got = rows[k].get("bytes", 0)  # with headers (and HDF5 alignment gaps)
    if not want or got < want or want != rows[k].get("payload_bytes"):
        bad.append(f"{k}: {got} bytes on disk, the ceiling wrote {want}")
if rows["convert"].get("readback") != "equal" or rows["convert"].get("verify") != "passed":
    bad.append(f"convert: {rows['convert']}")
print("\n".join(bad) if bad else "scale smoke: every row completed, sizes and read-back agree")
sys.exit(1 if bad else 0)
PY
