#!/usr/bin/env bash
# Bad input to `loraslab merge`: every case must exit non-zero, print a message naming the
# problem, and leave nothing at the output path (nor a temporary file beside it).
#   bad_input.sh BUILD/loraslab
# LSL_MERGE_ARGS adds merge options to every case (the GPU tests pass --device cuda).
set -uo pipefail
lsl=$1
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/bad-input${LSL_MERGE_ARGS:+-gpu}
rm -rf "$out" && mkdir -p "$out"
source "${BASH_SOURCE%/*}/../lib/harness.sh"
export PYTHONPATH=$here/py

gen() { "$py" "$here/py/gen_model.py" "$@" >/dev/null; }
# Edit a safetensors file: py_edit FILE 'python statements on `t` (dict name -> (dtype, arr))'
st_edit() {
  "$py" - "$1" "$2" <<'PY'
import sys, lsl_st, numpy as np
path, code = sys.argv[1], sys.argv[2]
raw, meta = lsl_st.read(path)
t = {k: (dt, a.copy(), list(a.shape)) for k, (dt, a) in raw.items()}
exec(code)
lsl_st.write(path, t, meta)
PY
}

# expect NAME NP EXPECTED_TEXT -- loraslab args...; output path is $out/NAME.h5
expect() {
  local name=$1 np=$2 text=$3
  shift 4
  local o=$out/$name.h5 log=$out/$name.log
  "$mpiexec" -n "$np" "$lsl" merge -q -o "$o" ${LSL_MERGE_ARGS:-} "$@" >"$log" 2>&1
  local rc=$?
  local why=""
  [ $rc -ne 0 ] || why="exit status 0"
  grep -qF -- "$text" "$log" || why="$why; message lacks '$text'"
  [ ! -e "$o" ] || why="$why; $o exists"
  ! ls -a "$out" | grep "lsl-tmp" >/dev/null || why="$why; temporary file left behind"
  if [ -z "$why" ]; then
    ok "$name: $(grep -m1 error "$log" | cut -c1-150)"
  else
    not_ok "$name: $why"; sed 's/^/    /' "$log" | head -5
  fi
  rm -f "$out"/.*lsl-tmp* 2>/dev/null
}

# A good pair to start from, and a fresh copy per case.
gen --base "$out/good/base" --adapter "$out/good/adapter"
fresh() { rm -rf "$out/$1" && cp -r "$out/good" "$out/$1"; }

fresh trunc; truncate -s -3 "$out/trunc/base/model.safetensors"
expect truncated-base 2 "file truncated" -- -b "$out/trunc/base" -a "$out/trunc/adapter"

fresh nulpad; "$py" - "$out/nulpad/base/model.safetensors" <<'PY'
import sys, struct
p = sys.argv[1]; d = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", d[:8])[0]
h = d[8:8 + n].rstrip(b" ")
d[8:8 + n] = h + b"\0" * (n - len(h))
if len(h) == n:  # no spaces to replace: grow the header by 8 NULs
    d[8:8 + n] = h + b"\0" * 8; d[:8] = struct.pack("<Q", n + 8)
open(p, "wb").write(d)
PY
expect nul-padded-header 3 "padded with NUL" -- -b "$out/nulpad/base" -a "$out/nulpad/adapter"

fresh overlap; "$py" - "$out/overlap/base/model.safetensors" <<'PY'
import sys, struct, json
p = sys.argv[1]; d = open(p, "rb").read(); n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n]); names = [k for k in h if k != "__metadata__"]
h[names[1]]["data_offsets"] = h[names[0]]["data_offsets"]
b = json.dumps(h, separators=(",", ":")).encode(); b += b" " * ((8 - len(b) % 8) % 8)
open(p, "wb").write(struct.pack("<Q", len(b)) + b + d[8 + n:])
PY
expect overlapping-offsets 1 "invalid offset" -- -b "$out/overlap/base" -a "$out/overlap/adapter"

gen --base "$out/mismatch/base" --hidden 32 --seed 9
gen --base "$out/mismatch/other" --adapter "$out/mismatch/adapter" --hidden 64
expect shape-mismatch 2 "base weight is [32, 160] but lora_A is [8, 160] and lora_B is [64, 8]" -- -b "$out/mismatch/base" -a "$out/mismatch/adapter"

gen --base "$out/sharded/base" --adapter "$out/sharded/adapter" --shard-kib 64
rm "$out/sharded/base/model-00002-of-"*.safetensors
expect missing-shard 4 "does not exist" -- -b "$out/sharded/base" -a "$out/sharded/adapter"

gen --base "$out/idx/base" --adapter "$out/idx/adapter" --shard-kib 64
"$py" - "$out/idx/base/model.safetensors.index.json" <<'PY'
import sys, json
p = sys.argv[1]; j = json.load(open(p)); j["weight_map"]["model.extra.weight"] = sorted(j["weight_map"].values())[0]
json.dump(j, open(p, "w"))
PY
expect missing-tensor 2 "shard lacks it" -- -b "$out/idx/base" -a "$out/idx/adapter"

fresh nomod; st_edit "$out/nomod/adapter/adapter_model.safetensors" \
  't = {k.replace("layers.1.mlp.up_proj", "layers.1.mlp.upx_proj"): v for k, v in t.items()}'
# selected by target_modules (else PEFT, and so loraslab, would not load it at all)
"$py" - "$out/nomod/adapter/adapter_config.json" <<'PY'
import sys, json
p = sys.argv[1]; j = json.load(open(p)); j["target_modules"].append("upx_proj")
json.dump(j, open(p, "w"))
PY
expect module-not-in-base 3 "has no tensor model.layers.1.mlp.upx_proj.weight" -- \
  -b "$out/nomod/base" -a "$out/nomod/adapter"

fresh halfpair; st_edit "$out/halfpair/adapter/adapter_model.safetensors" \
  'del t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]'
expect lora-a-without-b 2 "has lora_A but no lora_B" -- -b "$out/halfpair/base" -a "$out/halfpair/adapter"

fresh named; st_edit "$out/named/adapter/adapter_model.safetensors" \
  't = {k.replace("lora_A.weight", "lora_A.default.weight"): v for k, v in t.items()}'
expect adapter-name-in-key 1 "still carries an adapter name" -- -b "$out/named/base" -a "$out/named/adapter"

fresh rank; "$py" -c "
import json,sys; p='$out/rank/adapter/adapter_config.json'; j=json.load(open(p)); j['r']=4; json.dump(j,open(p,'w'))"
expect rank-differs-from-config 2 "says r=4" -- -b "$out/rank/base" -a "$out/rank/adapter"

# A config that promises tensors the file lacks (formats.md A8 and friends).
fresh dora; "$py" -c "
import json; p='$out/dora/adapter/adapter_config.json'; j=json.load(open(p)); j['use_dora']=True; json.dump(j,open(p,'w'))"
expect dora-without-magnitudes 2 "use_dora is set but module" -- -b "$out/dora/base" -a "$out/dora/adapter"
fresh lbias; "$py" -c "
import json; p='$out/lbias/adapter/adapter_config.json'; j=json.load(open(p)); j['lora_bias']=True; json.dump(j,open(p,'w'))"
expect lora-bias-without-tensors 2 "lora_bias is set but module" -- -b "$out/lbias/base" -a "$out/lbias/adapter"
# A9: lora_bias on a layer without a bias (Qwen2's o_proj).
gen --base "$out/nobias/base" --adapter "$out/nobias/adapter" --targets o_proj --lora-bias
expect lora-bias-on-biasless-layer 2 "because the base layer has no bias" -- -b "$out/nobias/base" -a "$out/nobias/adapter"
# A13: a modules_to_save copy with a resized vocabulary.
fresh resized; st_edit "$out/resized/adapter/adapter_model.safetensors" \
  't["base_model.model.lm_head.weight"] = ("BF16", np.zeros((300, 64), np.uint16), [300, 64])'
expect resized-vocab-replacement 2 "different shape from the base tensor" -- -b "$out/resized/base" -a "$out/resized/adapter"
# DoRA on embeddings (the norm would span ranks): refused by name.
gen --base "$out/demb/base" --adapter "$out/demb/adapter" --targets embed_tokens --dora
expect dora-on-embeddings 2 "DoRA on embeddings is not supported" -- -b "$out/demb/base" -a "$out/demb/adapter"
fresh vera; "$py" -c "
import json; p='$out/vera/adapter/adapter_config.json'; j=json.load(open(p)); j['peft_type']='VERA'; json.dump(j,open(p,'w'))"
expect refuse-vera 1 'peft_type "VERA" is not supported' -- -b "$out/vera/base" -a "$out/vera/adapter"

fresh noconfig; rm "$out/noconfig/adapter/adapter_config.json"
expect missing-adapter-config 2 "adapter_config.json" -- -b "$out/noconfig/base" -a "$out/noconfig/adapter"

fresh strict; "$py" -c "
import json; p='$out/strict/adapter/adapter_config.json'; j=json.load(open(p)); j['base_model_name_or_path']='Qwen/Qwen2.5-7B'; json.dump(j,open(p,'w'))"
expect strict-base-name 2 "--strict: base_model_name_or_path" -- \
  -b "$out/strict/base" -a "$out/strict/adapter" --strict

fresh quant; st_edit "$out/quant/base/model.safetensors" \
  'k="model.layers.0.self_attn.q_proj.weight"; dt,a,s=t[k]; t[k]=("I8", np.zeros(s, np.int8), s)'
expect quantized-target 2 "has dtype I8" -- -b "$out/quant/base" -a "$out/quant/adapter"

fresh inf; st_edit "$out/inf/adapter/adapter_model.safetensors" \
  'k="base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"; dt,a,s=t[k]; a[3,0]=np.inf; t[k]=(dt,a,s)'
expect nonfinite-merge 3 "produced NaN or Inf at row 3" -- -b "$out/inf/base" -a "$out/inf/adapter"

expect no-such-output-dir 2 "no/such/dir: output directory" -- -b "$out/good/base" -a "$out/good/adapter" \
  -o "$out/no/such/dir/x.h5"
expect unwritable-output-dir 2 "/proc: cannot create a file in the output directory" -- -b "$out/good/base" -a "$out/good/adapter" -o /proc/x.h5

# An existing output is never touched without --overwrite.
echo precious >"$out/exists.h5"
"$mpiexec" -n 2 "$lsl" merge -q -b "$out/good/base" -a "$out/good/adapter" -o "$out/exists.h5" \
  >"$out/exists.log" 2>&1
if [ $? -ne 0 ] && grep -q "already exists" "$out/exists.log" && [ "$(cat "$out/exists.h5")" = precious ]; then
  ok "existing-output-kept"
else
  not_ok "existing-output-kept"
fi

# --device cuda on a rank without a GPU (or a build without CUDA): an agreed error naming it, no
# output.  Where a GPU is visible the GPU merge itself is tested (gpu.merge.*).
if ! nvidia-smi -L >/dev/null 2>&1; then
  expect device-cuda-without-gpu 2 "GPU" -- --device cuda -b "$out/good/base" -a "$out/good/adapter"
fi

# Usage errors exit 2 with the command's help.
"$lsl" merge -b x >"$out/usage.log" 2>&1
if [ $? -eq 2 ] && grep -q "are required" "$out/usage.log" && grep -q "usage:" "$out/usage.log"; then
  ok "usage-error"
else
  not_ok "usage-error"
fi

finish
