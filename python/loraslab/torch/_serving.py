"""The files a server loads beside the weights, as save_pretrained writes them: the model's
generation config and the tokenizer's files.  Every rank computes them (cheap, and a failure then
reaches save_merged's agreement like any other); the writer takes rank 0's."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import torch

from .._capi import OUTPUT_AUTO, OUTPUT_HDF5, OUTPUT_SAFETENSORS

FORMATS = {None: OUTPUT_AUTO, "safetensors": OUTPUT_SAFETENSORS, "hf": OUTPUT_SAFETENSORS,
           "h5": OUTPUT_HDF5, "hdf5": OUTPUT_HDF5}


def output_format(fmt: Optional[str]) -> int:
    """format= of save_merged as lsl_writer_config.format."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be 'safetensors' or 'h5' (or None: by the path), "
                         f"not {fmt!r}")
    return FORMATS[fmt]


def serving_files(base: torch.nn.Module, tokenizer: Optional[Any]) -> list[tuple[str, bytes]]:
    """(name, bytes) of generation_config.json (when the model can generate, diffed against the
    defaults, as save_pretrained writes it) and of what tokenizer.save_pretrained writes."""
    files: list[tuple[str, bytes]] = []
    gen = getattr(base, "generation_config", None)
    can = getattr(base, "can_generate", None)
    if gen is not None and hasattr(gen, "to_json_string") and (can is None or can()):
        files.append(("generation_config.json", gen.to_json_string(use_diff=True).encode()))
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_pretrained"):
            raise ValueError(f"tokenizer= takes a transformers tokenizer or processor (with "
                             f"save_pretrained), not {type(tokenizer).__name__}")
        with tempfile.TemporaryDirectory(prefix="loraslab-tokenizer-") as d:
            tokenizer.save_pretrained(d)
            for name in sorted(os.listdir(d)):
                p = os.path.join(d, name)
                if os.path.isfile(p) and name != "config.json":
                    with open(p, "rb") as f:
                        files.append((name, f.read()))
    return files
