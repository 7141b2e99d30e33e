#!/usr/bin/env bash
# Installs every Debian 12 package the build, the tests and the example need.  Safe to run
# twice: it installs only what is missing.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config      # toolchain
  mpich libmpich-dev                    # MPI: collectives, MPI-IO (ROMIO)
  libhdf5-mpich-dev hdf5-tools          # parallel HDF5 1.10 (MPICH flavour), h5dump
  libjansson-dev                        # JSON: safetensors headers, configs, inspect --json
  libisal-dev                           # CRC-32C (crc32_iscsi), vectorised
  libopenblas-serial-dev                # BLAS for the CPU merge (serial: one thread per rank)
  libcmocka-dev                         # unit tests
  python3-h5py python3-numpy python3-jsonschema python3-crc32c  # external checks (/usr/bin/python3)
  clang-format bc                       # style check; bc sums the test counts
  clang libclang-rt-14-dev              # libFuzzer targets (ci/fuzz.sh) and the clang build check
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The PyTorch front end's tests (tests/torch): PyPI's torch, PEFT, transformers, safetensors for
# the python3 on PATH.  Pinned to the CPU build of torch 2.13 this machine carries (a plain
# `pip install torch` would fetch a multi-GB CUDA build); Debian's python3-torch (1.13) cannot
# import torch.distributed.fsdp on Python 3.11, and python3-mpi4py would switch the MPI
# alternatives to Open MPI.  h5py: the scale benchmark's read-back of a tensor (bench.scale).
torch_pkgs=(torch==2.13.0 peft transformers safetensors h5py)
if python3 -c "import torch, peft, transformers, safetensors, h5py" 2>/dev/null; then
  echo "install-deps: torch $(python3 -c 'import torch; print(torch.__version__)') present"
else
  echo "install-deps: pip installing ${torch_pkgs[*]}"
  python3 -m pip install -q "${torch_pkgs[@]}"
fi

# `pip install .` (tests/install/pip_check.sh builds offline, --no-build-isolation): the build
# backend pyproject.toml names.
if python3 -c "import scikit_build_core" 2>/dev/null; then
  echo "install-deps: scikit-build-core $(python3 -c 'import scikit_build_core as s; print(s.__version__)') present"
else
  echo "install-deps: pip installing scikit-build-core"
  python3 -m pip install -q "scikit-build-core>=0.10"
fi

# verl 0.9.1 for the verl suite (tests/torch/verl_tests.sh), in a virtual environment of its own:
# it pins transformers below 5.11 (and kernels below 0.13), which the main suite's packages are
# not.  torch 2.13's CPU build, as above.
verl_venv=${LSL_VERL_VENV:-$HOME/.cache/loraslab/verl-venv}
if "$verl_venv/bin/python" -c "import verl, peft; assert verl.__version__ == '0.9.1'" 2>/dev/null; then
  echo "install-deps: verl 0.9.1 present in $verl_venv"
else
  echo "install-deps: making $verl_venv with verl 0.9.1"
  python3 -m venv "$verl_venv"
  "$verl_venv/bin/python" -m pip install -q torch==2.13.0 "transformers<5.11" peft safetensors \
    h5py "kernels<0.13" verl==0.9.1
fi
