#!/usr/bin/env bash
# loraslab merge at NP ranks on generated models covering the dtype combinations, a sharded base,
# tied embeddings, rsLoRA with rank/alpha patterns, more ranks than rows, multi-chunk staging,
# DoRA, LoRA biases, LoRA on embeddings, modules_to_save with trained biases, r = 32 with a large
# delta, and GPT-2 Conv1D layers with fan_in_fan_out; every output is checked by
# tests/py/check_merge.py (h5py + float64 numpy reference) and its `inspect --json` against the
# schema.
#   merge_variants.sh BUILD/loraslab NP [BUILD/jobs_cb]
# With jobs_cb (tests/mpi/jobs_cb.c), every variant is merged a second time over a callback
# communicator (callbacks calling MPI, data written with pwrite) and must give the same bytes.
# LSL_MERGE_ARGS adds merge options to every variant (the GPU tests pass --device cuda; then the
# check allows fp32 accumulation error where W0 and the delta nearly cancel, and the schema check,
# which does not depend on where the merge ran, is left to the CPU runs).
set -euo pipefail
lsl=$1 np=$2 jobs_cb=${3:-}
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/merge-np$np${LSL_MERGE_ARGS:+-gpu}
rm -rf "$out" && mkdir -p "$out"
source "${BASH_SOURCE%/*}/../lib/harness.sh"

# The merge over callbacks: the same bytes as the MPI-IO file.
same_over_callbacks() {
  local d=$1 mergeargs=$2 mib=""
  [[ "$mergeargs" =~ --staging-mib\ ([0-9]+) ]] && mib=${BASH_REMATCH[1]}
  "$mpiexec" -n "$np" "$jobs_cb" merge "$d/base" "$d/adapter" "$d/merged-cb.h5" $mib &&
    cmp "$d/merged.h5" "$d/merged-cb.h5" || { echo "  callbacks: the file differs from MPI-IO's"; return 1; }
}

variant() {
  local name=$1 mergeargs=$2
  shift 2
  local d=$out/$name
  "$py" "$here/py/gen_model.py" --base "$d/base" --adapter "$d/adapter" "$@"
  if "$mpiexec" -n "$np" "$lsl" merge -q -b "$d/base" -a "$d/adapter" -o "$d/merged.h5" $mergeargs ${LSL_MERGE_ARGS:-} &&
     "$py" "$here/py/check_merge.py" --base "$d/base" --adapter "$d/adapter" --merged "$d/merged.h5" \
       ${LSL_MERGE_ARGS:+--fp32-accumulation} &&
     { [ -n "${LSL_MERGE_ARGS:-}" ] || "$lsl" inspect --json "$d/merged.h5" | "$py" "$here/py/check_schema.py"; } &&
     { [ -z "$jobs_cb" ] || same_over_callbacks "$d" "$mergeargs"; }; then
    ok "$name (np=$np)"
  else
    not_ok "$name (np=$np)"
  fi
}

variant bf16-base-f32-lora "" --dtype BF16 --adapter-dtype F32
variant f16-base-bf16-lora "" --dtype F16 --adapter-dtype BF16 --seed 2
variant f32-base-f16-lora "" --dtype F32 --adapter-dtype F16 --seed 3
variant sharded-tied-rslora-patterns "" --shard-kib 64 --tie --rslora --r 6 \
  --rank-pattern '{"q_proj": 4, "layers.1.mlp.(up|down)_proj": 2}' \
  --alpha-pattern '{"model.layers.0.self_attn.v_proj": 7}' --targets q_proj,v_proj,up_proj,down_proj --seed 4
variant sharded-base "" --shard-kib 300 --hidden 128 --intermediate 512 --vocab 1031 --seed 5
variant fewer-rows-than-ranks "" --hidden 8 --heads 4 --kv-heads 2 --intermediate 12 --vocab 3 --r 2 --seed 6
variant multi-chunk-staging "--staging-mib 1" --hidden 256 --intermediate 1024 --vocab 999 --layers 1 --seed 7
variant dora "" --dora --seed 8
variant dora-rslora-f32-base "" --dora --rslora --dtype F32 --r 6 --seed 9
variant lora-bias "" --lora-bias --targets q_proj,k_proj,v_proj --seed 10
variant embedding-lora "" --targets embed_tokens,q_proj,down_proj --seed 11
variant modules-to-save-and-trained-bias "" --modules-to-save lm_head --trained-bias --seed 12
variant gpt2-conv1d-fan-in-fan-out "" --gpt2 --targets c_attn,c_proj,c_fc --lora-bias --seed 13
variant gpt2-dora-fan-in-fan-out "--staging-mib 1" --gpt2 --dora --hidden 256 --targets c_attn,c_fc --seed 14
# r = 32 with a delta larger than W0 on check_hf's shapes (on the GPU: two k-steps of the
# tensor-core kernel, a partial column tile at 352 and partial row blocks)
variant r32-large-delta "" --r 32 --alpha 64 --b-scale 0.1 --hidden 128 --intermediate 352 --seed 15
# The human table says what was merged (captured first: grep -q would cut the pipe).
table=$("$lsl" inspect "$out/bf16-base-f32-lora/merged.h5")
if grep -q "14 with a LoRA delta merged" <<<"$table"; then
  ok "inspect table"
else
  not_ok "inspect table"
fi
finish
