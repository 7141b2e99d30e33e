#!/usr/bin/env bash
# Host memory is a fixed staging budget, not a function of model size: merge the same generated
# model at two sizes (the second exactly twice the first: twice the layers and the vocabulary)
# with NP ranks and print each rank's peak RSS growth over its own baseline.
#   tests/bench/bench_rss.sh [NP] [WORKDIR]      (run after ci/build.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
np=${1:-4}
work=${2:-/tmp/lsl-bench-rss}
# Below every rank's slice of the large tensors, so both sizes fill the whole budget: what is
# left to differ is whatever grows with the model.
staging=${STAGING_MIB:-4}
py=/usr/bin/python3
rm -rf "$work" && mkdir -p "$work"
declare -A res
for scale in 1 2; do
  d=$work/s$scale
  $py tests/py/gen_model.py --base "$d/base" --adapter "$d/adapter" --layers $((4 * scale)) \
    --hidden 1024 --intermediate 2816 --heads 16 --kv-heads 4 --vocab $((16000 * scale)) --r 32 \
    --alpha 64 >/dev/null
  size=$(du -sb "$d/base" | cut -f1)
  line=$(mpiexec -n "$np" build/loraslab merge -q --stats --staging-mib "$staging" -b "$d/base" -a "$d/adapter" -o "$d/merged.h5" |
    grep '^stats:')
  res[$scale]="$size $line"
  rm -f "$d/merged.h5"
done
field() { tr ' ' '\n' <<<"$2" | grep -F "$1=" | cut -d= -f2; }
printf '\n%-8s %12s %9s %8s %16s %16s %16s\n' model "base bytes" seconds "GB/s" "rss base MiB" \
  "growth min MiB" "growth max MiB"
for scale in 1 2; do
  set -- ${res[$scale]}
  l="${res[$scale]}"
  printf '%-8s %12s %9s %8s %16s %16s %16s\n' "x$scale" "$1" "$(field seconds "$l")" \
    "$(field GB/s "$l")" "$(field rss_baseline_max_mib "$l")" "$(field rss_growth_min_mib "$l")" \
    "$(field rss_growth_max_mib "$l")"
done
g1=$(field rss_growth_max_mib "${res[1]}") g2=$(field rss_growth_max_mib "${res[2]}")
echo "np=$np: doubling the model changed the largest per-rank RSS growth by $(printf %.1f "$(echo "$g2 - $g1" | bc)") MiB" \
  "(staging budget $staging MiB per rank)"
