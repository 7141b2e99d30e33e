#!/usr/bin/env bash
# loraslab.torch.save_merged on real PEFT models (tests/py/torch_save.py) under torchrun (gloo on
# the CPU: callbacks over torch.distributed, positional writes) at 2-4 ranks and under mpiexec
# (the MPI path), FSDP2 / DDP / no wrapper, the PEFT options the CLI merges; the torchrun and
# mpiexec files must be byte-identical; FSDP1 (also HYBRID_SHARD) writes the same bytes as
# FSDP2.  Then the layout unit tests.
#   torch_tests.sh BUILD_DIR
# LSL_TEST_DEVICE=cuda runs the GPU variants instead (one rank, NCCL; see ci/device-test.sh).
# LSL_TORCH_ONLY=REGEX runs only the cases whose names match (and the unit tests).
set -uo pipefail
build=$1
here=$(cd "$(dirname "$0")/.." && pwd)
py=${LSL_TORCH_PYTHON:-python3}
mpiexec=${MPIEXEC:-mpiexec}
out=${LSL_TESTOUTDIR:-/tmp}/torch
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=$here/../python LORASLAB_LIBRARY=$build/libloraslab.so.0 PYTHONWARNINGS=ignore
source "${BASH_SOURCE%/*}/../lib/harness.sh"
if ! "$py" -c "import torch, peft, transformers, safetensors" 2>"$out/import.log"; then
  echo "FAIL - $py cannot import torch, peft, transformers, safetensors (ci/install-deps.sh):"
  cat "$out/import.log"; exit 1
fi
port=$((29500 + RANDOM % 400))

# Every torch run is bounded: a hang fails the test instead of the whole suite.
cap=${LSL_TORCH_CAP:-300}
run() { # NAME LAUNCH NP ARGS...
  local name=$1 how=$2 np=$3
  shift 3
  local d=$out/$name
  [[ "$name" =~ ${LSL_TORCH_ONLY:-.} ]] || return 0
  mkdir -p "$d"
  port=$((port + 1))
  if [ "$how" = torchrun ]; then
    timeout -k 10 "$cap" "$py" -m torch.distributed.run --nproc-per-node "$np" \
      --master-port "$port" "$here/py/${script:-torch_save.py}" --out "$d" "$@" >"$d/log" 2>&1
  else
    LSL_TEST_PORT=$port timeout -k 10 "$cap" "$mpiexec" -n "$np" "$py" \
      "$here/py/${script:-torch_save.py}" --out "$d" "$@" >"$d/log" 2>&1
  fi
  if [ $? -eq 0 ] && grep -q "^PASSED" "$d/log"; then
    ok "$name: $(grep -h -m2 '^torch_\(save\|misuse\):' "$d/log" | cut -c1-200 ||
      echo refused as expected)"
  else
    not_ok "$name"; grep -E "FAIL|Error|error" "$d/log" | head -20
  fi
}

# Two runs wrote the same bytes: their HDF5 files, and the directories written in one pass.
same() { # WHAT RUN_A RUN_B
  [[ "$2" =~ ${LSL_TORCH_ONLY:-.} && "$3" =~ ${LSL_TORCH_ONLY:-.} ]] || return 0
  if cmp -s "$out/$2/merged.h5" "$out/$3/merged.h5" &&
     diff -r "$out/$2/direct" "$out/$3/direct" >/dev/null; then
    ok "$1: files and directories byte-identical"
  else
    not_ok "$1: the outputs differ"
  fi
}

# verl's own utilities (verl 0.9.1 from PyPI, in its own virtual environment: it pins
# transformers below 5.11), LSL_TORCH_SUITE=verl with LSL_TORCH_PYTHON that environment's python
# (tests/torch/verl_tests.sh): the report's FSDP1 wrapping and verl's FSDP2 placement.
if [ "${LSL_TORCH_SUITE:-main}" = verl ]; then
  "$py" -c "import verl; assert verl.__version__ == '0.9.1', verl.__version__" >"$out/verl.log" 2>&1 ||
    { not_ok "verl 0.9.1 is not importable by $py: $(tail -1 "$out/verl.log")"; finish; exit 1; }
  run verl-fsdp2-qwen2-np3 torchrun 3 --verl-utils
  run verl-fsdp2-qwen2-np4 torchrun 4 --verl-utils
  run verl-fsdp1-qwen2-np2 torchrun 2 --wrap fsdp1 --verl-utils
  run verl-fsdp1-qwen2-np3 torchrun 3 --wrap fsdp1 --verl-utils --step
  same "verl's FSDP2 placement at 3 and 4 ranks" verl-fsdp2-qwen2-np3 verl-fsdp2-qwen2-np4
  same "verl's FSDP2 and FSDP1" verl-fsdp2-qwen2-np3 verl-fsdp1-qwen2-np2
  run verl-fsdp2-qwen2-dora-np3 torchrun 3 --verl-utils --dora
  finish
  exit
fi
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
  same "GPU FSDP1 and FSDP2" gpu-fsdp2-qwen2 gpu-fsdp1-qwen2
else
  run fsdp2-qwen2-np2 torchrun 2
  run fsdp2-qwen2-np4-r-below-world torchrun 4 --lora-r 3
  run fsdp2-qwen2-np2-mpiexec mpiexec 2
  same "torchrun and mpiexec" fsdp2-qwen2-np2 fsdp2-qwen2-np2-mpiexec
  run fsdp2-gpt2-dora-np3 torchrun 3 --model gpt2 --dora
  run fsdp2-hsdp-gpt2-dora-np4 torchrun 4 --hsdp --model gpt2 --dora
  run fsdp2-qwen2-dora-np3 torchrun 3 --dora
  # lora_B's bias under FSDP2: its local shard is W's rows (no gather in Python)
  run fsdp2-gpt2-lora-bias-np3 torchrun 3 --model gpt2 --lora-bias
  run fsdp2-qwen2-embed-mts-np3 torchrun 3 --embed --modules-to-save --lora-r 2
  # DoRA on an embedding: refused by name on every rank, as `loraslab merge` refuses it
  run fsdp2-qwen2-embed-dora-refused-np2 torchrun 2 --embed --dora --expect-refusal
  # verl's FSDP2 placement: weights, lora_A and lora_B whose rows the world does not divide go
  # in Shard(1) column blocks; the same bytes as Shard(0) row shards
  run fsdp2-verl-qwen2-np3 torchrun 3 --verl-placement
  run fsdp2-verl-qwen2-np4 torchrun 4 --verl-placement
  same "verl's Shard(1) placement and Shard(0)" fsdp2-qwen2-np2 fsdp2-verl-qwen2-np3
  same "verl's Shard(1) placement at 3 and 4 ranks" fsdp2-verl-qwen2-np3 fsdp2-verl-qwen2-np4
  run fsdp2-verl-qwen2-embed-mts-np3 torchrun 3 --verl-placement --embed --modules-to-save \
    --lora-r 2
  same "verl's placement, embeddings and modules_to_save" fsdp2-qwen2-embed-mts-np3 \
    fsdp2-verl-qwen2-embed-mts-np3
  # DoRA by rows on Shard(1) blocks: each row's norm adds the ranks' partial sums
  run fsdp2-verl-qwen2-dora-np3 torchrun 3 --verl-placement --dora
  # tensor parallelism alone on a 1-D mesh: column-parallel weights in Shard(0), row-parallel
  # ones in Shard(1), the factors whole on every rank
  run tp-qwen2-np3 torchrun 3 --wrap tp
  same "tensor parallelism and FSDP2" fsdp2-qwen2-np2 tp-qwen2-np3
  # FSDP2 over TP on a 2 x 2 (dp, tp) mesh: column-parallel rows in _StridedShard (out of rank
  # order), row-parallel weights in (Shard(0), Shard(1)) blocks, factors on the dp submesh
  run fsdp2-tp-qwen2-np4 torchrun 4 --wrap fsdp2-tp
  same "FSDP2 over tensor parallelism and FSDP2" fsdp2-qwen2-np2 fsdp2-tp-qwen2-np4
  run ddp-gpt2-lora-bias-np2 torchrun 2 --wrap ddp --model gpt2 --lora-bias --stripe-mib 1
  run none-qwen2-options-np2 torchrun 2 --wrap none --rslora --modules-to-save --embed --tie \
    --second-adapter --adapter mine
  run fsdp1-qwen2-np2 torchrun 2 --wrap fsdp1
  same "FSDP1 and FSDP2" fsdp2-qwen2-np2 fsdp1-qwen2-np2
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
  same "FSDP1 HYBRID_SHARD and FSDP2" fsdp2-qwen2-np2 fsdp1-hybrid-qwen2-np4
  # after a forward and backward (the state a training job saves in), with MixedPrecision
  run fsdp2-mixed-precision-step-np2 torchrun 2 --mixed-precision --step
  run fsdp1-uop-step-np2 torchrun 2 --wrap fsdp1 --use-orig-params --step
  run fsdp1-mixed-precision-np3 torchrun 3 --wrap fsdp1 --mixed-precision
  # CPUOffload's configuration (without a step: its forward needs an accelerator)
  run fsdp1-cpu-offload-np3 torchrun 3 --wrap fsdp1 --cpu-offload
fi
if [ "${LSL_TEST_DEVICE:-cpu}" != cuda ]; then
  # Careless or unlucky jobs (issue 26): each case refuses by name on every rank, or fails fast
  # and alike, and leaves nothing at the path (tests/py/torch_misuse.py says what each checks).
  for c in skip two-adapters meta destroyed exists paths config interrupt nomem nomem-handle; do
    script=torch_misuse.py run "misuse-$c-np2" torchrun 2 --case $c
  done
  script=torch_misuse.py run misuse-two-adapters-fsdp1-np2 torchrun 2 --case two-adapters \
    --wrap fsdp1
  script=torch_misuse.py run misuse-paths-np3-mpiexec mpiexec 3 --case paths
  # Signals from outside during a slow save: nothing left at the path or beside it, and the
  # exit status says the job did not succeed.
  sig_run() { # NAME LAUNCH SIGNAL TARGET(rank0|rank1|launcher)
    local name=$1 how=$2 sig=$3 who=$4 d=$out/$1 pid p k
    [[ "$name" =~ ${LSL_TORCH_ONLY:-.} ]] || return 0
    mkdir -p "$d"
    port=$((port + 1))
    if [ "$how" = torchrun ]; then
      timeout -k 10 "$cap" "$py" -m torch.distributed.run --nproc-per-node 2 --master-port "$port" \
        "$here/py/torch_misuse.py" --out "$d" --case slow >"$d/log" 2>&1 &
    else # over callbacks, which the slow case slows down; MPI under it all the same
      LSL_TORCH_COMM=callbacks LSL_TEST_PORT=$port timeout -k 10 "$cap" "$mpiexec" -n 2 "$py" \
        "$here/py/torch_misuse.py" --out "$d" --case slow >"$d/log" 2>&1 &
    fi
    pid=$!
    for k in $(seq 1 1200); do # the save's temporary, seen by both ranks (at most 120 s)
      ls -a "$d" | grep -q 'lsl-tmp' && [ "$(grep -c 'slow: saving' "$d/log")" -ge 2 ] && break
      sleep 0.1
    done
    sleep 0.5
    local target=""
    for p in $(pgrep -f -- "torch_misuse.py --out $d "); do
      [ "$p" = "$pid" ] && continue
      local r=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^\(RANK\|PMI_RANK\)=//p' | head -1)
      [ "$who" = "rank$r" ] && target=$p
    done
    if [ "$who" = launcher ]; then
      target=$(pgrep -P "$pid" | head -1) # timeout's child: torchrun or mpiexec
    fi
    if [ -z "$target" ]; then
      not_ok "$name: no process to signal"; wait $pid; return
    fi
    kill "-$sig" "$target"
    wait $pid
    local rc=$? left
    left=$(ls -a "$d" | grep -E 'lsl-tmp|merged.h5' || true)
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ -z "$left" ]; then
      ok "$name: SIG$sig to $who: exit $rc, nothing left"
    else
      not_ok "$name: SIG$sig to $who: exit $rc, left: $left"; tail -5 "$d/log"
    fi
  }
  sig_run signal-term-rank1 torchrun TERM rank1
  sig_run signal-kill-rank0 torchrun KILL rank0
  sig_run signal-term-torchrun torchrun TERM launcher
  sig_run signal-term-mpiexec mpiexec TERM launcher
fi
if "$py" "$here/py/test_torch_layout.py" >"$out/unit.log" 2>&1; then
  ok "layout and launch unit tests ($(grep -c ' ok$' "$out/unit.log" || true) passed)"
else
  not_ok "layout and launch unit tests"; cat "$out/unit.log"
fi
finish
