#!/usr/bin/env bash
# Seed corpora for the fuzz targets, in OUT/{safetensors,index,adapter,h5}: the checked-in JSON
# seeds (tests/fuzz/seeds/) plus small files made by the project's own generator and writer
# (deterministic: gen_model.py is seeded), so nothing binary is committed.
#   tests/fuzz/seeds.sh BUILD/loraslab OUT
set -euo pipefail
lsl=$1 out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
py=${LSL_PYTHON:-/usr/bin/python3}
export PYTHONPATH=$here/py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"/{safetensors,index,adapter,h5}
cp "$here"/fuzz/seeds/index/*.json "$out/index/"
cp "$here"/fuzz/seeds/adapter/*.json "$out/adapter/"
tiny="--hidden 16 --intermediate 32 --layers 1 --vocab 32 --heads 2 --kv-heads 1 --r 4"
i=0
for variant in "" "--dtype F16 --rslora --adapter-dtype BF16" "--dora" "--gpt2" \
  "--shard-kib 4 --tie"; do
  i=$((i + 1))
  # shellcheck disable=SC2086
  "$py" "$here/py/gen_model.py" --base "$work/b$i" --adapter "$work/a$i" $tiny $variant >/dev/null
  for f in "$work/b$i"/*.safetensors "$work/a$i"/*.safetensors; do
    cp "$f" "$out/safetensors/$i-$(basename "$f")"
  done
  cp "$work/a$i/adapter_config.json" "$out/adapter/gen-$i.json"
  [ -f "$work/b$i/model.safetensors.index.json" ] && cp "$work/b$i/model.safetensors.index.json" "$out/index/gen-$i.json"
  "$lsl" merge -q --align 1 -b "$work/b$i" -a "$work/a$i" -o "$out/h5/merged-$i.h5"
done
echo "seeds: $(find "$out" -type f | wc -l) files in $out"
