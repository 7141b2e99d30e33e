#!/usr/bin/env bash
# LSL_TRACE and the Lustre model (tests/fs/lustre_model.py) on real runs: a merge at 3 ranks
# over MPI-IO traces exactly the file's dataset bytes, from every rank, nothing written twice;
# the same merge over callbacks traces the same pieces; a convert at 2 ranks with "%r" writes
# one trace per rank covering the same bytes; with LSL_TRACE unset nothing is traced.
#   trace_test.sh BUILD_DIR
set -uo pipefail
build=$1 lsl=$1/loraslab
here=$(cd "$(dirname "$0")/.." && pwd)
py=${LSL_PYTHON:-python3}
mpiexec=${MPIEXEC:-mpiexec}
out=${LSL_TESTOUTDIR:-/tmp}/trace
rm -rf "$out" && mkdir -p "$out"
source "${BASH_SOURCE%/*}/../lib/harness.sh"
bad() { not_ok "$1"; }
"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --hidden 96 \
  --intermediate 200 --layers 2 --vocab 300 >/dev/null || { bad "gen_model"; exit 1; }
model() { python3 "$here/fs/lustre_model.py" --stripe-size 64KiB --stripe-count 4 --json "$@"; }

LSL_TRACE=$out/mpi.jsonl "$mpiexec" -n 3 "$lsl" merge -q --staging-mib 1 -b "$out/base" \
  -a "$out/adapter" -o "$out/m.h5" || bad "traced merge"
LSL_TRACE=$out/cb.jsonl "$mpiexec" -n 3 "$build/jobs_cb" merge "$out/base" "$out/adapter" \
  "$out/m-cb.h5" 1 || bad "traced merge over callbacks"
want=$("$py" -c 'import h5py, sys
f = h5py.File(sys.argv[1], "r")
print(sum(d.id.get_storage_size() for d in f["tensors"].values()))' "$out/m.h5")
python3 - "$out" "$want" <<'PY' && ok "merge traces: every dataset byte once, 3 ranks, callbacks the same pieces" || bad "merge traces"
import json, sys
out, want = sys.argv[1], int(sys.argv[2])
def rows(p): return [json.loads(l) for l in open(p)]
mpi, cb = rows(f"{out}/mpi.jsonl"), rows(f"{out}/cb.jsonl")
assert sum(w["length"] for w in mpi) == want, (sum(w["length"] for w in mpi), want)
assert {w["rank"] for w in mpi} == {0, 1, 2}, {w["rank"] for w in mpi}
assert all(w["t1"] >= w["t0"] > 1e9 for w in mpi)
pieces = lambda ws: sorted((w["offset"], w["length"]) for w in ws)
assert pieces(mpi) == pieces(cb), "callbacks wrote other pieces than MPI-IO"
PY
m=$(model "$out/mpi.jsonl")
python3 - "$m" "$want" <<'PY' && ok "model: OST bytes add up, no overlap, $(echo "$m" | python3 -c 'import json,sys; d=next(iter(json.load(sys.stdin).values())); print(d["shared_stripes"], "of", d["stripes"], "stripes shared")')" || bad "model on the merge trace: $m"
import json, sys
d = json.loads(sys.argv[1]); want = int(sys.argv[2])
(name, r), = d.items()
assert r["bytes"] == want and sum(r["ost_bytes"]) == want and r["overlap_bytes"] == 0, r
assert r["ranks"] == 3 and 0 <= r["aligned_fraction"] <= 1 and r["stripes"] >= 1, r
PY

LSL_TRACE="$out/conv-%r.jsonl" "$mpiexec" -n 2 "$lsl" convert -q "$out/m.h5" "$out/hf" ||
  bad "traced convert"
if [ -s "$out/conv-0.jsonl" ] && [ -s "$out/conv-1.jsonl" ]; then
  c=$(model "$out"/conv-*.jsonl)
  python3 - "$c" "$want" <<'PY' && ok "convert: one trace per rank, the tensors' bytes once" || bad "convert trace: $c"
import json, sys
d = json.loads(sys.argv[1]); want = int(sys.argv[2])
assert sum(r["bytes"] for r in d.values()) == want, d
assert all(r["overlap_bytes"] == 0 for r in d.values()), d
PY
else bad "convert: no per-rank traces"; fi

"$mpiexec" -n 2 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$out/untraced.h5" &&
  [ -z "$(ls "$out" | grep -v -E '^(base|adapter|hf|m\.h5|m-cb\.h5|untraced\.h5|mpi\.jsonl|cb\.jsonl|conv-[01]\.jsonl)$')" ] &&
  ok "LSL_TRACE unset: no trace written" || bad "untraced run left something: $(ls "$out")"
finish
