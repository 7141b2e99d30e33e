#!/usr/bin/env bash
# --progress json on merge, import, convert and verify (2 ranks): every line on stderr is a JSON
# object, the last says "done": true with tensors_done = tensors_total and bytes_done =
# bytes_total; --quiet prints nothing; the text lines stay the default, a line per update when
# stderr is a pipe, one line rewritten in place on a terminal (script(1) gives one).
#   progress.sh BUILD/loraslab
set -uo pipefail
lsl=$1
py=${LSL_PYTHON:-/usr/bin/python3}
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/progress
rm -rf "$out" && mkdir -p "$out"
source "${BASH_SOURCE%/*}/../lib/harness.sh"
export PYTHONPATH=$here/py
"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" >/dev/null

check_json() { # NAME LOG COMMAND
  "$py" - "$2" "$3" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
assert lines, "no progress lines"
docs = [json.loads(l) for l in lines]  # every line parses
keys = {"event", "command", "tensors_done", "tensors_total", "bytes_done", "bytes_total",
        "rate_bytes_per_s", "eta_s", "elapsed_s", "ranks", "done"}
for d in docs:
    assert keys <= d.keys(), f"missing {keys - d.keys()}"
    assert d["command"] == sys.argv[2] and d["ranks"] == 2, d
last = docs[-1]
assert last["done"] is True and last["tensors_done"] == last["tensors_total"] > 0, last
assert last["bytes_done"] == last["bytes_total"] > 0, last
assert all(not d["done"] for d in docs[:-1]), "done before the last line"
print(f"{len(docs)} line(s), {last['tensors_total']} tensors")
PY
}
run() { # NAME COMMAND args...
  local name=$1 cmd=$2
  shift 2
  "$mpiexec" -n 2 "$lsl" "$cmd" --progress json "$@" 2>"$out/$name.err" >/dev/null
  local rc=$? msg
  if [ $rc -eq 0 ] && msg=$(check_json "$name" "$out/$name.err" "$cmd" 2>&1); then
    ok "$name --progress json: $msg"
  else
    not_ok "$name: exit $rc; $msg"; sed 's/^/    /' "$out/$name.err" | head -5
  fi
}
run merge merge -b "$out/base" -a "$out/adapter" -o "$out/m.h5"
run import import "$out/base" "$out/i.h5"
run convert convert "$out/m.h5" "$out/c"
run verify-file verify "$out/m.h5"
run verify-dir verify "$out/c"

"$mpiexec" -n 2 "$lsl" merge -q -b "$out/base" -a "$out/adapter" -o "$out/q.h5" 2>"$out/q.err"
[ $? -eq 0 ] && [ ! -s "$out/q.err" ] && { ok "--quiet prints nothing"; } ||
  { not_ok "--quiet printed"; }
"$mpiexec" -n 2 "$lsl" convert "$out/m.h5" "$out/t" 2>"$out/t.err"
grep -q "^loraslab: wrote .*every checksum verified" "$out/t.err" && ! grep -q "^{" "$out/t.err" &&
  { ok "text lines stay the default"; } ||
  { not_ok "default output"; }
! grep -q $'\r' "$out/t.err" && { ok "a pipe gets whole lines, no carriage return"; } ||
  { not_ok "carriage return in piped progress"; }
# On a terminal: one process started directly (a launcher forwards its ranks' stderr through
# pipes).
TERM=dumb script -qec "$lsl merge --staging-mib 1 -b $out/base -a $out/adapter -o $out/tty.h5" \
  /dev/null >"$out/tty.out" 2>&1
"$py" - "$out/tty.out" <<'PY' >"$out/tty.check" 2>&1
import re, sys
raw = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
lines = raw.replace("\r\n", "\n").split("\n")
merge = [l for l in lines if re.search(r"loraslab: merge \d+/\d+ tensors", l)]
assert len(merge) == 1, f"{len(merge)} lines carry the merge's progress: {merge}"
assert "\r" in merge[0] and "\x1b[K" in merge[0], repr(merge[0])
last = merge[0].split("\r")[-1].replace("\x1b[K", "")
assert "elapsed" in last, repr(last)
print(f"one line, {merge[0].count(chr(13))} update(s): {last.strip()}")
PY
[ $? -eq 0 ] && { ok "a terminal gets one progress line, rewritten: $(cat "$out/tty.check")"; } ||
  { not_ok "terminal progress: $(cat "$out/tty.check")"; }
"$mpiexec" -n 1 "$lsl" merge --progress yaml -b "$out/base" -a "$out/adapter" -o "$out/y.h5" 2>"$out/y.err"
[ $? -eq 2 ] && grep -q "takes text, json or none" "$out/y.err" &&
  { ok "--progress yaml is a usage error"; } ||
  { not_ok "--progress yaml"; }
finish
