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
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
