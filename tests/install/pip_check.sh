#!/usr/bin/env bash
# `pip install .` as a PyTorch user runs it: a clean clone of the repository, a fresh virtual
# environment (the system's torch and PEFT visible through --system-site-packages), then
# `pip install --no-build-isolation --no-index .` (scikit-build-core builds the library with the
# project's CMake, offline), a 2-rank torchrun save_merged on a PEFT model and `loraslab verify` of
# its output, with no LORASLAB_* variable set and nothing of the source tree on PYTHONPATH; then
# the wheel, built once, installed into a second environment, which loads its own library.
# It stops at the first failure (set -e).
#   pip_check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${LSL_TESTOUTDIR:-/tmp}/pip
rm -rf "$work" && mkdir -p "$work"
source "$here/../lib/harness.sh"
unset LORASLAB_LIBRARY LORASLAB_PREFIX PYTHONPATH
py=${LSL_TORCH_PYTHON:-python3} # the python with torch and PEFT (as tests/torch), not LSL_PYTHON
git clone -q "$repo" "$work/src"
"$py" -m venv --system-site-packages "$work/v1"
"$work/v1/bin/pip" install --no-build-isolation --no-index --no-deps "$work/src" \
  >"$work/pip1.log" 2>&1 || { tail -30 "$work/pip1.log"; exit 1; }
lib=$(cd / && "$work/v1/bin/python" -c 'import loraslab._lib as l; l.lib(); print(l._lib._name)')
[[ $lib == "$work/v1/lib/"* ]] || { echo "FAIL - the package loaded $lib"; exit 1; }
ok "pip install --no-build-isolation --no-index . into a fresh environment (library $lib)"

# torchrun, 2 ranks, the package from the environment (tests/py only for the test's helpers)
cd "$work" && mkdir -p "$work/run"
PYTHONPATH=$repo/tests/py timeout -k 10 600 "$work/v1/bin/python" -m torch.distributed.run \
  --nproc-per-node 2 --master-port 29731 "$repo/tests/py/torch_save.py" --out "$work/run" \
  >"$work/run.log" 2>&1 || { tail -30 "$work/run.log"; exit 1; }
grep -q "^PASSED" "$work/run.log" || { tail -30 "$work/run.log"; exit 1; }
ok "2-rank torchrun save_merged from the installed package: $(grep -m1 '^torch_save:' "$work/run.log" | cut -c1-120)"
out=$(ls -d "$work"/run/*.h5 | head -1)
PATH=$work/v1/bin:$PATH loraslab verify -q "$out"
ok "the environment's \`loraslab verify\` passes $(basename "$out")"

# the wheel, built once (reusing the first build's objects), into a second environment
"$work/v1/bin/pip" wheel --no-build-isolation --no-index --no-deps -w "$work/wheels" \
  "$work/src" >"$work/wheel.log" 2>&1 || { tail -30 "$work/wheel.log"; exit 1; }
whl=$(ls "$work"/wheels/loraslab-*.whl)
"$py" -m venv --system-site-packages "$work/v2"
"$work/v2/bin/pip" install --no-index --no-deps "$whl" >"$work/pip2.log" 2>&1 ||
  { tail -30 "$work/pip2.log"; exit 1; }
cd /
lib=$("$work/v2/bin/python" -c 'import loraslab._lib as l; l.lib(); print(l._lib._name)')
[[ $lib == "$work/v2/lib/"* ]] || { echo "FAIL - the wheel's package loaded $lib"; exit 1; }
"$work/v2/bin/loraslab" verify -q "$out"
ok "$(basename "$whl") in a second environment: its own library, its loraslab verifies"
finish
