#!/usr/bin/env bash
# The whole CLI on the GPU machine at NP ranks (one GPU per rank where there are enough):
#   pipeline.sh BUILD/loraslab DIR NP LAYERS
# 1. the bundled example (ci/example.sh's model): merge --device cuda, the merged file against
#    the float64 reference (tests/py/check_merge.py), verify, convert, verify;
# 2. a generated Qwen2.5-7B-shaped model with LAYERS layers (bf16, fp32 r=32 PEFT adapter on all
#    seven projections, written by PEFT; multi-GiB): merge --device cuda, verify, convert, verify,
#    and the GPU merge against --device cpu at the same rank count (each tensor at least 99.99%
#    bit-identical; fp32 against fp64 accumulation parts only near cancellation).
# Prints a "pipeline:" line per step with its time; exit status 0 only if every step passed.
set -uo pipefail
lsl=$1 dir=$2 np=$3 L=$4
here=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$dir" && mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT # multi-GiB files on /dev/shm must not outlive a cut run
fail=0
step() { # NAME COMMAND...
  local name=$1 t0 t1 out
  shift
  t0=$(date +%s.%N)
  out=$("$@" 2>&1)
  local rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  if [ $rc -eq 0 ]; then
    echo "pipeline: np=$np $name: ok ($secs s)"
  else
    echo "pipeline: np=$np $name: FAILED (rc $rc, $secs s)"; tail -15 <<<"$out"; fail=1
  fi
  grep -E 'gathers:|merging on the GPU|device path|^stats:|^compare_tensors' <<<"$out" | sed "s/^/  /"
}
M() { mpiexec -n "$np" "$lsl" "$@"; }

ex=$dir/example
python3 "$here/tests/py/gen_model.py" --base "$ex/base" --adapter "$ex/adapter" --layers 4 \
  --hidden 256 --intermediate 704 --heads 8 --kv-heads 2 --vocab 4099 --r 16 --alpha 32 >/dev/null ||
  { echo "pipeline: example generation failed"; exit 1; }
step "example: merge --device cuda" M merge --device cuda -b "$ex/base" -a "$ex/adapter" -o "$ex/merged.h5"
step "example: against float64" python3 "$here/tests/py/check_merge.py" --fp32-accumulation \
  --base "$ex/base" --adapter "$ex/adapter" --merged "$ex/merged.h5"
step "example: verify merged.h5" M verify -q "$ex/merged.h5"
step "example: convert" M convert -q "$ex/merged.h5" "$ex/hf" --max-shard-size 1MB
step "example: verify converted" M verify -q "$ex/hf"

big=$dir/big
python3 "$here/tests/bench/bench_peers.py" "$big" "$L" save >/dev/null 2>&1 ||
  { echo "pipeline: model generation failed"; exit 1; }
echo "pipeline: np=$np generated model: $(du -sh "$big/base" | cut -f1) base, $(du -sh "$big/adapter" | cut -f1) adapter ($L layers)"
step "big: merge --device cuda" M merge --device cuda --stats -b "$big/base" -a "$big/adapter" -o "$big/merged-cuda.h5"
step "big: merge --device cpu" env OPENBLAS_NUM_THREADS=$(($(nproc) / np)) mpiexec -n "$np" \
  "$lsl" merge --device cpu -q -b "$big/base" -a "$big/adapter" -o "$big/merged-cpu.h5"
step "big: verify merged.h5" M verify -q "$big/merged-cuda.h5"
step "big: convert" M convert --stats -q "$big/merged-cuda.h5" "$big/hf"
step "big: verify converted" M verify -q "$big/hf"
# Compared as safetensors: numpy maps those directly (h5py converts bf16 datasets slowly).
M convert -q "$big/merged-cpu.h5" "$big/hf-cpu" >/dev/null 2>&1
step "big: cuda vs cpu, each tensor >= 99.99% bit-identical" python3 \
  "$here/tests/py/compare_tensors.py" "$big/hf-cpu" "$big/hf" --ulp 1 --min-identical 99.99
rm -rf "$dir"
exit $fail
