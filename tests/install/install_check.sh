#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds a consumer against it twice, with
# find_package(loraslab) and with pkg-config, runs each at 2 ranks, and checks the file it
# wrote with the installed `loraslab verify`.  It stops at the first failure (set -e).
#   install_check.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
mpiexec=${MPIEXEC:-mpiexec}
work=${LSL_TESTOUTDIR:-/tmp}/install
rm -rf "$work" && mkdir -p "$work"
source "$here/../lib/harness.sh"
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log"
for f in include/loraslab.h include/loraslab_version.h bin/loraslab lib/pkgconfig/loraslab.pc \
  lib/cmake/loraslab/loraslabConfig.cmake lib/cmake/loraslab/loraslabConfigVersion.cmake; do
  [ -e "$prefix/$f" ] || { echo "FAIL - $f not installed"; exit 1; }
done
soname=$(objdump -p "$prefix"/lib/libloraslab.so.*.*.* | sed -n 's/ *SONAME *//p')
[ "$soname" = libloraslab.so.0 ] || { echo "FAIL - SONAME is '$soname'"; exit 1; }
ok "installed into $prefix (SONAME $soname)"

# find_package
cmake -S "$here" -B "$work/cm" -DCMAKE_PREFIX_PATH="$prefix" >"$work/cm.log" 2>&1 ||
  { cat "$work/cm.log"; exit 1; }
cmake --build "$work/cm" >>"$work/cm.log" 2>&1 || { cat "$work/cm.log"; exit 1; }
"$mpiexec" -n 2 "$work/cm/consumer" "$work/cm.h5"
"$mpiexec" -n 2 "$prefix/bin/loraslab" verify -q "$work/cm.h5"
ok "find_package(loraslab) consumer at 2 ranks, file verifies"

# pkg-config
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
# shellcheck disable=SC2046
cc "$here/consumer.c" -o "$work/pc-consumer" $(pkg-config --cflags --libs loraslab)
"$mpiexec" -n 2 "$work/pc-consumer" "$work/pc.h5"
"$mpiexec" -n 2 "$prefix/bin/loraslab" verify -q "$work/pc.h5"
cmp <(h5dump -d /tensors/model.w.weight "$work/cm.h5" | tail -n +3) \
  <(h5dump -d /tensors/model.w.weight "$work/pc.h5" | tail -n +3)
ok "pkg-config consumer at 2 ranks, same tensor"

# The Python package, installed by the same step, imported from the prefix at 1 and 2 ranks.
site=$prefix/lib/python3/site-packages
for np in 1 2; do
  PYTHONPATH=$site "$mpiexec" -n $np python3 "$here/check_python.py" "$work/cm.h5" "$work/py$np" |
    tee "$work/py$np.log"
  grep -q "library $prefix/lib/" "$work/py$np.log" || { echo "FAIL - not the installed library"; exit 1; }
  ok "the installed package at $np rank(s) loads the installed library"
done
# ... and by pip, with no network, finding the installed library through pkg-config.
python3 -m pip install -q --no-build-isolation --no-index --no-deps --target "$work/pip" \
  "$here/../../python" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
PYTHONPATH=$work/pip "$mpiexec" -n 2 python3 "$here/check_python.py" "$work/cm.h5" "$work/pip-out" |
  tee "$work/pip-run.log"
grep -q "library $prefix/lib/" "$work/pip-run.log" || { echo "FAIL - pip package did not find the installed library"; exit 1; }
ok "pip install ./python (no network) finds the installed library"
finish
