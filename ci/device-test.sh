#!/usr/bin/env bash
# Everything the GPU machine runs (device time is scarce, so one call per mode):
#   build with CUDA against the kit's parallel HDF5; GPU tests (in-job writer with device
#   pointers, the gather path at 2 ranks, `merge --device cuda` against the float64 reference,
#   bad input; 1, 2 and 4 ranks, one GPU per rank where there are enough) and compute-sanitizer;
#   benchmarks: merge kernel vs copy, offline merge GPU vs CPU; the PEFT/transformers checks;
#   in-job write vs raw MPI-IO on /dev/shm and local disk; the PyTorch/PEFT peers; the whole CLI
#   (merge --device cuda, convert, verify) on the example and a multi-GiB model.  A short table
#   last.
# Prepare once on the dev machine: ../shared/device/make-kit.sh; ci/make-device-extra.sh.
# Run: carry [".device-kit", ".device-extra"]; command: bash ci/device-test.sh [MODE]
#   quick: build, GPU tests, sanitizer, kernel and offline-merge benchmarks, PEFT checks;
#   bench: build, kernel and offline-merge benchmarks, in-job write and peer benchmarks;
#   multi: build, in-job write at 1 and 2 ranks (one GPU each) on /dev/shm and disk, the whole
#          CLI at the largest rank count (several GPUs);
#   full (default): everything (more than the device tool's 10 minutes a call).
#   torch: the PyTorch front end (tests/torch): one rank with NCCL on the GPU (device pointers),
#          then the CPU suite (gloo, 2-4 ranks, torchrun and mpiexec) on this machine's torch.
#   scale: the scale benchmark (tests/bench/bench_scale.py: loraslab.torch against the ceiling,
#          PEFT, DCP and the motivating report's recipe); SCALE=SHAPE:LAYERS[:ROWS] ... picks
#          runs (default qwen7b:8; qwen32b:64 fits one call in two halves of rows),
#          SCALE_MAX_SHARD the directory rows' shard size in bytes (default 5 GB), SCALE_DIR the
#          output directory (/dev/shm/lsl-scale).
# STEPS (words of: tests sm80 sanitizer kernel offline hf write peers pipeline torch scale)
# overrides the mode's; sm80 (not in any mode) builds for sm_80 PTX only and runs the GPU tests
# through the driver's JIT.
# TORCH_DEVICES (cuda cpu) narrows the torch step.
# GPU_TESTS (a ctest -R regex) narrows the GPU tests, e.g. GPU_TESTS='gpu.writer|gpu.merge.np1';
# WRITE_CONFIGS (DIR:RANKS:LAYERS ...) narrows the write benchmark (LSL_PROFILE=1 adds each
# loraslab run's phases; BENCH_ROUNDS, BENCH_STAGING_MIB, BENCH_BATCH, BENCH_STRIPE_MIB pass to
# bench_gpu; WRITE_PLAN_AB=1 runs each config with the I/O plan off, on, and cutting 1 MiB
# pieces, in alternating order); PIPELINE
# (RANKS:LAYERS) sets the CLI run's size (default: one rank per GPU, 2 layers).
set -uo pipefail
mode=${1:-full}
case $mode in
  quick) steps="tests sanitizer kernel offline hf torch" ;;
  bench) steps="kernel offline write peers" ;;
  multi) steps="write pipeline" ;;
  scale) steps="scale" ;;
  full) steps="tests sanitizer kernel offline hf write peers pipeline torch" ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac
steps=" ${STEPS:-$steps} "
want() { [[ $steps == *" $1 "* ]]; }
ngpu=$(nvidia-smi -L | grep -c '^GPU')
cd "$(dirname "$0")/.."
source .device-kit/env.sh
source .device-extra/env.sh
export OMPI_MCA_rmaps_base_oversubscribe=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/lsl-out}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
log() { echo "== $*"; }
table=()
# Each result reaches the summary file as it comes: a run cut by the time limit keeps them.
row() { table+=("$1"); echo "$1" >>"$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
log build
cmake -S . -B build-gpu -DLSL_CUDA=ON -DLSL_WERROR=OFF -DLSL_PYTHON="$(command -v python3)" \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j16 >"$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -40; exit 1; }
lsl=$PWD/build-gpu/loraslab

if want tests; then
  log "GPU tests"
  (cd build-gpu && ctest -L gpu ${GPU_TESTS:+-R "$GPU_TESTS"} --output-on-failure 2>&1 |
    tee "$OUT/ctest-gpu.log" | grep -E "Test #|tests passed")
  if grep -q "100% tests passed" "$OUT/ctest-gpu.log"; then
    row "gpu tests ($(grep -c 'Test #' "$OUT/ctest-gpu.log"): in-job writer, merge --device cuda, bad input): PASS"
  else
    row "gpu tests FAILED: $(grep -E '^\s+[0-9]+ - ' "$OUT/ctest-gpu.log" | tr -s ' \t' ' ' | tr '\n' ';')"
  fi
  grep -E '(ok|FAILED)' build-gpu/testout/gather_paths.txt 2>/dev/null | while read -r l; do row "gather: $l"; done
fi
if want sanitizer; then
  log "compute-sanitizer"
  for t in test_writer_gpu test_crc_gpu; do
    compute-sanitizer --tool memcheck --print-limit 5 build-gpu/$t >"$OUT/sanitizer-$t.log" 2>&1
    row "compute-sanitizer memcheck ($t): $(grep 'ERROR SUMMARY' "$OUT/sanitizer-$t.log")"
  done
fi

if want sm80; then
  # The A100's code path on this card: a build with sm_80 PTX only, compiled by the driver at
  # load (JIT), through the same GPU tests.
  log "GPU tests, sm_80 PTX only (JIT)"
  cmake -S . -B build-sm80 -DLSL_CUDA=ON -DLSL_WERROR=OFF -DCMAKE_CUDA_ARCHITECTURES=80-virtual \
    -DLSL_PYTHON="$(command -v python3)" >"$OUT/configure-sm80.log" 2>&1 &&
    cmake --build build-sm80 -j16 >"$OUT/build-sm80.log" 2>&1 ||
    { row "sm80 build FAILED: $(grep -m3 error "$OUT/build-sm80.log" | tr '\n' ';')"; }
  if [ -x build-sm80/test_writer_gpu ]; then
    (cd build-sm80 && ctest -L gpu ${GPU_TESTS:+-R "$GPU_TESTS"} --output-on-failure 2>&1 |
      tee "$OUT/ctest-sm80.log" | grep -E "Test #|tests passed")
    cuobjdump --list-ptx build-sm80/libloraslab.so 2>/dev/null | head -3 >>"$OUT/ctest-sm80.log"
    if grep -q "100% tests passed" "$OUT/ctest-sm80.log"; then
      row "gpu tests, sm_80 PTX only ($(grep -c 'Test #' "$OUT/ctest-sm80.log")): PASS"
    else
      row "gpu tests, sm_80 PTX only, FAILED: $(grep -E '^\s+[0-9]+ - ' "$OUT/ctest-sm80.log" | tr -s ' \t' ' ' | tr '\n' ';')"
    fi
  fi
fi
if want kernel; then
  log "kernel benchmark"
  row "$(build-gpu/bench_gpu kernel 2>&1 | tee -a "$OUT/bench.log" | grep '^kernel:')"
fi
if want offline; then
  log "offline merge benchmark (files on /dev/shm)"
  bash tests/bench/bench_offline.sh "$lsl" /dev/shm/lsl-offline 1 2>&1 | tee -a "$OUT/bench.log" |
    grep '^offline:' >"$OUT/offline.txt"
  while read -r l; do row "$l"; done <"$OUT/offline.txt"
fi
if want hf; then
  log "PEFT and transformers checks"
  python3 tests/gpu/check_hf.py "$lsl" /tmp/lsl-hf 2 >"$OUT/check_hf.log" 2>&1
  grep -E '^\|' "$OUT/check_hf.log"
  row "$(grep '^check_hf:' "$OUT/check_hf.log" || echo "check_hf: did not finish")"
fi
if want torch; then
  log "PyTorch front end: GPU (1 rank, NCCL), then CPU (gloo, 2-4 ranks)"
  for dev in ${TORCH_DEVICES:-cuda cpu}; do
    LSL_TEST_DEVICE=$dev LSL_TESTOUTDIR=$PWD/build-gpu/testout MPIEXEC=mpiexec \
      bash tests/torch/torch_tests.sh "$PWD/build-gpu" >"$OUT/torch-$dev.log" 2>&1
    grep -E '^(ok|FAIL)' "$OUT/torch-$dev.log" | while read -r l; do row "torch $dev: $l"; done
    row "torch $dev: $(tail -1 "$OUT/torch-$dev.log")"
  done
fi
if want write; then
  log "write benchmark"
  # 4 ranks on one GPU: CUDA_VISIBLE_DEVICES=0 (the GPU-path issue's shared-GPU rows).
  def="/dev/shm:1:8 /dev/shm:4:8 /dev/shm:1:16 /dev/shm:4:16 /tmp:1:8 /tmp:4:8"
  [ "$mode" = multi ] && def="/dev/shm:1:8 /dev/shm:$ngpu:8 /tmp:1:8 /tmp:$ngpu:8"
  # WRITE_PLAN_AB=1: each config with the I/O plan off (LSL_IOPLAN=off), on, and on with pieces
  # cut at 1 MiB (BENCH_STRIPE_MIB=1), twice each in alternating order, in the same call.
  variants="on"
  [ "${WRITE_PLAN_AB:-0}" = 1 ] && variants="off on cut1 cut1 on off"
  for cfg in ${WRITE_CONFIGS:-$def}; do
    IFS=: read -r d np L <<<"$cfg"
    vis=(); [ "$np" -gt "$ngpu" ] && vis=(env CUDA_VISIBLE_DEVICES=0)
    for v in $variants; do
      envs=()
      [ "$v" = off ] && envs=(LSL_IOPLAN=off)
      [ "$v" = cut1 ] && envs=(BENCH_STRIPE_MIB=1)
      env "${envs[@]}" "${vis[@]}" mpiexec -n "$np" build-gpu/bench_gpu write "$d" "$L" \
        >"$OUT/write.log" 2>&1
      cat "$OUT/write.log" >>"$OUT/bench.log"
      row "$(grep '^write:' "$OUT/write.log" || { echo "write: np=$np L=$L $d ($v): FAILED"; tail -3 "$OUT/write.log"; })"
      # with LSL_PROFILE=1: where each loraslab round's time went
      grep '^loraslab: profile' "$OUT/write.log" | while read -r l; do row "  $l"; done
    done
  done
fi
if want peers; then
  log "peers"
  for p in recipe peft; do
    row "$(CUDA_VISIBLE_DEVICES=0 python3 tests/bench/bench_peers.py /dev/shm 8 $p 2>&1 |
      tee -a "$OUT/bench.log" | grep RESULT)"
  done
fi
if want scale; then
  # SCALE: SHAPE:LAYERS[:ROW,ROW...] ... (tests/bench/bench_scale.py; default all six rows)
  sdir=${SCALE_DIR:-/dev/shm/lsl-scale}
  log "scale benchmark into $sdir ($(df -h --output=size,avail "$(dirname "$sdir")" | tail -1))"
  for cfg in ${SCALE:-qwen7b:8}; do
    IFS=: read -r shp L rows <<<"$cfg"
    LSL_PROFILE=1 PYTHONPATH=$PWD/python LORASLAB_LIBRARY=$PWD/build-gpu/libloraslab.so.0 \
      python3 tests/bench/bench_scale.py --shape "$shp" --layers "$L" --out "$sdir" --lsl "$lsl" \
      ${rows:+--rows "$rows"} ${SCALE_MAX_SHARD:+--max-shard "$SCALE_MAX_SHARD"} \
      --json "$OUT/scale.jsonl" >"$OUT/scale-$shp-$L.log" 2>&1
    grep -E '^(\||ratio|convert:)' "$OUT/scale-$shp-$L.log" | while read -r l; do row "scale $shp x$L: $l"; done
    for f in "$sdir"/*.log; do # where loraslab's time went, and why a row failed
      [ -f "$f" ] || continue
      grep -h '^loraslab: profile' "$f" | while read -r l; do row "  $(basename "$f" .log): $l"; done
      { echo "== $f"; tail -15 "$f"; } >>"$OUT/scale-rows.log"
      rm -f "$f"
    done
  done
fi
if want pipeline; then
  IFS=: read -r pnp pL <<<"${PIPELINE:-$ngpu:2}"
  log "the whole CLI at $pnp ranks, $pL layers"
  bash tests/gpu/pipeline.sh "$lsl" /dev/shm/lsl-pipeline "$pnp" "$pL" 2>&1 | tee "$OUT/pipeline.log" |
    grep '^pipeline:' | while read -r l; do row "$l"; done
fi
echo; echo "== summary"
cat "$OUT/summary.txt"
