"""What a PEFT model's merged checkpoint holds: one Item per tensor, named as PEFT's
`merge_and_unload()` + `save_pretrained()` name them, with the LoRA factors that merge into it.

The walk reads module structure only (no state_dict: under FSDP1 that would gather), so it sees
the parameters as the wrapper holds them (DTensors under FSDP2, full tensors under DDP)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Optional

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
    tensor: Any                  # the parameter or buffer (DTensor, plain, or an FSDP1 Piece)
    lora: Optional[Lora] = None


class Params:
    """A module's own parameters, and one reached by attribute path: as the module holds them
    (FSDP2, DDP, no wrapper).  FSDP1 holds them in flat parameters: FlatParams below."""

    def own(self, module: torch.nn.Module, raw: str) -> Iterator[tuple[str, Any]]:
        yield from module.named_parameters(recurse=False)

    def get(self, module: torch.nn.Module, raw: str, path: tuple) -> Any:
        obj: Any = module
        for p in path:
            obj = obj[p] if isinstance(obj, (torch.nn.ModuleDict, torch.nn.ParameterDict)) \
                else getattr(obj, p)
        return obj


class FlatParams(Params):
    """FSDP1: the pieces of its flat parameters, by name (raw: the module's path in the PEFT
    model's base model, wrapper names removed)."""

    def __init__(self, pieces: dict) -> None:
        self.pieces = pieces
        self.by_module: dict[str, list] = {}
        for name, piece in pieces.items():
            mod, _, pname = name.rpartition(".")
            self.by_module.setdefault(mod, []).append((pname, piece))

    def own(self, module: torch.nn.Module, raw: str) -> Iterator[tuple[str, Any]]:
        yield from self.by_module.get(_join("base_model.model", raw), [])

    def get(self, module: torch.nn.Module, raw: str, path: tuple) -> Any:
        name = ".".join(("base_model.model", raw) + tuple(path)) if raw else \
            ".".join(("base_model.model",) + tuple(path))
        if name not in self.pieces:
            raise KeyError(f"FSDP1: no flat-parameter piece for {name}")
        return self.pieces[name]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _lora_classes() -> tuple:
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    return LoraLayer, ModulesToSaveWrapper


def _lora_of(module: torch.nn.Module, adapter: str, what: str, params: Params, raw: str
             ) -> Optional[Lora]:
    """The LoRA of `adapter` that merges into the base layer's weight (what="weight") or bias."""
    get = lambda *path: params.get(module, raw, path)  # noqa: E731
    if adapter in getattr(module, "lora_A", {}):
        kind = "transposed" if getattr(module, "fan_in_fan_out", False) else "linear"
        if what == "bias":
            if getattr(module.lora_B[adapter], "bias", None) is None:
                return None
            kind = "bias"
        elif what != "weight":
            return None
        bw = get("lora_B", adapter, "bias" if what == "bias" else "weight")
        dev = bw.local.device if hasattr(bw, "local") else bw.device
        aw = torch.ones(1, 1, dtype=torch.float32, device=dev) if what == "bias" else \
            get("lora_A", adapter, "weight")
    elif adapter in getattr(module, "lora_embedding_A", {}):
        if what != "weight":
            return None
        kind = "embedding"
        aw, bw = get("lora_embedding_A", adapter), get("lora_embedding_B", adapter)
    else:
        return None
    mag = None
    if what == "weight" and module.use_dora.get(adapter, False):
        mag = get("lora_magnitude_vector", adapter, "weight")
    r = int(module.r[adapter])
    rslora = bool(module.use_rslora.get(adapter, False)) if hasattr(module, "use_rslora") else False
    scaling = float(module.scaling[adapter])
    alpha = float(module.lora_alpha[adapter])
    if not math.isfinite(scaling):
        raise ValueError(f"non-finite LoRA scaling {scaling}")
    return Lora(r if kind != "bias" else 1, alpha, scaling, rslora, kind, aw, bw, mag)


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The module an FSDP1 unit wraps (a child, not an attribute: PEFT's wrappers forward
    unknown attributes to the module they hold)."""
    inner = module._modules.get("_fsdp_wrapped_module")
    return inner if inner is not None else module


def walk(model: torch.nn.Module, adapter: str, params: Optional[Params] = None
         ) -> Iterator[Item]:
    """The merged tensors of `model` (the PEFT model's base: peft_model.base_model.model), in
    module order; a tensor shared by two modules (tied embeddings) appears once, first name."""
    LoraLayer, ModulesToSaveWrapper = _lora_classes()
    params = params or Params()
    seen: set[int] = set()

    def own(module: torch.nn.Module, prefix: str, raw: str,
            merge_from: Optional[torch.nn.Module], merge_raw: str) -> Iterator[Item]:
        for pname, p in params.own(module, raw):
            if id(p) in seen:
                continue
            seen.add(id(p))
            lora = _lora_of(merge_from, adapter, pname, params, merge_raw) \
                if merge_from is not None else None
            yield Item(_join(prefix, pname), p, lora)
        skip = getattr(module, "_non_persistent_buffers_set", set())
        for bname, buf in module.named_buffers(recurse=False):
            if buf is None or bname in skip or id(buf) in seen:
                continue
            seen.add(id(buf))
            yield Item(_join(prefix, bname), buf)

    def visit(module: torch.nn.Module, prefix: str, raw: str) -> Iterator[Item]:
        module = _unwrapped(module)
        if isinstance(module, LoraLayer):
            base = _unwrapped(module.get_base_layer())
            yield from own(base, prefix, _join(raw, "base_layer"), module, raw)
            for cname, child in base.named_children():
                yield from visit(child, _join(prefix, cname), _join(raw, f"base_layer.{cname}"))
            return
        if isinstance(module, ModulesToSaveWrapper):
            copies = module.modules_to_save
            if adapter in copies:
                yield from visit(copies[adapter], prefix, _join(raw, f"modules_to_save.{adapter}"))
            else:
                yield from visit(module.original_module, prefix, _join(raw, "original_module"))
            return
        yield from own(module, prefix, raw, None, "")
        for cname, child in module.named_children():
            if cname in _WRAPPER_NAMES:
                yield from visit(child, prefix, raw)
            else:
                yield from visit(child, _join(prefix, cname), _join(raw, cname))

    yield from visit(model, "", "")
