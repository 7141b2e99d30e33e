#!/usr/bin/env python3
"""On the GPU machine (torch, transformers, peft, safetensors): loraslab against PEFT itself.

  check_hf.py BUILD/loraslab WORKDIR NP

1. A small random Qwen2 model (bf16) saved with save_pretrained; for each LoRA option loraslab
   supports, an adapter made by PEFT (init_lora_weights=False: random non-zero A and B) and saved
   with save_pretrained; loraslab merges it (NP ranks) and converts it; every tensor is compared
   with PEFT's own merge_and_unload() state dict: within 1 bf16 ulp, exact on >= 99%.
2. Options loraslab refuses must fail with a message naming the option and leave no file.
3. The converted directory: the safetensors library opens every shard; transformers loads it
   with AutoModelForCausalLM.from_pretrained; its logits on a fixed prompt are compared with the
   PEFT-merged model's (max abs diff printed).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

lsl, work, np_ranks = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
dev = "cuda"
torch.manual_seed(1234)
cfg = Qwen2Config(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False)
base = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
with torch.no_grad():  # non-zero biases, like a trained Qwen2
    for n, p in base.named_parameters():
        if n.endswith("bias"):
            p.normal_(0, 0.05)
base.save_pretrained(f"{work}/base")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def why(r):
    """The loraslab error line, without mpiexec's boilerplate."""
    lines = [l for l in (r.stderr or "").splitlines() if "loraslab" in l and "error" in l]
    return (lines[0] if lines else (r.stderr or "").strip()[-160:]).replace("|", "/")[:200]


def mpirun(*args):
    return subprocess.run(["mpiexec", "-n", np_ranks, "--oversubscribe", lsl, *args],
                          capture_output=True, text=True)


def fresh_base():
    m = AutoModelForCausalLM.from_pretrained(f"{work}/base", torch_dtype=torch.bfloat16)
    return m.to(dev)


def ulps(a, b):
    a = a.contiguous().view(torch.int16).to(torch.int32).cpu().numpy()
    b = b.contiguous().view(torch.int16).to(torch.int32).cpu().numpy()
    oa = np.where(a < 0, -(a & 0x7FFF), a)
    ob = np.where(b < 0, -(b & 0x7FFF), b)
    return np.abs(oa - ob)


rows, failures = [], 0
supported = {
    "plain r=8 alpha=16": dict(r=8, lora_alpha=16),
    "use_rslora": dict(r=8, lora_alpha=16, use_rslora=True),
    "rank_pattern+alpha_pattern": dict(r=8, lora_alpha=16, rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2},
                                       alpha_pattern={"v_proj": 5}),
    "bf16 adapter weights": dict(r=16, lora_alpha=8, _bf16=True),
    "use_dora": dict(r=8, lora_alpha=16, use_dora=True),
    "lora_bias (q/k/v)": dict(r=8, lora_alpha=16, lora_bias=True, _targets=["q_proj", "k_proj", "v_proj"]),
    "bias=lora_only": dict(r=8, lora_alpha=16, bias="lora_only", _train_bias=True),
    "modules_to_save lm_head": dict(r=8, lora_alpha=16, modules_to_save=["lm_head"], _perturb="lm_head"),
    "LoRA on embed_tokens": dict(r=8, lora_alpha=16, _targets=["embed_tokens", "q_proj"]),
    # the merge on the GPU (fp32 accumulation, as PEFT's own merge on the GPU)
    "plain r=32, merge --device cuda": dict(r=32, lora_alpha=64, _device="cuda"),
    "bf16 adapter, rsLoRA, merge --device cuda": dict(r=16, lora_alpha=8, use_rslora=True, _bf16=True,
                                                     _device="cuda"),
}
for name, kw in supported.items():
    kw = dict(kw)
    bf16 = kw.pop("_bf16", False)
    targets = kw.pop("_targets", TARGETS)
    train_bias, perturb = kw.pop("_train_bias", False), kw.pop("_perturb", None)
    device = kw.pop("_device", "cpu")
    torch.manual_seed(len(rows) + 7)
    pm = get_peft_model(fresh_base(), LoraConfig(target_modules=targets, init_lora_weights=False, **kw))
    with torch.no_grad():  # what training would have changed besides A and B
        for n, p in pm.named_parameters():
            if (train_bias and n.endswith("bias") and "lora" not in n) or \
               (perturb and f"{perturb}.modules_to_save" in n) or "lora_magnitude_vector" in n or \
               ("lora_B" in n and n.endswith("bias")):
                p.add_(torch.randn_like(p) * 0.01)
    if bf16:
        pm = pm.to(torch.bfloat16)
    ad = f"{work}/adapter-{len(rows)}"
    pm.save_pretrained(ad)
    # The reference is what a user gets: the saved adapter loaded the way PEFT loads it (its
    # default autocast_adapter_dtype upcasts bf16/fp16 LoRA weights to fp32), then merged.
    loaded = PeftModel.from_pretrained(fresh_base(), ad)
    ref = {k: v.detach() for k, v in loaded.merge_and_unload().state_dict().items()}
    h5, out = f"{work}/m{len(rows)}.h5", f"{work}/hf{len(rows)}"
    r1 = mpirun("merge", "-q", "--device", device, "-b", f"{work}/base", "-a", ad, "-o", h5)
    r2 = mpirun("convert", "-q", "--max-shard-size", "200KB", h5, out) if r1.returncode == 0 else r1
    worst, exact, total, bad = 0, 0, 0, []
    if r2.returncode == 0:
        for shard in sorted(f for f in os.listdir(out) if f.endswith(".safetensors")):
            with safe_open(f"{out}/{shard}", framework="pt", device="cpu") as f:
                for k in f.keys():
                    got, want = f.get_tensor(k), ref[k].cpu()
                    d = ulps(got, want)
                    worst, exact, total = max(worst, int(d.max())), exact + int((d == 0).sum()), total + d.size
                    if d.max() > 1:
                        bad.append(k)
        missing = set(ref) - set(json.load(open(f"{out}/loraslab.json"))["tensors"])
        ok = not bad and not missing and exact >= 0.99 * total
    else:
        ok = False
    failures += not ok
    rows.append((name, "PASS" if ok else "FAIL",
                 f"worst {worst} ulp, {100.0 * exact / max(total, 1):.3f}% exact" if r2.returncode == 0
                 else why(r1 if r1.returncode else r2)))

# GPT-2: Conv1D layers stored [in, out]; PEFT sets fan_in_fan_out for them.
from transformers import GPT2Config, GPT2LMHeadModel
g2 = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=64)).to(torch.bfloat16)
g2.save_pretrained(f"{work}/gpt2")
for gname, gkw in {"fan_in_fan_out (GPT-2 Conv1D)": {}, "use_dora + fan_in_fan_out (GPT-2)": {"use_dora": True}}.items():
    torch.manual_seed(99)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(f"{work}/gpt2", torch_dtype=torch.bfloat16).to(dev),
                        LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, fan_in_fan_out=True,
                                   target_modules=["c_attn", "c_proj", "c_fc"], **gkw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:
                p.add_(torch.randn_like(p) * 0.01)
    gad = f"{work}/gpt2-ad-{len(rows)}"
    pm.save_pretrained(gad)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f"{work}/gpt2", torch_dtype=torch.bfloat16).to(dev), gad)
    gref = {k: v.detach() for k, v in loaded.merge_and_unload().state_dict().items()}
    r1 = mpirun("merge", "-q", "-b", f"{work}/gpt2", "-a", gad, "-o", f"{work}/gpt2-{len(rows)}.h5")
    r2 = mpirun("convert", "-q", f"{work}/gpt2-{len(rows)}.h5", f"{work}/gpt2-hf-{len(rows)}") if r1.returncode == 0 else r1
    ok, detail = r2.returncode == 0, why(r2)
    if ok:
        worst, exact, total = 0, 0, 0
        with safe_open(f"{work}/gpt2-hf-{len(rows)}/model.safetensors", framework="pt") as f:
            for k in f.keys():
                if k not in gref:
                    continue
                d = ulps(f.get_tensor(k), gref[k].cpu())
                worst, exact, total = max(worst, int(d.max())), exact + int((d == 0).sum()), total + d.size
        ok = worst <= 1 and exact >= 0.99 * total
        detail = f"worst {worst} ulp, {100.0 * exact / total:.3f}% exact"
    failures += not ok
    rows.append((gname, "PASS" if ok else "FAIL", detail))

refused = {"lora_bias on o_proj (no base bias)": ("lora_bias", dict(lora_bias=True, target_modules=["o_proj"])),
           "DoRA on embed_tokens": ("DoRA on embeddings", dict(use_dora=True, target_modules=["embed_tokens"]))}
for name, (needle, kw) in refused.items():
    pm = get_peft_model(fresh_base(), LoraConfig(init_lora_weights=False, **kw))
    ad = f"{work}/refuse-{len(rows)}"
    pm.save_pretrained(ad)
    h5 = f"{work}/refuse-{len(rows)}.h5"
    r = mpirun("merge", "-q", "-b", f"{work}/base", "-a", ad, "-o", h5)
    ok = r.returncode != 0 and needle in r.stderr and not os.path.exists(h5)
    failures += not ok
    rows.append((f"refuse {name}", "PASS" if ok else "FAIL", why(r)))

# transformers loads the converted directory; logits against PEFT's merged model.
pm = get_peft_model(fresh_base(), LoraConfig(target_modules=TARGETS, init_lora_weights=False, r=8, lora_alpha=16))
pm.save_pretrained(f"{work}/adapter-logits")
merged = pm.merge_and_unload().eval()
r = mpirun("merge", "-q", "-b", f"{work}/base", "-a", f"{work}/adapter-logits", "-o", f"{work}/logits.h5")
r = mpirun("convert", "-q", "--max-shard-size", "300KB", f"{work}/logits.h5", f"{work}/hf-logits") if r.returncode == 0 else r
ok = r.returncode == 0
if ok:
    for shard in os.listdir(f"{work}/hf-logits"):
        if shard.endswith(".safetensors"):
            with safe_open(f"{work}/hf-logits/{shard}", framework="pt") as f:
                assert f.metadata() == {"format": "pt"}
    lm = AutoModelForCausalLM.from_pretrained(f"{work}/hf-logits", torch_dtype=torch.bfloat16).to(dev).eval()
    ids = torch.tensor([[1, 17, 99, 250, 3, 512, 7, 1000, 42, 8]], device=dev)
    with torch.no_grad():
        a, b = lm(ids).logits.float(), merged(ids).logits.float()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    ok = diff <= 0.02 * scale
    rows.append(("transformers loads convert output", "PASS" if ok else "FAIL",
                 f"logits max abs diff {diff:.3g} (logit scale {scale:.3g}), "
                 f"{len([s for s in os.listdir(f'{work}/hf-logits') if s.endswith('.safetensors')])} shards"))
else:
    rows.append(("transformers loads convert output", "FAIL", why(r)))
failures += not ok
print("\n| PEFT check | result | detail |\n| --- | --- | --- |")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
print(f"check_hf: {len(rows) - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
