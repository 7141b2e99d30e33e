#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs the whole test suite: style check, the normal
# build's tests (unit, MPI at 1-4 ranks, CLI, external h5py checks), then the unit and MPI tests
# again under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh

echo "== clang-format check"
files=$(git ls-files '*.c' '*.h' '*.cu' 2>/dev/null || find src include tests -name '*.[ch]')
if ! clang-format --dry-run --Werror $files; then
  echo "clang-format: run 'clang-format -i' on the files above"; exit 1
fi
echo "== floors (docs/ARCHITECTURE.md)"
python3 ci/floors.py

echo "== build (warnings are errors)"
BUILD_DIR=build bash ci/build.sh -DLSL_WERROR=ON
echo "== tests"
(cd build && ctest -j"$(nproc)" -LE gpu --output-on-failure --timeout 900) | tee build/ctest.log

echo "== ASan + UBSan build: unit, MPI and CLI (2 ranks, bad input) tests"
BUILD_DIR=build-asan BUILD_TYPE=Debug bash ci/build.sh -DLSL_WERROR=ON -DLSL_SANITIZE=ON
# MPICH and UCX keep allocations until exit; leak reports are for our own unit tests only.  The
# CLI tests run the reader thread, the plan, the CPU merge and the I/O pool on real files.
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest -L unit --output-on-failure &&
  ASAN_OPTIONS=detect_leaks=0 ctest -j"$(nproc)" -L mpi -LE cli --output-on-failure --timeout 900 &&
  ASAN_OPTIONS=detect_leaks=0 ctest -R '^cli\.(merge|convert)\.np2$|^cli\.(bad_input|hostile|hfdir)$' \
    --output-on-failure --timeout 900) |
  tee build-asan/ctest.log
echo "== Release builds with gcc and clang, and a clang Debug build, warnings as errors"
# (gcc's Debug build is the ASan one above, with -Werror)
BUILD_DIR=build-rel-gcc BUILD_TYPE=Release bash ci/build.sh -DLSL_WERROR=ON -DLSL_CUDA=OFF >/dev/null
CC=clang BUILD_DIR=build-rel-clang BUILD_TYPE=Release bash ci/build.sh -DLSL_WERROR=ON \
  -DLSL_CUDA=OFF >/dev/null
CC=clang BUILD_DIR=build-dbg-clang BUILD_TYPE=Debug bash ci/build.sh -DLSL_WERROR=ON \
  -DLSL_CUDA=OFF -DLSL_TESTS=OFF >/dev/null
echo "builds: gcc Release, clang Release and Debug clean"

echo "== fuzz targets: a short run of each from its seed corpus"
bash ci/fuzz.sh 20
echo "== a second MPI (Open MPI) beside MPICH"
bash ci/two-mpis.sh

total=$(cat build/ctest.log build-asan/ctest.log build-2mpi.ctest.log | sed -n 's/.*tests \(passed\|failed\) out of \([0-9]*\).*/\2/p' |
  paste -sd+ | bc)
echo "ci: $total passed, 0 failed"
