"""loraslab.torch: a PyTorch job writes its merged LoRA checkpoint from the shards it holds.

    import loraslab.torch
    loraslab.torch.save_merged(model, "/lustre/run/merged.h5")   # on every rank
    loraslab.torch.convert("/lustre/run/merged.h5", "/lustre/run/hf")  # on every rank

Imports torch (this module only; `import loraslab` does not)."""
from __future__ import annotations

from ._save import convert, save_merged, verify

__all__ = ["convert", "save_merged", "verify"]
