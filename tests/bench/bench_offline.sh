#!/usr/bin/env bash
# The offline merge from files, CPU against GPU, on the same model in the same run (GPU machine):
#   bench_offline.sh BUILD/loraslab DIR LAYERS
# writes a Qwen2.5-7B-shaped bf16 model with LAYERS layers and its fp32 r=32 PEFT adapter (all
# seven projections) under DIR, then times `loraslab merge --device cuda` at 1 and 4 ranks (4
# ranks share the one GPU) against `--device cpu` at 4 ranks, and prints seconds, GB/s, peak RSS
# growth per rank and the speed-up.  The GPU output is compared with the CPU output.
set -uo pipefail
lsl=$1 dir=$2 L=$3
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$dir"
python3 "$here/tests/bench/bench_peers.py" "$dir" "$L" save >/dev/null 2>&1 || { echo "offline: model generation failed"; exit 1; }
declare -A secs
run() { # NP DEVICE; one BLAS thread per core share (the CPU merge calls dgemm)
  local s
  s=$(OPENBLAS_NUM_THREADS=$(( $(nproc) / $1 )) mpiexec -n "$1" "$lsl" merge --device "$2" --stats -q --overwrite -b "$dir/base" \
        -a "$dir/adapter" -o "$dir/merged-$2.h5" | grep '^stats:') || { echo "offline: np=$1 device=$2 FAILED"; return 1; }
  secs[$1$2]=$(sed 's/.*seconds=\([0-9.]*\).*/\1/' <<<"$s")
  echo "offline: np=$1 device=$2 $s"
}
run 4 cpu
run 1 cuda
run 4 cuda
python3 "$here/tests/py/compare_tensors.py" "$dir/merged-cpu.h5" "$dir/merged-cuda.h5" --ulp 1 |
  tail -1 | sed "s/^/offline: cuda (np=4) vs cpu (np=4): /"
awk -v c="${secs[4cpu]:-0}" -v g1="${secs[1cuda]:-0}" -v g4="${secs[4cuda]:-0}" 'BEGIN {
  if (g1 > 0 && g4 > 0 && c > 0)
    printf "offline: merge --device cuda is %.1fx (1 rank) and %.1fx (4 ranks) the speed of --device cpu at 4 ranks\n", c / g1, c / g4 }'
rm -rf "$dir"
