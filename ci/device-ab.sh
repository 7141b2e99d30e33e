#!/usr/bin/env bash
# A/B on the GPU machine: the write benchmark of an earlier commit and of this tree, built side by
# side, alternated, best of 3 rounds each (bench_gpu's rounds), AB_REPS alternations.
# Prepare here: mkdir -p .ab-old && git archive REV | tar -x -C .ab-old  (.ab-old is excluded);
# run: carry [".device-kit", ".device-extra", ".ab-old"]; command: bash ci/device-ab.sh
# AB_CONFIGS (DIR:RANKS:LAYERS ...) as device-test.sh's WRITE_CONFIGS.
set -uo pipefail
cd "$(dirname "$0")/.."
source .device-kit/env.sh; source .device-extra/env.sh
export OMPI_MCA_rmaps_base_oversubscribe=1
for t in old new; do
  src=.; [ $t = old ] && src=.ab-old
  cmake -S $src -B build-$t -DLSL_CUDA=ON -DLSL_WERROR=OFF -DLSL_TESTS=ON >build-$t.cfg.log 2>&1 || { tail -20 build-$t.cfg.log; exit 1; }
  cmake --build build-$t -j16 --target bench_gpu >build-$t.log 2>&1 || { tail -20 build-$t.log; exit 1; }
done
for cfg in ${AB_CONFIGS:-/dev/shm:1:8 /dev/shm:4:8}; do
  IFS=: read -r d np L <<<"$cfg"
  for rep in $(seq 1 ${AB_REPS:-2}); do
    for t in old new; do
      vis=(); [ "$np" -gt 1 ] && vis=(env CUDA_VISIBLE_DEVICES=0)
      "${vis[@]}" mpiexec -n "$np" build-$t/bench_gpu write "$d" "$L" 2>&1 | grep '^write:' | sed "s/^/$t rep$rep: /"
    done
  done
done
