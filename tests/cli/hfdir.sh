#!/usr/bin/env bash
# merge -o DIR: the Hugging Face directory written in one pass (issue 27).  At 1-4 ranks, with a
# small --max-shard-size: the same bytes at every rank count and over callbacks; the shards,
# index and serving files those of the HDF5 output of the same merge after convert; every tensor
# the HDF5 file's; the index exact; transformers loads it with no missing or unexpected key and
# its tokenizer loads back; verify passes.  Then the archive carries the serving files (and a
# version 1 file still converts), --format, and the refusals.
#   hfdir.sh BUILD/loraslab BUILD/jobs_cb
set -uo pipefail
lsl=$1 jobs_cb=${2:-}
py=${LSL_PYTHON:-/usr/bin/python3}
export PYTHONWARNINGS=ignore
mpiexec=${MPIEXEC:-mpiexec}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${LSL_TESTOUTDIR:-/tmp}/hfdir
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=$here/py
source "${BASH_SOURCE%/*}/../lib/harness.sh"
no() { not_ok "$1"; }

"$py" "$here/py/gen_model.py" --base "$out/base" --adapter "$out/adapter" --shard-kib 96 \
  --hidden 96 --intermediate 224 --vocab 771 --seed 5 >/dev/null
# what a server needs besides the weights, and what must not be carried
"${LSL_TORCH_PYTHON:-python3}" -c "
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
t = Tokenizer(models.WordLevel({'[UNK]': 0, 'hi': 1}, unk_token='[UNK]'))
t.pre_tokenizer = pre_tokenizers.Whitespace()
t.save(sys.argv[1])" "$out/base/tokenizer.json"
printf '{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}' >"$out/base/tokenizer_config.json"
printf '{"bos_token_id": 1, "eos_token_id": 2}' >"$out/base/generation_config.json"
printf '{%% for m in messages %%}{{ m.content }}{%% endfor %%}' >"$out/base/chat_template.jinja"
printf 'class X: pass\n' >"$out/base/modeling_x.py"
printf '\x00\x01binary' >"$out/base/tokenizer.model"
touch "$out/base/pytorch_model.bin" "$out/base/.hidden"
carried="chat_template.jinja generation_config.json modeling_x.py tokenizer.json tokenizer.model tokenizer_config.json"

m() { "$mpiexec" -n "$1" "$lsl" merge -q -b "$out/base" -a "$out/adapter" "${@:2}"; }
m 2 -o "$out/merged.h5" || no "merge to HDF5"
"$mpiexec" -n 2 "$lsl" convert -q --max-shard-size 120KB "$out/merged.h5" "$out/converted" ||
  no "convert"
for np in 1 2 3 4; do
  d=$out/dir-np$np
  if m $np -o "$d" --max-shard-size 120KB && "$mpiexec" -n $np "$lsl" verify -q "$d"; then
    ok "merge -o DIR at $np rank(s): $(ls "$d" | grep -c 'safetensors$') shards, verify passes"
  else
    no "merge -o DIR at $np rank(s)"
  fi
done
same=1
for np in 2 3 4; do diff -r "$out/dir-np1" "$out/dir-np$np" >/dev/null || same=0; done
[ $same = 1 ] && ok "the directories at 1-4 ranks are byte-identical" || no "rank counts differ"
if [ -n "$jobs_cb" ] &&
   LSL_TEST_MAX_SHARD=120000 "$mpiexec" -n 3 "$jobs_cb" merge "$out/base" "$out/adapter" "$out/dir-cb" &&
   diff -r "$out/dir-np1" "$out/dir-cb" >/dev/null; then
  ok "over callbacks: the same directory"
else
  [ -n "$jobs_cb" ] && no "over callbacks"
fi
diff_files=$(cd "$out/dir-np1" && for f in *; do
  case $f in loraslab.json | checksums.json) continue ;; esac
  cmp -s "$f" "$out/converted/$f" || echo "$f"; done)
[ -z "$diff_files" ] && [ "$(ls "$out/dir-np1")" = "$(ls "$out/converted")" ] &&
  ok "the directory is the converted archive: shards, index, config and serving files" ||
  no "direct write and convert differ: $diff_files"
"$py" "$here/py/compare_tensors.py" "$out/merged.h5" "$out/dir-np1" >/dev/null &&
  ok "every tensor equals the HDF5 file's" || no "tensors differ from the HDF5 file's"
# transformers lives beside torch (ci/install-deps.sh), not in the system python
"${LSL_TORCH_PYTHON:-python3}" - "$out/dir-np1" "$carried" <<'PY' && ok "index exact, serving files carried, transformers loads it" || no "index/serving files/load"
import json, os, sys
import torch, transformers
d, carried = sys.argv[1], sys.argv[2].split()
files = sorted(os.listdir(d))
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
from safetensors import safe_open
names, total = {}, 0
for f in files:
    if f.endswith(".safetensors"):
        with safe_open(os.path.join(d, f), "pt") as s:
            assert s.metadata() == {"format": "pt"}, f
            for k in s.keys():
                assert k not in names, f"{k} twice"
                names[k] = f
                t = s.get_tensor(k)
                total += t.numel() * t.element_size()
assert idx["weight_map"] == names, "weight_map"
assert idx["metadata"]["total_size"] == total, (idx["metadata"], total)
for f in carried:
    assert f in files, f"{f} not carried"
for f in ("pytorch_model.bin", ".hidden", "adapter_config.json"):
    assert f not in files, f"{f} carried"
m, info = transformers.AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info
tok = transformers.AutoTokenizer.from_pretrained(d)
assert tok.get_vocab().get("hi") == 1, tok.get_vocab()
PY
# The archive carries the serving files; convert restores them from it alone.
"$py" -c "import h5py,sys; f=h5py.File(sys.argv[1]); assert f.attrs['loraslab_format_version'] == 2; print(' '.join(sorted(f['files'])))" \
  "$out/merged.h5" | grep -qx "$carried" && ok "the HDF5 file carries the serving files (version 2)" ||
  no "serving files in the HDF5 file"
# A version 1 file (no /files) still converts.
cp "$out/merged.h5" "$out/v1.h5"
"$py" -c "import h5py,sys; f=h5py.File(sys.argv[1],'r+'); del f['files']; f.attrs.modify('loraslab_format_version', 1)" "$out/v1.h5"
"$mpiexec" -n 2 "$lsl" convert -q "$out/v1.h5" "$out/v1-dir" && "$mpiexec" -n 2 "$lsl" verify -q "$out/v1-dir" &&
  [ ! -e "$out/v1-dir/tokenizer.json" ] && ok "a version 1 file converts" || no "version 1 file"
# --format overrides the name; a directory where a file is asked for, and the reverse, refused.
m 2 -o "$out/named.h5" --format safetensors && [ -d "$out/named.h5" ] &&
  m 2 -o "$out/named-archive" --format h5 && [ -f "$out/named-archive" ] &&
  ok "--format safetensors / h5 override the name" || no "--format"
m 2 -o "$out/dir-np1" 2>"$out/exists.log"
[ $? -ne 0 ] && grep -q "exists" "$out/exists.log" && ok "an existing directory is refused without --overwrite" ||
  no "existing directory"
m 2 -o "$out/dir-np1" --overwrite --max-shard-size 120KB && diff -r "$out/dir-np1" "$out/dir-np2" >/dev/null &&
  ok "--overwrite replaces the directory" || no "--overwrite"
m 2 -o "$out/x" --format parquet 2>"$out/fmt.log"
[ $? -ne 0 ] && grep -q "format takes" "$out/fmt.log" && ok "--format parquet refused" || no "bad --format"
# Past 256 serving files the rest are skipped with a warning, the same ones every run (by name).
cp -r "$out/base" "$out/many" && for i in $(seq -w 1 300); do echo "$i" >"$out/many/extra-$i.txt"; done
"$mpiexec" -n 2 "$lsl" merge -b "$out/many" -a "$out/adapter" -o "$out/many-out" 2>"$out/many.log" >/dev/null
want=$(cd "$out/many" && ls | grep -v -e '\.safetensors$' -e '\.index\.json$' -e '\.bin$' -e '^config\.json$' |
  LC_ALL=C sort | head -256 | tr '\n' ' ')
got=$(cd "$out/many-out" && ls | grep -v -e '\.safetensors$' -e '\.index\.json$' -e '^config\.json$' \
  -e '^loraslab\.json$' -e '^checksums\.json$' | LC_ALL=C sort | tr '\n' ' ')
[ "$want" = "$got" ] && [ "$(grep -c 'more than 256 serving files' "$out/many.log")" = 50 ] &&
  ok "over 256 serving files: the first 256 by name carried, 50 named in warnings" ||
  no "over 256 serving files: got $(echo $got | wc -w), want $(echo $want | wc -w)"
ls -a "$out" | grep -q "lsl-tmp\|lsl-old" && no "a temporary was left" || ok "no temporary left"
finish
