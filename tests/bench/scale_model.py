"""The scale benchmark's model: Qwen2.5 shapes, bf16 base, fp32 LoRA r=32 on all seven
projections (init_lora_weights=False), built on the device, wrapped as a row asks."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from scale_shapes import SHAPES

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA = 32, 64


def init_dist(device: str) -> None:
    """A world of one, as `torchrun --nproc-per-node 1` gives (NCCL for the GPU)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29600 + os.getpid() % 300))
    backend = "cuda:nccl,cpu:gloo" if device == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    if device == "cuda":  # a training job's NCCL communicator exists when it saves
        torch.cuda.set_device(0)
        dist.all_reduce(torch.ones(1, device=device))


def build(shape: str, layers: int, device: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config
    s = SHAPES[shape]
    cfg = Qwen2Config(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                      num_hidden_layers=layers, num_attention_heads=s.heads,
                      num_key_value_heads=s.kv_heads, tie_word_embeddings=False,
                      max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):  # generated where it trains: a 32B base does not touch the host
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, init_lora_weights=False,
                                            target_modules=TARGETS))


def wrap(peft: torch.nn.Module, how: str, device: str) -> torch.nn.Module:
    """fsdp2: fully_shard per decoder layer and the root.  fsdp1: the motivating report's
    wrapping (PEFT's auto-wrap policy, FULL_SHARD, use_orig_params=False, bf16 MixedPrecision)."""
    if how == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(device, (dist.get_world_size(),))
        for layer in peft.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(peft, mesh=mesh)
        return peft
    if how == "fsdp1":
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
        return FullyShardedDataParallel(
            peft, auto_wrap_policy=fsdp_auto_wrap_policy(peft), use_orig_params=False,
            sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=torch.device(device),
            mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                           buffer_dtype=torch.float32))
    return peft
