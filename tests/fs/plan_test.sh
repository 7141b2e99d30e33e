#!/usr/bin/env bash
# The I/O plan on real runs (issue 18's check): merges at 1-4 ranks with stripe sizes 1, 4 and
# 16 MiB (--stripe-size: alignment and write pieces, on any filesystem), traced (LSL_TRACE) and
# fed to the Lustre model with stripe counts 1, 4, 16 and 64.  Every cut inside one rank's part
# of a tensor falls on a stripe boundary, no stripe is written by two ranks in one collective
# call except where their rows meet, nothing is written twice, the OSTs' bytes add up.  With
# LSL_IOPLAN=off the same run cuts off the stripes (the check can fail).  Then --plan: the plan
# printed, nothing left at the path; and the CLI's refusals of bad stripe settings.
#   plan_test.sh BUILD_DIR
set -uo pipefail
lsl=$1/loraslab
here=$(cd "$(dirname "$0")/.." && pwd)
py=${LSL_PYTHON:-python3}
mpiexec=${MPIEXEC:-mpiexec}
out=${LSL_TESTOUTDIR:-/tmp}/plan
rm -rf "$out" && mkdir -p "$out"
source "${BASH_SOURCE%/*}/../lib/harness.sh"
bad() { not_ok "$1"; }
# rows of 2 KiB (hidden 1024) and 8 KiB (down_proj), a 32 MiB embedding copied as bytes
"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --hidden 1024 \
  --intermediate 4096 --layers 1 --vocab 16384 --heads 8 --kv-heads 2 >/dev/null ||
  { bad "gen_model"; exit 1; }

check() { # TRACE STRIPE_MIB -> "cuts" on stdout; fails on a broken rule
  python3 - "$here/fs/lustre_model.py" "$1" "$2" <<'PY'
import json, subprocess, sys
model, trace, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
cuts = None
for count in (1, 4, 16, 64):
    r = subprocess.run([sys.executable, model, trace, "--stripe-size", f"{mib}MiB",
                        "--stripe-count", str(count), "--json"], capture_output=True, text=True,
                       check=True)
    (name, m), = json.loads(r.stdout).items()
    assert m["unaligned_interior_cuts"] == 0, (count, m)
    assert m["conflicts_off_boundary"] == 0, (count, m)
    assert m["overlap_bytes"] == 0 and sum(m["ost_bytes"]) == m["bytes"], (count, m)
    assert len(m["ost_bytes"]) == count, m
    cuts = m["interior_cuts"]
print(cuts)
PY
}

for mib in 1 4 16; do
  staging=$((mib * 8)) # whole-row chunks can end on a stripe: a stripe's rows fit the budget
  total=0 okay=1
  for np in 1 2 3 4; do
    t=$out/s$mib-np$np.jsonl
    rm -f "$out/m.h5"
    if ! LSL_TRACE=$t "$mpiexec" -n "$np" "$lsl" merge -q --staging-mib "$staging" \
      --stripe-size ${mib}MiB -b "$out/base" -a "$out/adapter" -o "$out/m.h5"; then
      okay=0; bad "merge at $np ranks, stripe $mib MiB"; continue
    fi
    if c=$(check "$t" "$mib"); then total=$((total + c)); else okay=0; bad "model: $np ranks, $mib MiB"; fi
  done
  if [ $okay = 1 ] && { [ "$mib" = 16 ] || [ $total -gt 0 ]; }; then
    ok "stripe $mib MiB, 1-4 ranks, counts 1/4/16/64: $total cuts inside parts, all on stripe boundaries; shared stripes only where ranks' rows meet"
  elif [ $okay = 1 ]; then bad "stripe $mib MiB: no cut inside a part was made (the check saw nothing)"; fi
done

rm -f "$out/m.h5"
LSL_IOPLAN=off LSL_TRACE=$out/off.jsonl "$mpiexec" -n 2 "$lsl" merge -q --staging-mib 8 \
  --stripe-size 1MiB -b "$out/base" -a "$out/adapter" -o "$out/m.h5" &&
  n=$(python3 "$here/fs/lustre_model.py" "$out/off.jsonl" --stripe-size 1MiB --json |
    python3 -c 'import json,sys; print(next(iter(json.load(sys.stdin).values()))["unaligned_interior_cuts"])') &&
  [ "$n" -gt 0 ] && ok "LSL_IOPLAN=off: $n cuts off the stripes (the rule is the plan's doing)" ||
  bad "LSL_IOPLAN=off should cut off the stripes"

rm -f "$out/p.h5"
if "$mpiexec" -n 3 "$lsl" merge --plan --stripe-size 4MiB -b "$out/base" -a "$out/adapter" \
  -o "$out/p.h5" >"$out/plan.log" 2>&1 && grep -q "^plan: ext4\|^plan: tmpfs\|^plan: [a-z]*, 3 ranks on 1 node" "$out/plan.log" &&
  grep -q "write pieces cut at 4.00 MiB" "$out/plan.log" && grep -q "^plan: rank 2 writes" "$out/plan.log" &&
  grep -q "stripes shared by two ranks" "$out/plan.log" && [ ! -e "$out/p.h5" ] &&
  [ -z "$(ls -A "$out" | grep lsl-tmp)" ]; then
  ok "--plan prints the plan and per-rank extents, leaves nothing at the path"
else bad "--plan: $(cat "$out/plan.log")"; fi
rm -rf "$out/hf"
"$mpiexec" -n 2 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$out/c.h5" &&
  "$mpiexec" -n 2 "$lsl" convert --plan --max-shard-size 30MB "$out/c.h5" "$out/hf" \
    >"$out/cplan.log" 2>&1 && grep -q "^plan: model-00004-of-00004.safetensors" "$out/cplan.log" &&
  grep -q "^plan: each of 2 ranks copies" "$out/cplan.log" && [ ! -e "$out/hf" ] &&
  [ -z "$(ls -A "$out" | grep lsl-tmp)" ] &&
  ok "convert --plan prints each shard's plan and the ranks' shares, leaves nothing" ||
  bad "convert --plan: $(cat "$out/cplan.log")"
# convert's shares: each rank's share of the shards' bytes ends on a multiple of the write piece,
# so no stripe of a shard is written by two ranks (LSL_IOPLAN=off: the even split shares some)
shared() { # TRACE -> the stripes of 1 MiB written by more than one rank, over every shard
  python3 "$here/fs/lustre_model.py" "$1" --stripe-size 1MiB --json |
    python3 -c 'import json,sys; print(sum(m["shared_stripes"] for m in json.load(sys.stdin).values()))'
}
okay=1 split=0
for np in 2 3 4; do
  for mode in on off; do
    rm -rf "$out/hf" "$out/cv.jsonl"
    if ! LSL_IOPLAN=$mode LSL_TRACE="$out/cv.jsonl" "$mpiexec" -n "$np" "$lsl" convert -q \
      --stripe-size 1MiB --max-shard-size 30MB "$out/c.h5" "$out/hf" ||
      ! "$lsl" verify -q "$out/hf"; then
      okay=0; bad "convert at $np ranks ($mode)"; continue
    fi
    n=$(shared "$out/cv.jsonl")
    if [ "$mode" = on ] && [ "$n" != 0 ]; then okay=0; bad "convert at $np ranks: $n stripes shared"; fi
    [ "$mode" = off ] && split=$((split + n))
  done
done
[ $okay = 1 ] && [ $split -gt 0 ] &&
  ok "convert at 2-4 ranks: no 1 MiB stripe of a shard written by two ranks ($split with LSL_IOPLAN=off)" ||
  { [ $okay = 1 ] && bad "convert with LSL_IOPLAN=off shared no stripe (the check saw nothing)"; }
for a in "--stripe-count 0" "--stripe-count 2001" "--stripe-count x" "--stripe-size 1000" "--stripe-size 5GiB"; do
  # shellcheck disable=SC2086
  if "$mpiexec" -n 1 "$lsl" merge $a -b "$out/base" -a "$out/adapter" -o "$out/r.h5" 2>"$out/r.log"; then
    bad "$a accepted"
  elif grep -q -- "${a%% *}" "$out/r.log" && [ ! -e "$out/r.h5" ]; then ok "$a refused by name"
  else bad "$a: $(cat "$out/r.log")"; fi
done
finish
