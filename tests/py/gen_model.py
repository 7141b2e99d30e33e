#!/usr/bin/python3
"""Generate a deterministic Qwen2-shaped base checkpoint and a PEFT LoRA adapter.

  gen_model.py --base DIR [--adapter DIR] [shape and adapter options]

The base is written the way transformers writes it (model.safetensors, or shards plus
model.safetensors.index.json when --shard-kib is given); the adapter the way PEFT's
save_pretrained does (adapter_config.json, adapter_model.safetensors with
base_model.model.<module>.lora_{A,B}.weight keys).  Values are random but seeded, non-zero,
and scaled like trained weights (biases included, unlike tiny hub models).
"""
import argparse
import json
import os

import numpy as np

import lsl_st

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gpt2_tensors(a):
    """GPT-2 layout: Conv1D weights stored [in, out] (fan_in_fan_out)."""
    H, V = a.hidden, a.vocab
    out = [("transformer.wte.weight", [V, H]), ("transformer.wpe.weight", [64, H])]
    for i in range(a.layers):
        p = f"transformer.h.{i}."
        out += [(p + "ln_1.weight", [H]), (p + "ln_1.bias", [H]),
                (p + "attn.c_attn.weight", [H, 3 * H]), (p + "attn.c_attn.bias", [3 * H]),
                (p + "attn.c_proj.weight", [H, H]), (p + "attn.c_proj.bias", [H]),
                (p + "ln_2.weight", [H]), (p + "ln_2.bias", [H]),
                (p + "mlp.c_fc.weight", [H, 4 * H]), (p + "mlp.c_fc.bias", [4 * H]),
                (p + "mlp.c_proj.weight", [4 * H, H]), (p + "mlp.c_proj.bias", [H])]
    return out + [("transformer.ln_f.weight", [H]), ("transformer.ln_f.bias", [H])]


def qwen2_tensors(a):
    """(name, shape) in state-dict order."""
    if a.gpt2:
        return gpt2_tensors(a)
    H, I, V = a.hidden, a.intermediate, a.vocab
    kv = a.kv_heads * (H // a.heads)
    out = [("model.embed_tokens.weight", [V, H])]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [H]),
            (p + "self_attn.q_proj.weight", [H, H]), (p + "self_attn.q_proj.bias", [H]),
            (p + "self_attn.k_proj.weight", [kv, H]), (p + "self_attn.k_proj.bias", [kv]),
            (p + "self_attn.v_proj.weight", [kv, H]), (p + "self_attn.v_proj.bias", [kv]),
            (p + "self_attn.o_proj.weight", [H, H]),
            (p + "post_attention_layernorm.weight", [H]),
            (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
            (p + "mlp.down_proj.weight", [H, I]),
        ]
    out.append(("model.norm.weight", [H]))
    if not a.tie:
        out.append(("lm_head.weight", [V, H]))
    return out


def encode(dtype, x):
    if dtype == "BF16":
        return lsl_st.f32_to_bf16_bits(x.astype(np.float32))
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    return x.astype(np.float32)


def rand(rng, shape, scale):
    return rng.standard_normal(size=shape, dtype=np.float32) * np.float32(scale)


def write_base(a, rng):
    os.makedirs(a.base, exist_ok=True)
    tensors = []
    for name, shape in qwen2_tensors(a):
        if name.endswith("norm.weight"):
            x = 1.0 + rand(rng, shape, 0.05)
        elif name.endswith(".bias"):
            x = rand(rng, shape, 0.1)
        else:
            x = rand(rng, shape, 0.02)
        tensors.append((name, a.dtype, encode(a.dtype, x), shape))
    limit = a.shard_kib << 10 if a.shard_kib else None
    shards, cur, size = [], {}, 0
    for name, dt, arr, shape in tensors:
        nb = arr.nbytes
        if limit and cur and size + nb > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = (dt, arr, shape)
        size += nb
    shards.append(cur)
    if len(shards) == 1:
        lsl_st.write(os.path.join(a.base, "model.safetensors"), shards[0])
    else:
        wm, total = {}, 0
        for k, s in enumerate(shards):
            fn = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            lsl_st.write(os.path.join(a.base, fn), s)
            for n, (dt, arr, shape) in s.items():
                wm[n] = fn
                total += arr.nbytes
        with open(os.path.join(a.base, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2,
                      sort_keys=True)
            f.write("\n")
    kv = a.kv_heads
    cfg = {
        "architectures": ["GPT2LMHeadModel" if a.gpt2 else "Qwen2ForCausalLM"],
        "model_type": "gpt2" if a.gpt2 else "qwen2", "hidden_size": a.hidden,
        "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads, "num_key_value_heads": kv, "vocab_size": a.vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": a.tie, "hidden_act": "silu",
        "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[a.dtype],
        "use_sliding_window": False, "bos_token_id": 0, "eos_token_id": 1,
    }
    with open(os.path.join(a.base, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return {n: (s, t) for (n, s), (_, _, t, _) in zip(qwen2_tensors(a), tensors)}


def decode(dtype, arr):
    return lsl_st.to_f64(dtype, arr)


def write_adapter(a, rng, base):
    """base: {name: (shape, stored array)}."""
    os.makedirs(a.adapter, exist_ok=True)
    targets = a.targets.split(",")
    rank_pattern = json.loads(a.rank_pattern) if a.rank_pattern else {}
    alpha_pattern = json.loads(a.alpha_pattern) if a.alpha_pattern else {}
    import re

    def pick(pat, module, default):
        for k, v in pat.items():
            if re.match(rf"(.*\.)?({k})$", module):
                return v
        return default

    tensors = {}
    for name, (shape, arr) in base.items():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[: -len(".weight")]
        if module.split(".")[-1] not in targets:
            continue
        r = pick(rank_pattern, module, a.r)
        alpha = pick(alpha_pattern, module, a.alpha)
        s = alpha / np.sqrt(r) if a.rslora else alpha / r
        key = "base_model.model." + module
        emb = module.split(".")[-1] in ("embed_tokens", "wte")
        if emb:  # lora_embedding_A [r, vocab], lora_embedding_B [dim, r]; PEFT also saves the
            # targeted embedding's base layer (save_embedding_layers="auto"): W0 comes from it
            tensors[key + ".base_layer.weight"] = (a.dtype, arr, list(shape))
            A = rand(rng, [r, shape[0]], 1.0)
            B = rand(rng, [shape[1], r], a.b_scale)
            tensors[key + ".lora_embedding_A"] = (a.adapter_dtype, encode(a.adapter_dtype, A), [r, shape[0]])
            tensors[key + ".lora_embedding_B"] = (a.adapter_dtype, encode(a.adapter_dtype, B), [shape[1], r])
        else:
            in_f, out_f = (shape[0], shape[1]) if a.gpt2 else (shape[1], shape[0])
            A = rand(rng, [r, in_f], 1.0 / np.sqrt(in_f))
            B = rand(rng, [out_f, r], a.b_scale)
            tensors[key + ".lora_A.weight"] = (a.adapter_dtype, encode(a.adapter_dtype, A), [r, in_f])
            tensors[key + ".lora_B.weight"] = (a.adapter_dtype, encode(a.adapter_dtype, B), [out_f, r])
        if a.dora:  # a magnitude near each row's norm, as training leaves it
            Ad = decode(a.adapter_dtype, encode(a.adapter_dtype, A))
            Bd = decode(a.adapter_dtype, encode(a.adapter_dtype, B))
            delta = Bd @ Ad
            V = decode(a.dtype, arr) + s * (delta.T if emb or a.gpt2 else delta)
            ax = 0 if a.gpt2 else 1  # Conv1D stores [in, out]: one magnitude per column
            m = np.linalg.norm(V, axis=ax) * (1 + 0.1 * rng.standard_normal(V.shape[1 - ax]))
            tensors[key + ".lora_magnitude_vector"] = ("F32", m.astype(np.float32), [V.shape[1 - ax]])
        if a.lora_bias:
            out_f = shape[0] if not a.gpt2 else shape[1]
            v = rand(rng, [out_f], 0.05)
            tensors[key + ".lora_B.bias"] = (a.adapter_dtype, encode(a.adapter_dtype, v), [out_f])
        if a.trained_bias and module + ".bias" in base:
            bshape = base[module + ".bias"][0]
            tensors[key + ".base_layer.bias"] = ("F32", rand(rng, bshape, 0.1), bshape)
    for mod in (a.modules_to_save.split(",") if a.modules_to_save else []):
        shape = base[mod + ".weight"][0]
        tensors["base_model.model." + mod + ".weight"] = ("F32", rand(rng, shape, 0.02), shape)
    lsl_st.write(os.path.join(a.adapter, "adapter_model.safetensors"), tensors)
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.r, "lora_alpha": a.alpha,
        "lora_dropout": 0.0, "use_rslora": a.rslora, "use_dora": a.dora,
        "fan_in_fan_out": a.gpt2, "bias": "lora_only" if a.trained_bias else "none",
        "target_modules": targets, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "modules_to_save": a.modules_to_save.split(",") if a.modules_to_save else None,
        "init_lora_weights": True,
        "base_model_name_or_path": os.path.basename(os.path.normpath(a.base)),
        "inference_mode": True, "lora_bias": a.lora_bias,
    }
    with open(os.path.join(a.adapter, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=160)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=257)
    p.add_argument("--dtype", default="BF16", choices=["BF16", "F16", "F32"])
    p.add_argument("--tie", action="store_true", help="tied embeddings: no lm_head.weight")
    p.add_argument("--shard-kib", type=int, default=0, help="split the base into shards of about this size")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--b-scale", type=float, default=0.01)
    p.add_argument("--adapter-dtype", default="F32", choices=["BF16", "F16", "F32"])
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--rank-pattern", help='JSON object, e.g. {"q_proj": 4}')
    p.add_argument("--alpha-pattern", help="JSON object")
    p.add_argument("--dora", action="store_true", help="use_dora: lora_magnitude_vector per module")
    p.add_argument("--lora-bias", action="store_true", help="lora_bias: lora_B.bias per module")
    p.add_argument("--trained-bias", action="store_true", help='bias="lora_only": trained base biases')
    p.add_argument("--modules-to-save", help="comma-separated modules stored whole (F32) in the adapter")
    p.add_argument("--gpt2", action="store_true",
                   help="GPT-2 layout (Conv1D [in, out] weights; the adapter sets fan_in_fan_out)")
    a = p.parse_args()
    a.dtype = a.dtype.upper()
    rng = np.random.default_rng(a.seed)
    base = write_base(a, rng)
    if a.adapter:
        write_adapter(a, rng, base)


if __name__ == "__main__":
    main()
