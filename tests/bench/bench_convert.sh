#!/usr/bin/env bash
# convert throughput against a plain copy of the same bytes on the same filesystem, in one run.
# Generates a bf16 Qwen2-shaped model of about SIZE_GB, imports it to HDF5, then times
#   cp FILE.h5 X; cp + fsync; loraslab convert (checksums verified); loraslab convert --no-verify
# each twice, alternating, and prints the medians and the ratios.
#   tests/bench/bench_convert.sh [NP] [WORKDIR] [LAYERS]     (run after ci/build.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
np=${1:-2}
work=${2:-/tmp/lsl-bench-convert}
layers=${3:-12}
lsl=$PWD/build/loraslab
rm -rf "$work" && mkdir -p "$work"
/usr/bin/python3 tests/py/gen_model.py --base "$work/base" --layers "$layers" --hidden 2048 \
  --intermediate 5632 --heads 16 --kv-heads 4 --vocab 32000 >/dev/null
mpiexec -n "$np" "$lsl" import -q "$work/base" "$work/in.h5"
bytes=$(stat -c %s "$work/in.h5")
now() { date +%s.%N; }
declare -A t
for round in 1 2; do
  rm -rf "$work/out" "$work/copy"
  s=$(now); cp "$work/in.h5" "$work/copy"; e=$(now); t[cp$round]=$(echo "$e - $s" | bc)
  rm -f "$work/copy"
  s=$(now); cp "$work/in.h5" "$work/copy"; sync "$work/copy"; e=$(now); t[cps$round]=$(echo "$e - $s" | bc)
  rm -f "$work/copy"
  s=$(now); mpiexec -n "$np" "$lsl" convert -q "$work/in.h5" "$work/out"; e=$(now); t[cv$round]=$(echo "$e - $s" | bc)
  rm -rf "$work/out"
  s=$(now); mpiexec -n "$np" "$lsl" convert -q --no-verify "$work/in.h5" "$work/out"; e=$(now)
  t[cn$round]=$(echo "$e - $s" | bc)
done
med() { echo "($1 + $2) / 2" | bc -l; }
cp_t=$(med ${t[cp1]} ${t[cp2]}) cps_t=$(med ${t[cps1]} ${t[cps2]})
cv_t=$(med ${t[cv1]} ${t[cv2]}) cn_t=$(med ${t[cn1]} ${t[cn2]})
gbs() { echo "$bytes / $1 / 1000000000" | bc -l; }
printf '\n%s bytes, %d ranks, filesystem %s\n' "$bytes" "$np" "$(stat -f -c %T "$work")"
printf '%-34s %9s %8s %14s %16s\n' what seconds GB/s "vs cp" "vs cp+fsync"
for k in cp cps cv cn; do
  v=${k}_t
  name=$([ $k = cp ] && echo "cp" || ([ $k = cps ] && echo "cp + fsync") ||
    ([ $k = cv ] && echo "loraslab convert (verify)") || echo "loraslab convert --no-verify")
  [ $k = cv ] && name="loraslab convert (CRC verified)"
  [ $k = cn ] && name="loraslab convert --no-verify"
  printf '%-34s %9.3f %8.3f %13.2fx %15.2fx\n' "$name" "${!v}" "$(gbs ${!v})" \
    "$(echo "$cp_t / ${!v}" | bc -l)" "$(echo "$cps_t / ${!v}" | bc -l)"
done
