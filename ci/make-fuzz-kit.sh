#!/usr/bin/env bash
# Packs one fuzz target built by ci/fuzz.sh (ASan + UBSan + libFuzzer) with the shared libraries
# it loads from this Debian machine (HDF5 1.10.8, MPICH, OpenBLAS and their dependencies; not
# glibc or libstdc++, which a newer distribution provides) and its corpus and seeds, so a machine
# with more cores runs the same binary on the same libraries.  Carry the archive to the device
# machine and run, there:
#   tar xJf fuzzkit.tar.xz -C /tmp && cd /tmp/fuzzkit &&
#   LD_LIBRARY_PATH=$PWD/lib ASAN_OPTIONS=detect_leaks=0 ./fuzz_h5 -jobs=16 -workers=16 \
#     -max_total_time=420 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
#     -artifact_prefix=$OUT/findings/ corpus seeds
# then add up stat::number_of_executed_units over fuzz-*.log (NOTES.md has the figures).
#   ci/make-fuzz-kit.sh [TARGET] [ARCHIVE]     (defaults: h5, fuzzkit.tar.xz; ~20 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-h5}
archive=${2:-fuzzkit.tar.xz}
bin=build-fuzz/fuzz_$target
[ -x "$bin" ] || { echo "make-fuzz-kit: $bin is missing (FUZZ_TARGETS=$target bash ci/fuzz.sh 1)"; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
kit=$stage/fuzzkit
mkdir -p "$kit/lib" "$kit/corpus" "$kit/seeds"
cp "$bin" "$kit/"
ldd "$bin" | awk '$3 ~ /^\// {print $3}' |
  grep -vE '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s)\.so' |
  while read -r lib; do cp -L "$lib" "$kit/lib/"; done
cp -r "build-fuzz/corpus/$target/." "$kit/corpus/" 2>/dev/null || true
cp -r "build-fuzz/seeds/$target/." "$kit/seeds/"
tar cJf "$archive" -C "$stage" fuzzkit
echo "make-fuzz-kit: $archive ($(du -h "$archive" | cut -f1)): $(ls "$kit/lib" | wc -l) libraries," \
  "$(ls "$kit/corpus" | wc -l) corpus inputs, $(ls "$kit/seeds" | wc -l) seeds"
