"""Where a module parameter is stored when transformers builds it from several stored tensors.

transformers 5 builds the experts of a mixture-of-experts block as one 3-D parameter per projection
(``mlp.experts.gate_up_proj`` (E, 2I, H), ``mlp.experts.down_proj`` (E, H, I)) and saves and reads checkpoints
with one tensor per expert (``mlp.experts.{e}.gate_proj.weight`` (I, H)). Its loading conversion says how
(``transformers.conversion_mapping``: merge the experts along dim 0, then concatenate the sources along dim 1).
The block-streaming engine reads one block at a time, so it applies that same conversion, read from
transformers, to the parameters of the block it loads. GPT-OSS's experts, stored MXFP4-packed, are decoded by
transformers' own MXFP4 decoder (``bakesteer.experts``), as its from_pretrained does on a machine without the kernels.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from .experts import BLOCKS, SCALES

Read = Callable[[str], torch.Tensor]


def _conversions(model_type: str) -> list:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return get_checkpoint_conversion_mapping(model_type) or []


def _literal(pattern: str) -> str | None:
    """The name a renaming's source pattern matches when it is a plain dotted name (dots escaped or not)."""
    literal = pattern.replace(r"\.", ".")
    return literal if re.escape(literal) in (pattern, pattern.replace(".", r"\.")) else None


def _renamed_prefixes(prefix: str, conversions: list) -> list[str]:
    """``prefix`` and its stored forms under the literal renamings (Mixtral stores ``.mlp.`` as
    ``.block_sparse_moe.``, GraniteMoE ``block_sparse_moe.experts.gate_up_proj`` as ``...input_linear.weight``)."""
    out = [prefix]
    for c in conversions:
        if type(c).__name__ != "WeightRenaming":
            continue
        for src, tgt in zip(c.source_patterns, c.target_patterns):
            literal = _literal(src)
            if literal is not None and tgt in prefix:
                out.append(prefix.replace(tgt, literal))
    return out


def merged(name: str, model_type: str, keys: set[str], read: Read) -> torch.Tensor | None:
    """Parameter ``name`` read as transformers' conversion for ``model_type`` reads it (a stored tensor under its
    older name, or the stored experts merged), or None when no conversion of that family makes it (or its stored
    tensors are not all there)."""
    if name + BLOCKS in keys and name + SCALES in keys:
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors

        return convert_moe_packed_tensors(read(name + BLOCKS), read(name + SCALES), dtype=torch.float32)
    conversions = _conversions(model_type)
    for stored in _renamed_prefixes(name, conversions)[1:]:  # renamed whole (GraniteMoE's experts and router)
        if stored in keys:
            return read(stored)
    for c in conversions:
        if type(c).__name__ != "WeightConverter":
            continue
        ops = [(type(o).__name__, getattr(o, "dim", None)) for o in c.operations]
        if any(op not in (("MergeModulelist", 0), ("Concatenate", 1)) for op in ops):
            continue  # only the expert merge is read here
        for target in c.target_patterns:
            suffix = target.lstrip(".")
            if not name.endswith(suffix):
                continue
            prefix = name[: -len(suffix)]
            for stored in _renamed_prefixes(prefix, conversions):
                parts = [_experts(stored + src.lstrip("."), keys, read) for src in c.source_patterns]
                if all(p is not None for p in parts):
                    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (E, ...) each
    return None


def _experts(pattern: str, keys: set[str], read: Read) -> torch.Tensor | None:
    """The tensors ``pattern`` names with ``*`` = 0, 1, ... stacked along a new dim 0, or None if there are none."""
    found = []
    while (key := pattern.replace("*", str(len(found)), 1)) in keys:
        found.append(read(key))
    return torch.stack(found) if found else None
