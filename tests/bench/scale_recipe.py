"""The motivating report's export (reference/motivating-report.md), re-done for the benchmark:
inside FSDP1's summon_full_params (each unit's own parameters, then each LoRA layer's, the
LoRA factors' units with it), merge each LoRA layer on the GPU (W + get_delta_weight) and
copy the result into a pinned host tensor (torch's pinned allocator rounds each up to a power of
two), copy every other leaf's state to the host, rename the keys, then safetensors' save_file.
One change: a synchronize before the save (the report copies non_blocking and saves at once)."""
from __future__ import annotations

import os

import torch

_STRIP = ((".base_layer.", "."), ("_fsdp_wrapped_module.", ""), ("base_model.", ""),
          (".model.", "."))


def state_dict(model: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The report's merged state dict of an FSDP1-wrapped PEFT model, on the host (collective:
    every rank summons, every rank holds it all)."""
    from peft.tuners.lora.layer import LoraLayer
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    pin = torch.cuda.is_available()
    sd: dict[str, torch.Tensor] = {}

    def pinned_copy(t: torch.Tensor) -> torch.Tensor:
        h = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
        h.copy_(t, non_blocking=pin)
        return h

    @torch.no_grad()
    def walk(mod: torch.nn.Module, prefix: str) -> None:
        kids = list(mod.named_children())
        for name, m in kids:
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(m, LoraLayer):
                with FSDP.summon_full_params(m, writeback=False):
                    base = m.base_layer
                    w = (base.weight.data + m.get_delta_weight(adapter)).to(base.weight.dtype)
                    sd[full + ".weight"] = pinned_copy(w)
                    if base.bias is not None:
                        bias = base.bias.data
                        if m.lora_bias.get(adapter):  # PEFT's rule (the report has no bias LoRA)
                            bias = bias + m.lora_B[adapter].bias * m.scaling[adapter]
                        sd[full + ".bias"] = pinned_copy(bias.to(base.bias.dtype))
            elif isinstance(m, FSDP):  # its own parameters only, as the report: recurse=False
                with FSDP.summon_full_params(m, recurse=False, writeback=False):
                    walk(m, full)
            else:
                walk(m, full)
        if not kids:
            for n, t in mod.state_dict().items():  # (on the CPU, .cpu() would keep a view
                # of the summoned storage, which FSDP frees on exit)
                sd[f"{prefix}.{n}"] = t.cpu() if t.is_cuda else t.clone()

    with FSDP.summon_full_params(model, recurse=False, writeback=False):
        walk(model, "")
    if pin:
        torch.cuda.synchronize()
    out = {}
    for k, v in sd.items():
        for a, b in _STRIP:
            k = k.replace(a, b)
        out[k] = v
    return out


def export(model: torch.nn.Module, path: str, adapter: str = "default") -> None:
    from safetensors.torch import save_file
    save_file(state_dict(model, adapter), path, metadata={"format": "pt"})
    os.sync()
