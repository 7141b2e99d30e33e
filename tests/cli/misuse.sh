#!/usr/bin/env bash
# Careless use of the command line that once gave a wrong or a stranded result (issue 26):
#  - an adapter whose target_modules is narrower than the factors in its file: merged as PEFT
#    loads it (the unselected factors are left out, with a warning naming them), byte-identical
#    to the merge of a file that holds only the selected factors;
#  - ranks given different paths or settings: refused on every rank by name, nothing written;
#  - convert --overwrite racing itself: both runs succeed, the directory is always complete and
#    nothing is left beside it; a directory an older version moved aside is named and removed.
#   misuse.sh BUILD/loraslab
set -uo pipefail
lsl=$1
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/misuse
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=$here/py
source "${BASH_SOURCE%/*}/../lib/harness.sh"
bad() {
  not_ok "$1: $2"
  [ -f "${3:-}" ] && sed 's/^/    /' "$3" | head -8
}
leftovers() { ls -a "$1" 2>/dev/null | grep -E 'lsl-tmp|lsl-old' || true; }

"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --layers 3 >/dev/null

# ---- target_modules narrower than the file ----------------------------------------------------
# narrow: the same file, a config selecting q_proj and v_proj of layers 0 and 2 only;
# only: a file holding just those factors, under the same config.
cp -r "$out/adapter" "$out/narrow" && cp -r "$out/adapter" "$out/only"
"$py" - "$out" <<'PY'
import json, re, sys
import lsl_st
out = sys.argv[1]
cfg = json.load(open(f"{out}/narrow/adapter_config.json"))
cfg["target_modules"] = ["q_proj", "v_proj"]
cfg["layers_to_transform"] = [0, 2]
for d in ("narrow", "only"):  # the same config text, as check_merge.py compares it
    json.dump(cfg, open(f"{out}/{d}/adapter_config.json", "w"))
t, _ = lsl_st.read(f"{out}/only/adapter_model.safetensors")
keep = {k: (d, a, a.shape) for k, (d, a) in t.items()
        if re.search(r"layers\.[02]\.self_attn\.[qv]_proj\.", k)}
assert 0 < len(keep) < len(t), (len(keep), len(t))
lsl_st.write(f"{out}/only/adapter_model.safetensors", keep)
PY
for np in 1 3; do
  "$mpiexec" -n $np "$lsl" merge -b "$out/base" -a "$out/narrow" -o "$out/narrow-$np.h5" \
    >"$out/narrow-$np.log" 2>&1 || bad "target_modules np$np" "merge failed" "$out/narrow-$np.log"
  "$mpiexec" -n $np "$lsl" merge -q -b "$out/base" -a "$out/only" -o "$out/only-$np.h5" \
    >"$out/only-$np.log" 2>&1 || bad "target_modules np$np" "reference merge failed" "$out/only-$np.log"
  if "$py" "$here/py/compare_tensors.py" "$out/narrow-$np.h5" "$out/only-$np.h5" >"$out/cmp-$np.log" 2>&1 &&
    grep -q "that the config's target_modules / exclude_modules / layers_to_transform do not select" \
      "$out/narrow-$np.log"; then
    ok "target_modules narrower than the file at $np ranks: the selected modules only, said"
  else bad "target_modules np$np" "tensors differ from the selected-only merge, or no warning" \
    "$out/cmp-$np.log"; fi
done
if "$py" "$here/py/check_merge.py" --base "$out/base" --adapter "$out/only" --merged "$out/narrow-3.h5" \
  >"$out/check.log" 2>&1; then ok "the narrowed merge against the float64 reference"
else bad "narrowed merge" "check_merge.py failed" "$out/check.log"; fi

# ---- ranks given different arguments ----------------------------------------------------------
# rank_of: the rank under MPICH (PMI_RANK) or Open MPI
differ() { # differ NAME TEXT -- command using $r
  local name=$1 text=$2
  shift 3
  timeout 120 "$mpiexec" -n 2 bash -c 'r=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-0}}; '"$*" \
    >"$out/$name.log" 2>&1
  local rc=$? why=""
  [ $rc -ne 0 ] || why="exit status 0"
  [ $rc -ne 124 ] || why="hung"
  grep -q -F -- "$text" "$out/$name.log" || why="$why; no message saying '$text'"
  [ -z "$(ls "$out" | grep -E '^differ-')" ] || why="$why; an output was written"
  [ -z "$(leftovers "$out")" ] || why="$why; a temporary was left"
  if [ -z "$why" ]; then ok "$name: $(grep -m1 -F -- "$text" "$out/$name.log" | cut -c1-150)"
  else bad "$name" "$why" "$out/$name.log"; fi
}
differ merge-paths "the ranks were given different output: rank 0 '$out/differ-0.h5', rank 1 '$out/differ-1.h5'" \
  -- "exec $lsl merge -q -b $out/base -a $out/adapter -o $out/differ-\$r.h5"
differ merge-staging "the ranks were given different staging_bytes: rank 0 1048576, rank 1 2097152" \
  -- "exec $lsl merge -q --staging-mib \$((r + 1)) -b $out/base -a $out/adapter -o $out/differ.h5"
"$mpiexec" -n 2 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$out/good.h5" ||
  bad "good file" "merge failed"
differ convert-dirs "the ranks were given different outdir" \
  -- "exec $lsl convert -q $out/good.h5 $out/differ-\$r"
differ convert-overwrite "the ranks were given different overwrite: rank 0 0, rank 1 1" \
  -- "exec $lsl convert -q \$([ \$r = 1 ] && echo --overwrite) $out/good.h5 $out/differ-hf"
differ verify-paths "the ranks were given different path" \
  -- "exec $lsl verify -q \$([ \$r = 1 ] && echo $out/only-1.h5 || echo $out/good.h5)"

# ---- convert --overwrite racing itself ----------------------------------------------------------
"$lsl" convert -q "$out/good.h5" "$out/hf" >/dev/null 2>&1 || bad "convert" "first convert failed"
race_ok=1
for k in 1 2 3 4 5 6; do
  "$mpiexec" -n 1 "$lsl" convert -q --overwrite "$out/good.h5" "$out/hf" >"$out/race-a.log" 2>&1 &
  a=$!
  "$mpiexec" -n 1 "$lsl" convert -q --overwrite "$out/good.h5" "$out/hf" >"$out/race-b.log" 2>&1 &
  b=$!
  wait $a; ra=$?
  wait $b; rb=$?
  if [ $ra -ne 0 ] || [ $rb -ne 0 ] || [ -n "$(leftovers "$out")" ] ||
    ! "$lsl" verify -q "$out/hf" >"$out/race-verify.log" 2>&1; then
    race_ok=0
    bad "convert --overwrite race, round $k" "exit $ra and $rb; left: $(leftovers "$out" | tr '\n' ' ')" \
      "$out/race-a.log"
    cat "$out/race-b.log"
    break
  fi
done
[ $race_ok = 1 ] && ok "convert --overwrite twice at once, 6 rounds: both succeed, nothing left beside"
# a copy an older version moved aside (NAME.lsl-old-PID) is named by the next run and removed
cp -r "$out/hf" "$out/hf.lsl-old-4242"
"$lsl" convert --overwrite "$out/good.h5" "$out/hf" >"$out/old.log" 2>&1
if grep -q "removed $out/hf.lsl-old-4242, left by an interrupted run" "$out/old.log" &&
  [ -z "$(leftovers "$out")" ]; then ok "an old copy moved aside by an earlier version is named and removed"
else bad "old copy" "not named or not removed" "$out/old.log"; fi

finish
