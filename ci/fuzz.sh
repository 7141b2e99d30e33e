#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang, ASan and UBSan into build-fuzz/, makes
# their seed corpora, and runs each for SECONDS (default 20) or RUNS executions; a crash, leak,
# sanitizer report or timeout fails it.  Prints each target's executions, coverage and corpus.
#   ci/fuzz.sh [SECONDS] [RUNS]        (CI: the default smoke run; benchmark: 600)
# FUZZ_TARGETS (words of: safetensors index adapter h5) picks targets.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
runs=${2:--1}
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' >"$probe/p.c"
if ! command -v clang >/dev/null || ! clang -fsanitize=fuzzer "$probe/p.c" -o "$probe/p" 2>/dev/null; then
  echo "fuzz: skipped (no clang with libFuzzer: apt-get install clang libclang-rt-14-dev)"
  exit 0
fi
CC=clang BUILD_DIR=build-fuzz BUILD_TYPE=RelWithDebInfo bash ci/build.sh -DLSL_FUZZ=ON \
  -DLSL_CUDA=OFF >build-fuzz.build.log 2>&1 || { tail -30 build-fuzz.build.log; exit 1; }
rm -rf build-fuzz/corpus build-fuzz/seeds build-fuzz/findings
# The seeds are written by the ordinary build's loraslab (the fuzz build's is instrumented).
lsl=build/loraslab
[ -x "$lsl" ] || lsl=build-fuzz/loraslab
bash tests/fuzz/seeds.sh "$lsl" build-fuzz/seeds >/dev/null
export TMPDIR=${TMPDIR:-/dev/shm}
status=0
for t in ${FUZZ_TARGETS:-safetensors index adapter h5}; do
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/findings/$t"
  log=build-fuzz/fuzz_$t.log
  # detect_leaks: MPICH and HDF5 keep their allocations until exit, not ours to report.
  if ASAN_OPTIONS=detect_leaks=0 "build-fuzz/fuzz_$t" -max_total_time="$secs" -runs="$runs" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/findings/$t/" \
    "build-fuzz/corpus/$t" "build-fuzz/seeds/$t" >"$log" 2>&1; then
    res=ok
  else
    res=FINDING
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1)
  echo "fuzz $t: $res, ${execs:-?} executions (${rate:-?}/s), ${cov:-cov: ?}, ${ft:-ft: ?}," \
    "corpus $(ls "build-fuzz/corpus/$t" | wc -l), findings $(ls "build-fuzz/findings/$t" | wc -l)"
  [ "$res" = ok ] || grep -m5 -E "ERROR|SUMMARY|runtime error" "$log" || true
done
exit $status
