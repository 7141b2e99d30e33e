#!/usr/bin/env bash
# Open MPI installed beside MPICH, with the mpi alternatives switched to it (what installing
# Debian's python3-mpi4py does): configure must still pick the MPI that matches the parallel
# HDF5 (MPICH), build, and pass an MPI test.  The alternatives are set back to MPICH afterwards,
# whatever happens, so the machine is as before.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
restore() {
  $sudo update-alternatives --set mpi /usr/bin/mpicc.mpich >/dev/null 2>&1 || true
  $sudo update-alternatives --set mpirun /usr/bin/mpirun.mpich >/dev/null 2>&1 || true
}
trap restore EXIT
if ! dpkg-query -W -f='${Status}' libopenmpi-dev 2>/dev/null | grep -q "install ok installed"; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
fi
$sudo update-alternatives --set mpi /usr/bin/mpicc.openmpi >/dev/null
$sudo update-alternatives --set mpirun /usr/bin/mpirun.openmpi >/dev/null
echo "two-mpis: mpicc is now $(readlink -f "$(command -v mpicc)")"
rm -rf build-2mpi
BUILD_DIR=build-2mpi bash ci/build.sh -DLSL_CUDA=OFF -DLSL_WERROR=ON >/dev/null
grep -q "loraslab: MPI .*mpicc.mpich (mpich, as HDF5)" build-2mpi.configure.log ||
  { echo "two-mpis: configure did not pick MPICH"; cat build-2mpi.configure.log; exit 1; }
(cd build-2mpi && ctest -R '^mpi\.writer\.np2$' --output-on-failure) | tee build-2mpi.ctest.log
echo "two-mpis: configured against MPICH beside Open MPI; mpi.writer.np2 passed"
