#!/usr/bin/env bash
# LSL_PROFILE: the merge prints where its time went, and an environment that differs between
# ranks (set on rank 0 only, or on rank 1 only, as a launcher may leave it) neither hangs the
# collective report nor changes the result; LSL_PROFILE=2 adds a line per tensor.
#   profile.sh BUILD/loraslab
set -uo pipefail
lsl=$1
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/profile
rm -rf "$out" && mkdir -p "$out"
"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --hidden 128 \
  --intermediate 256 --vocab 500 --layers 1 >/dev/null || exit 1
args=(merge -q -b "$out/base" -a "$out/adapter" --overwrite)
source "${BASH_SOURCE%/*}/../lib/harness.sh"
check() { # NAME WANT_LINE(0|1) LOG RC
  local n=$(grep -c '^loraslab: profile (max over ranks, s): define .* total' "$3")
  if [ "$4" -eq 0 ] && [ "$n" -eq "$2" ]; then
    ok "$1 ($n profile line)"
  else
    not_ok "$1 (rc $4, $n profile lines)"; cat "$3"
  fi
}
timeout 120 "$mpiexec" -n 2 env LSL_PROFILE=1 "$lsl" "${args[@]}" -o "$out/a.h5" >"$out/a.log" 2>&1
check "every rank" 1 "$out/a.log" $?
timeout 120 "$mpiexec" -n 1 env LSL_PROFILE=1 "$lsl" "${args[@]}" -o "$out/b.h5" : \
  -n 1 "$lsl" "${args[@]}" -o "$out/b.h5" >"$out/b.log" 2>&1
check "rank 0 only" 1 "$out/b.log" $?
timeout 120 "$mpiexec" -n 1 "$lsl" "${args[@]}" -o "$out/c.h5" : \
  -n 1 env LSL_PROFILE=1 "$lsl" "${args[@]}" -o "$out/c.h5" >"$out/c.log" 2>&1
check "rank 1 only (rank 0 decides: none)" 0 "$out/c.log" $?
# LSL_PROFILE=2: a line per tensor on rank 0 as well, one per dataset of the output
timeout 120 "$mpiexec" -n 2 env LSL_PROFILE=2 "$lsl" "${args[@]}" -o "$out/d.h5" >"$out/d.log" 2>&1
check "LSL_PROFILE=2" 1 "$out/d.log" $?
nd=$(h5ls -r "$out/d.h5" | grep -c Dataset)
np=$(grep -c '^loraslab: put [0-9]* `.*` .* MB: .* ms (gather' "$out/d.log")
if [ "$nd" -gt 0 ] && [ "$np" -eq "$nd" ]; then ok "one put line per tensor ($np)"
else not_ok "$np put lines for $nd datasets"; fi
"$py" "$here/py/compare_tensors.py" "$out/a.h5" "$out/b.h5" >/dev/null &&
  "$py" "$here/py/compare_tensors.py" "$out/a.h5" "$out/c.h5" >/dev/null &&
  ok "the outputs are the same with and without the profile" || not_ok "the outputs differ"
finish
