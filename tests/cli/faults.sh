#!/usr/bin/env bash
# Fault injection matrix (issue 14): LSL_FAULT makes the Nth write, allocation, fsync or rename of
# one rank fail.  For merge and import (to an HDF5 file and to a safetensors directory, whose
# writes run on the I/O threads) and convert at 2 and 4 ranks, with the fault on rank 0 and on
# the last rank, every run must end on every rank without hanging, and either fail with the
# injected error carried to rank 0's message (naming the rank where it happened) and nothing at
# the output path, or, where that rank never reached its Nth call, succeed with an output that
# verifies.  The first call of each kind must fail wherever the rank makes such calls.
#   faults.sh BUILD/loraslab
set -uo pipefail
lsl=$1
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/faults
rm -rf "$out" && mkdir -p "$out"
source "${BASH_SOURCE%/*}/../lib/harness.sh"
export PYTHONPATH=$here/py

"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --shard-kib 64 >/dev/null
"$mpiexec" -n 2 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$out/good.h5" ||
  { echo "FAIL - cannot make the input file"; exit 1; }

# must_fail KIND:N RANK: the combinations where the fault is certain to be hit.
must_fail() {
  case "$1@$2" in
  write:1@* | malloc:1@*) return 0 ;;
  fsync:1@0 | rename:1@0) return 0 ;;
  esac
  return 1
}

for cmd in merge import convert merge-dir import-dir; do
  for np in 2 4; do
    for fault in write:1 write:5 malloc:1 malloc:40 malloc:400 fsync:1 fsync:3 rename:1; do
      for rank in 0 $((np - 1)); do
        name=$cmd-np$np-${fault/:/}-r$rank
        o=$out/$name.h5
        log=$out/$name.log
        case $cmd in
        merge) args=(merge -q -b "$out/base" -a "$out/adapter" -o "$o") ;;
        import) args=(import -q "$out/base" "$o") ;;
        convert) o=$out/$name; args=(convert -q "$out/good.h5" "$o") ;;
        merge-dir) o=$out/$name; args=(merge -q -b "$out/base" -a "$out/adapter" -o "$o") ;;
        import-dir) o=$out/$name; args=(import -q "$out/base" "$o") ;;
        esac
        LSL_FAULT=$fault LSL_FAULT_RANK=$rank timeout 120 "$mpiexec" -n $np "$lsl" "${args[@]}" \
          >"$log" 2>&1
        rc=$?
        why=""
        if [ $rc -eq 124 ]; then
          why="hung"
        elif [ $rc -ne 0 ]; then
          grep -qE "LSL_FAULT|Input/output error|out of memory" "$log" || why="no injected error in the message"
          [ "$rank" = 0 ] || grep -q "rank $rank:" "$log" || why="$why; message does not name rank $rank"
          [ ! -e "$o" ] || why="$why; output exists"
          grep -q "BAD TERMINATION\|Segmentation\|Aborted\|AddressSanitizer" "$log" && why="$why; a rank crashed"
        else
          must_fail "$fault" "$rank" && why="exit 0 where the fault must hit"
          "$mpiexec" -n 2 "$lsl" verify -q "$o" >>"$log" 2>&1 || why="$why; succeeded but does not verify"
        fi
        ls -a "$out" | grep "lsl-tmp\|lsl-old" >/dev/null && why="$why; temporary left behind"
        if [ -z "$why" ]; then
          ok "$name: $([ $rc -eq 0 ] && echo "not reached, output verifies" || grep -m1 error "$log" | cut -c1-110)"
        else
          not_ok "$name: $why"
          sed 's/^/    /' "$log" | head -6
        fi
        rm -rf "$o" "$out"/.*lsl-tmp* 2>/dev/null
      done
    done
  done
done
# Every allocation of one rank in turn, through a whole job at 2 ranks:
# each must end every rank with an agreed error (or, past the last one, succeed).  This walks
# the early-return paths that a fixed N never reaches (a rank returning before a collective
# the others are in would hang here).
for sweep in import@1 convert@1 merge@1 convert@0 merge-dir@1 merge-dir@0; do
  cmd=${sweep%@*} who=${sweep#*@}
  hung=0 bad_state=0 n=0 failed=0
  for n in $(seq 1 400); do
    o=$out/sweep-$cmd.h5
    case $cmd in
    merge) args=(merge -q -b "$out/base" -a "$out/adapter" -o "$o") ;;
    import) args=(import -q "$out/base" "$o") ;;
    convert) o=$out/sweep-$cmd; args=(convert -q "$out/good.h5" "$o") ;;
    merge-dir) o=$out/sweep-$cmd; args=(merge -q -b "$out/base" -a "$out/adapter" -o "$o") ;;
    esac
    LSL_FAULT=malloc:$n LSL_FAULT_RANK=$who timeout 60 "$mpiexec" -n 2 "$lsl" "${args[@]}" \
      >"$out/sweep.log" 2>&1
    rc=$?
    [ $rc -eq 124 ] && { hung=$((hung + 1)); echo "    malloc:$n hung"; }
    if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
      failed=$((failed + 1))
      { [ ! -e "$o" ] && { [ "$who" = 0 ] || grep -q "rank $who:" "$out/sweep.log"; }; } ||
        { bad_state=$((bad_state + 1)); echo "    malloc:$n: $(head -c 300 "$out/sweep.log")"; }
    fi
    rm -rf "$o" "$out"/.*lsl-tmp* 2>/dev/null
    [ $rc -eq 0 ] && break # past rank 1's last allocation
  done
  if [ $hung -eq 0 ] && [ $bad_state -eq 0 ] && [ $failed -gt 0 ]; then
    ok "$cmd: malloc:1..$n on rank $who: $failed agreed failures, then success"
  else
    not_ok "$cmd malloc sweep on rank $who: $hung hung, $bad_state without an agreed error or with output"
  fi
done

finish
