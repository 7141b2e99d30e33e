#!/usr/bin/env bash
# loraslab.torch.save_merged on real PEFT models (tests/py/torch_save.py) under torchrun (gloo on
# the CPU: callbacks over torch.distributed, positional writes) at 2-4 ranks and under mpiexec
# (the MPI path), FSDP2 / DDP / no wrapper, the PEFT options the CLI merges; the torchrun and
# mpiexec files must be byte-identical; FSDP1 (also HYBRID_SHARD) writes the same bytes as
# FSDP2.  Then the layout unit tests.
#   torch_tests.sh BUILD_DIR
# LSL_TEST_DEVICE=cuda runs the GPU variants instead (one rank, NCCL; see ci/device-test.sh).
set -uo pipefail
build=$1
here=$(cd "$(dirname "$0")/.." && pwd)
py=${LSL_TORCH_PYTHON:-python3}
mpiexec=${MPIEXEC:-mpiexec}
out=${LSL_TESTOUTDIR:-/tmp}/torch
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=$here/../python LORASLAB_LIBRARY=$build/libloraslab.so.0 PYTHONWARNINGS=ignore
pass=0 fail=0
if ! "$py" -c "import torch, peft, transformers, safetensors" 2>"$out/import.log"; then
  echo "FAIL - $py cannot import torch, peft, transformers, safetensors (ci/install-deps.sh):"
  cat "$out/import.log"; exit 1
fi
port=$((29500 + RANDOM % 400))

run() { # NAME LAUNCH NP ARGS...
  local name=$1 how=$2 np=$3
  shift 3
  local d=$out/$name
  mkdir -p "$d"
  port=$((port + 1))
  if [ "$how" = torchrun ]; then
    "$py" -m torch.distributed.run --nproc-per-node "$np" --master-port "$port" \
      "$here/py/torch_save.py" --out "$d" "$@" >"$d/log" 2>&1
  else
    LSL_TEST_PORT=$port "$mpiexec" -n "$np" "$py" "$here/py/torch_save.py" --out "$d" "$@" \
      >"$d/log" 2>&1
  fi
  if [ $? -eq 0 ] && grep -q "^PASSED" "$d/log"; then
    echo "ok - $name: $(grep -h '^torch_save:' "$d/log" || echo refused as expected)"
    pass=$((pass + 1))
  else
    echo "FAIL - $name"; grep -E "FAIL|Error|error" "$d/log" | head -20; fail=$((fail + 1))
  fi
}

if [ "${LSL_TEST_DEVICE:-cpu}" = cuda ]; then
  run gpu-fsdp2-qwen2 torchrun 1
  run gpu-ddp-gpt2 torchrun 1 --wrap ddp --model gpt2 --lora-bias
  run gpu-none-qwen2 torchrun 1 --wrap none --rslora --modules-to-save --second-adapter
  run gpu-fsdp1-qwen2 torchrun 1 --wrap fsdp1
  # DoRA (by rows; down the columns for GPT-2's Conv1D) and LoRA on embeddings from GPU tensors:
  # merged on the CPU from chunks copied down (no kernel for their formulas)
  run gpu-fsdp2-qwen2-dora torchrun 1 --dora
  run gpu-fsdp2-gpt2-dora torchrun 1 --model gpt2 --dora
  run gpu-fsdp2-qwen2-embed-mts torchrun 1 --embed --modules-to-save --lora-r 2
  run gpu-fsdp1-qwen2-dora torchrun 1 --wrap fsdp1 --dora
  # CPUOffload: the shards live in host memory while the step runs on the GPU
  run gpu-fsdp1-cpu-offload-step torchrun 1 --wrap fsdp1 --cpu-offload --step
  # FSDP1's element-range puts of device pointers merge with the same kernel as FSDP2's rows
  if cmp -s "$out/gpu-fsdp2-qwen2/merged.h5" "$out/gpu-fsdp1-qwen2/merged.h5"; then
    echo "ok - GPU FSDP1 and FSDP2 files byte-identical"; pass=$((pass + 1))
  else
    echo "FAIL - GPU FSDP1 and FSDP2 files differ"; fail=$((fail + 1))
  fi
else
  run fsdp2-qwen2-np2 torchrun 2
  run fsdp2-qwen2-np4-r-below-world torchrun 4 --lora-r 3
  run fsdp2-qwen2-np2-mpiexec mpiexec 2
  if cmp -s "$out/fsdp2-qwen2-np2/merged.h5" "$out/fsdp2-qwen2-np2-mpiexec/merged.h5"; then
    echo "ok - torchrun and mpiexec files byte-identical"; pass=$((pass + 1))
  else
    echo "FAIL - torchrun and mpiexec files differ"; fail=$((fail + 1))
  fi
  run fsdp2-gpt2-dora-np3 torchrun 3 --model gpt2 --dora
  run fsdp2-hsdp-gpt2-dora-np4 torchrun 4 --hsdp --model gpt2 --dora
  run fsdp2-qwen2-dora-np3 torchrun 3 --dora
  run fsdp2-qwen2-embed-mts-np3 torchrun 3 --embed --modules-to-save --lora-r 2
  # DoRA on an embedding: refused by name on every rank, as `loraslab merge` refuses it
  run fsdp2-qwen2-embed-dora-refused-np2 torchrun 2 --embed --dora --expect-refusal
  run ddp-gpt2-lora-bias-np2 torchrun 2 --wrap ddp --model gpt2 --lora-bias --stripe-mib 1
  run none-qwen2-options-np2 torchrun 2 --wrap none --rslora --modules-to-save --embed --tie \
    --second-adapter --adapter mine
  run fsdp1-qwen2-np2 torchrun 2 --wrap fsdp1
  if cmp -s "$out/fsdp2-qwen2-np2/merged.h5" "$out/fsdp1-qwen2-np2/merged.h5"; then
    echo "ok - FSDP1 and FSDP2 files byte-identical"; pass=$((pass + 1))
  else
    echo "FAIL - FSDP1 and FSDP2 files differ"; fail=$((fail + 1))
  fi
  run fsdp1-gpt2-uop-lora-bias-np3 torchrun 3 --wrap fsdp1 --use-orig-params --model gpt2 \
    --lora-bias
  run fsdp1-qwen2-mts-rslora-np4 torchrun 4 --wrap fsdp1 --modules-to-save --rslora --lora-r 3
  # DoRA by rows on pieces split mid-row: the shared rows' norms summed across ranks
  run fsdp1-dora-mid-row-np2 torchrun 2 --wrap fsdp1 --dora
  run fsdp1-dora-mid-row-np3 torchrun 3 --wrap fsdp1 --dora --lora-r 3
  # fan_in_fan_out DoRA (GPT-2 Conv1D) on pieces split mid-row: column norms from own elements
  run fsdp1-gpt2-dora-mid-row-np2 torchrun 2 --wrap fsdp1 --model gpt2 --dora
  run fsdp1-gpt2-dora-mid-row-np3 torchrun 3 --wrap fsdp1 --model gpt2 --dora --lora-r 3
  # HYBRID_SHARD (2 replicas x 2 shards): replica 0's shard group writes; the same bytes
  run fsdp1-hybrid-qwen2-np4 torchrun 4 --wrap fsdp1 --hsdp
  if cmp -s "$out/fsdp2-qwen2-np2/merged.h5" "$out/fsdp1-hybrid-qwen2-np4/merged.h5"; then
    echo "ok - FSDP1 HYBRID_SHARD and FSDP2 files byte-identical"; pass=$((pass + 1))
  else
    echo "FAIL - FSDP1 HYBRID_SHARD and FSDP2 files differ"; fail=$((fail + 1))
  fi
  # after a forward and backward (the state a training job saves in), with MixedPrecision
  run fsdp2-mixed-precision-step-np2 torchrun 2 --mixed-precision --step
  run fsdp1-uop-step-np2 torchrun 2 --wrap fsdp1 --use-orig-params --step
  run fsdp1-mixed-precision-np3 torchrun 3 --wrap fsdp1 --mixed-precision
  # CPUOffload's configuration (without a step: its forward needs an accelerator)
  run fsdp1-cpu-offload-np3 torchrun 3 --wrap fsdp1 --cpu-offload
fi
if "$py" "$here/py/test_torch_layout.py" >"$out/unit.log" 2>&1; then
  echo "ok - layout and launch unit tests ($(grep -c ' ok$' "$out/unit.log" || true) passed)"
  pass=$((pass + 1))
else
  echo "FAIL - layout and launch unit tests"; cat "$out/unit.log"; fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
