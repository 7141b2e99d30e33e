#!/usr/bin/env bash
# Everything the GPU machine runs, in one call (device time is scarce):
#   build with CUDA against the kit's parallel HDF5; GPU tests (1 rank, and 4 ranks sharing the GPU
#   through the MPI gather path) and compute-sanitizer; the PEFT/transformers checks; the
#   benchmarks (kernel vs copy, in-job write vs raw MPI-IO on /dev/shm and local disk at 1 and 4
#   ranks, L = 8 and 16, and the PyTorch/PEFT peers); a short table last.
# Prepare once on the dev machine: ../shared/device/make-kit.sh; ci/make-device-extra.sh.
# Run: carry [".device-kit", ".device-extra"]; command: bash ci/device-test.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source .device-kit/env.sh
source .device-extra/env.sh
export OMPI_MCA_rmaps_base_oversubscribe=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/lsl-out}
mkdir -p "$OUT"
log() { echo "== $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
log build
cmake -S . -B build-gpu -DLSL_CUDA=ON -DLSL_WERROR=OFF -DLSL_PYTHON="$(command -v python3)" \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j16 >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | head -6
lsl=$PWD/build-gpu/loraslab
declare -a table
log "GPU tests"
(cd build-gpu && ctest -L gpu --output-on-failure 2>&1 | tee "$OUT/ctest-gpu.log" | tail -15)
grep -q "100% tests passed" "$OUT/ctest-gpu.log" && table+=("gpu writer tests (np 1, 4): PASS") ||
  table+=("gpu writer tests: FAIL")
log "compute-sanitizer"
compute-sanitizer --tool memcheck --print-limit 5 build-gpu/test_writer_gpu >"$OUT/sanitizer.log" 2>&1
tail -3 "$OUT/sanitizer.log"
grep -q "ERROR SUMMARY: 0 errors" "$OUT/sanitizer.log" && table+=("compute-sanitizer memcheck: 0 errors") ||
  table+=("compute-sanitizer memcheck: $(grep 'ERROR SUMMARY' "$OUT/sanitizer.log")")
log "CPU merge checks on this machine (1 variant each size)"
(cd build-gpu && LSL_PYTHON=$(command -v python3) ctest -R "cli.merge.np4|mpi.writer.np4" 2>&1 | tail -3)
log "PEFT and transformers checks"
python3 tests/gpu/check_hf.py "$lsl" /tmp/lsl-hf 2 >"$OUT/check_hf.log" 2>&1
grep -E '^\|' "$OUT/check_hf.log"; grep -E "Error|error" "$OUT/check_hf.log" | grep -v '^|' | head -5
table+=("$(grep '^check_hf:' "$OUT/check_hf.log")")
log "kernel benchmark"
k=$(build-gpu/bench_gpu kernel 2>&1 | tee -a "$OUT/bench.log" | grep '^kernel:')
echo "$k"; table+=("$k")
log "write benchmark"
for d in /dev/shm /tmp; do
  for np in 1 4; do
    for L in 8 16; do
      [ $d = /tmp ] && [ $L = 16 ] && continue # local disk: L=8 only, to fit the time limit
      r=$(mpiexec -n $np build-gpu/bench_gpu write $d $L 2>&1 | tee -a "$OUT/bench.log" | grep '^write:')
      echo "$r"; table+=("$r")
    done
  done
done
log "peers"
for d in /dev/shm; do
  for p in recipe peft; do
    r=$(python3 tests/bench/bench_peers.py $d 8 $p 2>&1 | tee -a "$OUT/bench.log" | grep RESULT)
    echo "$r"; table+=("$r")
  done
done
echo; echo "== summary"
printf '%s\n' "${table[@]}" | tee "$OUT/summary.txt"
