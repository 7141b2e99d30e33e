"""The scale benchmark's shapes and the bytes of their merged checkpoint (no torch: the driver
uses them too)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int


SHAPES = {
    "qwen32b": Shape(5120, 27648, 40, 8, 152064),  # Qwen2.5-32B
    "qwen7b": Shape(3584, 18944, 28, 4, 152064),  # Qwen2.5-7B (the earlier bench's)
    "tiny": Shape(64, 160, 4, 2, 1000),  # the CPU smoke run
}


def merged_bytes(s: Shape, layers: int) -> int:
    """Bytes of the merged bf16 checkpoint (what every row writes)."""
    kv = s.hidden // s.heads * s.kv_heads
    per_layer = (2 * s.hidden * s.hidden + 2 * kv * s.hidden + 2 * kv + s.hidden  # attention
                 + 3 * s.hidden * s.intermediate + 2 * s.hidden)  # mlp, norms
    return 2 * (layers * per_layer + 2 * s.vocab * s.hidden + s.hidden)
