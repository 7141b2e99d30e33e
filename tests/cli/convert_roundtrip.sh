#!/usr/bin/env bash
# import -> convert and merge -> convert at NP ranks and several shard sizes (one smaller than the
# largest tensor, which then gets a shard of its own): every tensor bit-identical, every shard
# obeying the safetensors writer rules, verify passing on the .h5 and on the directory, the
# checksums.json values matching an independent CRC-32C; then corruption is caught.
#   convert_roundtrip.sh BUILD/loraslab NP [BUILD/jobs_cb]
# With jobs_cb (tests/mpi/jobs_cb.c), import, convert and verify also run over a callback
# communicator and must give the same bytes as the MPI path.
set -uo pipefail
lsl=$1 np=$2 jobs_cb=${3:-}
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/convert-np$np
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=$here/py
source "${BASH_SOURCE%/*}/../lib/harness.sh"
no() { not_ok "$1"; }
run() { "$mpiexec" -n "$np" "$lsl" "$@"; }

"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --shard-kib 96 \
  --hidden 96 --intermediate 224 --vocab 771 --seed 11 >/dev/null
run import -q "$out/base" "$out/imported.h5" && ok "import (directory, positional)" || no import
run merge -q -b "$out/base" -a "$out/adapter" -o "$out/merged.h5" || no merge
# largest tensor: embed/lm_head 771 x 96 bf16 = 148 KB; 100KB gives it a shard of its own
for size in 5GB 100KB 60KiB 0.3MB; do
  for src in imported merged; do
    d=$out/$src-$size
    if run convert -q --max-shard-size "$size" "$out/$src.h5" "$d" &&
       "$py" "$here/py/compare_tensors.py" "$out/$src.h5" "$d" >/dev/null &&
       "$py" "$here/py/check_safetensors.py" "$d"/*.safetensors >/dev/null &&
       run verify -q "$d"; then
      ok "$src -> convert --max-shard-size $size ($(ls "$d" | grep -c safetensors$) shards)"
    else
      no "$src -> convert --max-shard-size $size"
    fi
  done
done
if [ -n "$jobs_cb" ]; then
  cb() { "$mpiexec" -n "$np" "$jobs_cb" "$@"; }
  if cb merge "$out/base" - "$out/imported-cb.h5" && cmp "$out/imported.h5" "$out/imported-cb.h5" &&
     cb convert "$out/merged.h5" "$out/merged-cb" && diff -r "$out/merged-5GB" "$out/merged-cb" &&
     cb verify "$out/merged-cb" && cb verify "$out/imported-cb.h5"; then
    ok "import, convert, verify over callbacks: the same bytes as over MPI"
  else
    no "import, convert, verify over callbacks"
  fi
fi
# Round trip to the original: import -> convert reproduces the base checkpoint bit for bit.
"$py" "$here/py/compare_tensors.py" "$out/base" "$out/imported-100KB" >/dev/null &&
  ok "import -> convert equals the original checkpoint" || no "round trip to the original"
# A single .safetensors file imports too.
run import -q "$out/imported-5GB/model.safetensors" "$out/single.h5" &&
  "$py" "$here/py/compare_tensors.py" "$out/single.h5" "$out/base" >/dev/null &&
  ok "import of one .safetensors file" || no "import of one .safetensors file"
# Index, config and checksums.
"$py" - "$out/merged-100KB" <<'PY' && ok "index, config.json, checksums.json" || no "index/config/checksums"
import base64, json, os, sys, crc32c
d = sys.argv[1]
idx = json.load(open(f"{d}/model.safetensors.index.json"))
shards = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
assert set(idx["weight_map"].values()) == set(shards), "weight_map names other files"
assert all(s.startswith("model-") and s.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
import lsl_st
tot = sum(a.nbytes for _, a in lsl_st.read_checkpoint(d).values())
assert idx["metadata"]["total_size"] == tot, (idx["metadata"], tot)
assert json.load(open(f"{d}/config.json"))["model_type"] == "qwen2"
sums = json.load(open(f"{d}/checksums.json"))["files"]
for name, b64 in sums.items():
    c = crc32c.crc32c(open(f"{d}/{name}", "rb").read())
    assert base64.b64encode(c.to_bytes(4, "big")).decode() == b64, name
assert set(sums) >= set(shards) | {"config.json", "loraslab.json", "model.safetensors.index.json"}
prov = json.load(open(f"{d}/loraslab.json"))
assert prov["adapter_config"]["peft_type"] == "LORA"
PY
# Shards follow huggingface_hub's split_state_dict_into_shards_factory over the file's order.
"$lsl" inspect --json "$out/merged.h5" >"$out/merged.json"
"$py" - "$out/merged.json" "$out/merged-100KB" 100000 <<'PY' && ok "split matches huggingface_hub" || no "split order"
import json, sys
doc, d, limit = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
shards, cur, size = [], {}, 0
for t in doc["tensors"]:
    n = t["nbytes"]
    if n > limit:
        shards.append({t["name"]}); continue
    if size + n > limit:
        shards.append(cur); cur, size = {}, 0
    cur[t["name"]] = 1; size += n
if cur: shards.append(cur)
want = {name: f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i, s in enumerate(shards) for name in s}
got = json.load(open(f"{d}/model.safetensors.index.json"))["weight_map"]
assert got == want, [(k, got.get(k), v) for k, v in want.items() if got.get(k) != v][:3]
PY
# Existing output directory is refused without --overwrite, replaced with it.
run convert -q "$out/merged.h5" "$out/merged-5GB" 2>"$out/exists.log"
[ $? -ne 0 ] && grep -q "not empty" "$out/exists.log" && ok "existing directory refused" || no "existing directory"
run convert -q --overwrite "$out/merged.h5" "$out/merged-5GB" && run verify -q "$out/merged-5GB" &&
  ok "--overwrite replaces it" || no "--overwrite"
# Corruption: one flipped byte in a tensor of the .h5 is caught by convert (naming the tensor,
# no output) and by verify; a flipped byte in a shard is caught by verify.
cp "$out/merged.h5" "$out/bad.h5"
"$py" - "$out/bad.h5" <<'PY'
import sys, h5py
p = sys.argv[1]
with h5py.File(p, "r") as f:
    off = f["tensors/model.layers.1.mlp.up_proj.weight"].id.get_offset()
with open(p, "r+b") as f:
    f.seek(off + 77); b = f.read(1); f.seek(off + 77); f.write(bytes([b[0] ^ 0x10]))
PY
run convert -q "$out/bad.h5" "$out/bad-out" 2>"$out/bad.log"
[ $? -ne 0 ] && grep -q "tensor \`model.layers.1.mlp.up_proj.weight\`: CRC-32C" "$out/bad.log" &&
  [ ! -e "$out/bad-out" ] && ! ls -a "$out" | grep lsl-tmp >/dev/null &&
  ok "convert refuses a corrupted tensor, leaves nothing" || { no "corrupted .h5 in convert"; cat "$out/bad.log"; }
run verify -q "$out/bad.h5" 2>"$out/badv.log"
[ $? -ne 0 ] && grep -q "up_proj.weight" "$out/badv.log" && ok "verify catches it in the .h5" || no "verify .h5"
cp -r "$out/merged-60KiB" "$out/badshard"
f=$(ls "$out/badshard"/model-00002-*.safetensors)
printf '\xff' | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") - 5)) conv=notrunc 2>/dev/null
run verify -q "$out/badshard" 2>"$out/badshard.log"
[ $? -ne 0 ] && grep -q "CRC-32C" "$out/badshard.log" && ok "verify catches a flipped byte in a shard" ||
  { no "verify shard"; cat "$out/badshard.log"; }
finish
