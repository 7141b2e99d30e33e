"""What a PEFT model's merged checkpoint holds: one Item per tensor, named as PEFT's
`merge_and_unload()` + `save_pretrained()` name them, with the LoRA factors that merge into it.

The walk reads module structure only (no state_dict: under FSDP1 that would gather), so it sees
the parameters as the wrapper holds them (DTensors under FSDP2, full tensors under DDP)."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import torch

# Names wrappers insert between a module and its children (torch.distributed.fsdp's
# clean_tensor_name, activation checkpointing, torch.compile).
_WRAPPER_NAMES = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


@dataclasses.dataclass
class Lora:
    """One merge: W += scaling * delta, the factors as the module holds them."""
    r: int
    alpha: float
    scaling: float
    rslora: bool
    kind: str                    # "linear", "transposed" (fan_in_fan_out), "embedding", "bias"
    a: torch.Tensor              # lora_A weight [r, in] (embedding: lora_embedding_A [r, rows])
    b: torch.Tensor              # lora_B weight [out, r] (embedding: lora_embedding_B [cols, r])
    magnitude: Optional[torch.Tensor] = None  # DoRA


@dataclasses.dataclass
class Item:
    name: str                    # the HF tensor name
    tensor: torch.Tensor         # the parameter or buffer (DTensor or plain)
    lora: Optional[Lora] = None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _lora_classes() -> tuple:
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    return LoraLayer, ModulesToSaveWrapper


def _lora_of(module: torch.nn.Module, adapter: str, what: str) -> Optional[Lora]:
    """The LoRA of `adapter` that merges into the base layer's weight (what="weight") or bias."""
    if adapter in getattr(module, "lora_A", {}):
        a, b = module.lora_A[adapter], module.lora_B[adapter]
        kind = "transposed" if getattr(module, "fan_in_fan_out", False) else "linear"
        if what == "bias":
            if b.bias is None:
                return None
            kind = "bias"
        elif what != "weight":
            return None
        bw = b.bias if what == "bias" else b.weight
        aw = torch.ones(1, 1, dtype=torch.float32, device=bw.device) if what == "bias" else a.weight
    elif adapter in getattr(module, "lora_embedding_A", {}):
        if what != "weight":
            return None
        kind, aw, bw = "embedding", module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
    else:
        return None
    mag = None
    if what == "weight" and module.use_dora.get(adapter, False):
        mag = module.lora_magnitude_vector[adapter].weight
    r = int(module.r[adapter])
    rslora = bool(module.use_rslora.get(adapter, False)) if hasattr(module, "use_rslora") else False
    scaling = float(module.scaling[adapter])
    alpha = float(module.lora_alpha[adapter])
    if not math.isfinite(scaling):
        raise ValueError(f"non-finite LoRA scaling {scaling}")
    return Lora(r if kind != "bias" else 1, alpha, scaling, rslora, kind, aw, bw, mag)


def walk(model: torch.nn.Module, adapter: str) -> Iterator[Item]:
    """The merged tensors of `model` (the PEFT model's base: peft_model.base_model.model), in
    module order; a tensor shared by two modules (tied embeddings) appears once, first name."""
    LoraLayer, ModulesToSaveWrapper = _lora_classes()
    seen: set[int] = set()

    def own(module: torch.nn.Module, prefix: str, merge_from: Optional[torch.nn.Module]
            ) -> Iterator[Item]:
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            lora = _lora_of(merge_from, adapter, pname) if merge_from is not None else None
            yield Item(_join(prefix, pname), p, lora)
        skip = getattr(module, "_non_persistent_buffers_set", set())
        for bname, buf in module.named_buffers(recurse=False):
            if buf is None or bname in skip or id(buf) in seen:
                continue
            seen.add(id(buf))
            yield Item(_join(prefix, bname), buf)

    def visit(module: torch.nn.Module, prefix: str) -> Iterator[Item]:
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            yield from own(base, prefix, module)
            for cname, child in base.named_children():
                yield from visit(child, _join(prefix, cname))
            return
        if isinstance(module, ModulesToSaveWrapper):
            copies = module.modules_to_save
            yield from visit(copies[adapter] if adapter in copies else module.original_module,
                             prefix)
            return
        yield from own(module, prefix, None)
        for cname, child in module.named_children():
            yield from visit(child, prefix if cname in _WRAPPER_NAMES else _join(prefix, cname))

    yield from visit(model, "")
