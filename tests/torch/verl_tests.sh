#!/usr/bin/env bash
# loraslab.torch.save_merged with verl's own FSDP utilities (verl 0.9.1 from PyPI):
# get_fsdp_wrap_policy(is_lora=True) for FSDP1 and get_shard_placement_fn for FSDP2 (Shard(1) on
# the weights and factors whose rows the world does not divide), each against PEFT's merge and
# byte-identical to each other.  verl pins transformers below 5.11, so it lives in a virtual
# environment of its own, made by ci/install-deps.sh at LSL_VERL_VENV.
#   verl_tests.sh BUILD_DIR
set -uo pipefail
venv=${LSL_VERL_VENV:-$HOME/.cache/loraslab/verl-venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "FAIL - no verl environment at $venv (ci/install-deps.sh makes it)"
  echo "0 passed, 1 failed"
  exit 1
fi
LSL_TORCH_SUITE=verl LSL_TORCH_PYTHON=$venv/bin/python exec bash "${BASH_SOURCE%/*}/torch_tests.sh" "$@"
