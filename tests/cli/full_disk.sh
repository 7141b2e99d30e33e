#!/usr/bin/env bash
# A full output filesystem: a 1 MiB tmpfs.  First the free-space pre-check refuses the job; then,
# with the pre-check off (LSL_NO_SPACE_CHECK=1, as on filesystems whose statvfs overstates what
# a job may write), the collective writes fail with ENOSPC, every rank reports it, and nothing is
# left behind.  Exit 77 (skipped) where tmpfs cannot be mounted.
#   full_disk.sh BUILD/loraslab
set -uo pipefail
lsl=$1
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/full-disk
small=$out/small
umount "$small" 2>/dev/null
rm -rf "$out" && mkdir -p "$small"
if ! mount -t tmpfs -o size=1m tmpfs "$small" 2>/dev/null; then
  echo "skip: cannot mount a tmpfs here (needs root)"; exit 77
fi
trap 'umount "$small" 2>/dev/null' EXIT
"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --hidden 256 \
  --intermediate 1024 --vocab 2000 --layers 1 >/dev/null
source "${BASH_SOURCE%/*}/../lib/harness.sh"
check() {
  local name=$1 text=$2 log=$3 rc=$4
  if [ "$rc" -ne 0 ] && grep -qF "$text" "$log" && [ -z "$(ls -A "$small")" ]; then
    ok "$name: $(grep -m1 error "$log" | cut -c1-160)"
  else
    not_ok "$name (rc=$rc, left: $(ls -A "$small"))"; head -5 "$log"
  fi
}
"$mpiexec" -n 2 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$small/m.h5" >"$out/pre.log" 2>&1
check precheck "LSL_ERR_NOSPACE" "$out/pre.log" $?
LSL_NO_SPACE_CHECK=1 "$mpiexec" -n 3 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$small/m.h5" \
  >"$out/write.log" 2>&1
check enospc-during-write "LSL_ERR_NOSPACE" "$out/write.log" $?
finish
