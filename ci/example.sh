#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds loraslab, generates the bundled example (a small
# deterministic Qwen2-shaped bf16 checkpoint and a PEFT LoRA adapter on all seven projections),
# merges it with 4 MPI ranks into a Hugging Face directory and into an HDF5 archive, and shows
# what was written.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh
bash ci/build.sh
ex=example-out
rm -rf "$ex" && mkdir -p "$ex"
echo "== generating the example model into $ex/ (tests/py/gen_model.py)"
/usr/bin/python3 tests/py/gen_model.py --base "$ex/qwen2-tiny" --adapter "$ex/qwen2-tiny-lora" \
  --layers 4 --hidden 256 --intermediate 704 --heads 8 --kv-heads 2 --vocab 4099 --r 16 --alpha 32
ls -l "$ex/qwen2-tiny" "$ex/qwen2-tiny-lora"
echo "== mpiexec -n 4 build/loraslab merge -o $ex/merged (a safetensors directory)"
mpiexec -n 4 build/loraslab merge --base "$ex/qwen2-tiny" --adapter "$ex/qwen2-tiny-lora" \
  --output "$ex/merged" --max-shard-size 20MB --stats
ls -l "$ex/merged"
mpiexec -n 4 build/loraslab verify "$ex/merged"
echo "== mpiexec -n 4 build/loraslab merge -o $ex/merged.h5 (the HDF5 archive)"
mpiexec -n 4 build/loraslab merge --base "$ex/qwen2-tiny" --adapter "$ex/qwen2-tiny-lora" \
  --output "$ex/merged.h5" --stats
echo "== build/loraslab inspect $ex/merged.h5"
# through a file: `inspect | head` dies of SIGPIPE under pipefail once head has its lines
build/loraslab inspect "$ex/merged.h5" >"$ex/inspect.txt"
head -20 "$ex/inspect.txt"
echo "... ($(wc -l <"$ex/inspect.txt") lines in $ex/inspect.txt)"
echo "== independent check: h5py + numpy float64 reference"
/usr/bin/python3 tests/py/check_merge.py --base "$ex/qwen2-tiny" --adapter "$ex/qwen2-tiny-lora" \
  --merged "$ex/merged.h5"
echo "== the directory holds the archive's tensors, byte for byte"
PYTHONPATH=tests/py /usr/bin/python3 tests/py/compare_tensors.py "$ex/merged.h5" "$ex/merged"
