#!/usr/bin/env python3
"""What users do today, timed on the same shapes as bench_gpu write (GPU machine only).

  bench_peers.py DIR LAYERS [recipe|peft|save]

Qwen2.5-7B shapes (hidden 3584, intermediate 18944, 28/4 heads, vocab 152064), LAYERS layers,
bf16 base, fp32 LoRA r=32 on all seven projections, everything generated on the GPU.
 recipe: merge each weight on the GPU in fp32, copy it into torch.empty(pin_memory=True), then
         safetensors.torch.save_file (reference/peers.md section d).
 peft:   PEFT merge_and_unload() + save_pretrained(safe_serialization).
 save:   write the same model to DIR/base and its PEFT adapter to DIR/adapter (for
         tests/bench/bench_offline.sh, which times `loraslab merge` from files).
Prints seconds, GB/s of the output, and peak host RSS growth over the process's baseline.
"""
import os
import resource
import shutil
import sys
import time

import torch

out, L = sys.argv[1], int(sys.argv[2])
H, I, V, KV, R = 3584, 18944, 152064, 512, 32
dev = "cuda"


def rss_peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shapes():
    s = [("model.embed_tokens.weight", (V, H), False)]
    for l in range(L):
        p = f"model.layers.{l}."
        s += [(p + "self_attn.q_proj.weight", (H, H), True), (p + "self_attn.k_proj.weight", (KV, H), True),
              (p + "self_attn.v_proj.weight", (KV, H), True), (p + "self_attn.o_proj.weight", (H, H), True),
              (p + "mlp.gate_proj.weight", (I, H), True), (p + "mlp.up_proj.weight", (I, H), True),
              (p + "mlp.down_proj.weight", (H, I), True), (p + "input_layernorm.weight", (H,), False),
              (p + "post_attention_layernorm.weight", (H,), False)]
    return s + [("lm_head.weight", (V, H), False)]


def recipe():
    g = torch.Generator(device=dev).manual_seed(0)
    ws = {n: (torch.randn(s, device=dev, generator=g) * 0.02).to(torch.bfloat16) for n, s, _ in shapes()}
    ab = {n: (torch.randn(R, s[1], device=dev, generator=g) * 0.02, torch.randn(s[0], R, device=dev, generator=g) * 0.02)
          for n, s, lora in shapes() if lora}
    torch.cuda.synchronize()
    base, t0 = rss_now(), time.time()
    pinned = {}
    for n, s, lora in shapes():
        w = ws[n]
        if lora:
            a, b = ab[n]
            w = (w.float() + 2.0 * (b @ a)).to(torch.bfloat16)
        p = torch.empty(w.shape, dtype=w.dtype, pin_memory=True)
        p.copy_(w)
        pinned[n] = p
    from safetensors.torch import save_file
    path = f"{out}/recipe.safetensors"
    save_file(pinned, path, metadata={"format": "pt"})
    os.sync()
    t = time.time() - t0
    size = os.path.getsize(path)
    os.remove(path)
    return t, size, rss_peak() - base


def model(save_base_to=None):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                      num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
    with torch.device(dev):
        m = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    if save_base_to:
        m.save_pretrained(save_base_to, safe_serialization=True, max_shard_size="5GB")
    return get_peft_model(m, LoraConfig(r=R, lora_alpha=64, init_lora_weights=False,
                                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"]))


def save():
    pm = model(f"{out}/base")
    pm.save_pretrained(f"{out}/adapter")
    print(f"saved {out}/base and {out}/adapter")


def peft():
    pm = model()
    torch.cuda.synchronize()
    base, t0 = rss_now(), time.time()
    merged = pm.merge_and_unload()
    d = f"{out}/peft-out"
    merged.save_pretrained(d, safe_serialization=True, max_shard_size="50GB")
    os.sync()
    t = time.time() - t0
    size = sum(os.path.getsize(f"{d}/{f}") for f in os.listdir(d) if f.endswith(".safetensors"))
    shutil.rmtree(d)
    return t, size, rss_peak() - base


which = sys.argv[3] if len(sys.argv) > 3 else "recipe"
if which == "save":
    save()
    sys.exit(0)
t, size, grow = recipe() if which == "recipe" else peft()
print(f"RESULT peer={which} L={L} dir={out} seconds={t:.3f} bytes={size} gbs={size / t / 1e9:.3f} "
      f"rss_growth_mib={grow / 1048576:.1f}")
