#!/usr/bin/env bash
# Configure and build into BUILD_DIR (default build/).  Extra arguments go to cmake.
#   ci/build.sh [-DLSL_SANITIZE=ON ...]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@" >"$dir.configure.log" 2>&1 ||
  { cat "$dir.configure.log"; exit 1; }
grep -E "^-- (loraslab|CUDA)" "$dir.configure.log" || true
cmake --build "$dir" -j"$(nproc)"
