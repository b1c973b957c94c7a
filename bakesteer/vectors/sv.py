"""steering-vectors files (``dataclasses.asdict(SteeringVector)`` saved with torch, or safetensors with
``layer_activations.N`` tensors): key N = the output of that ``layer_type``'s module in decoder block N."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import BakesteerError
from .core import VectorFile, as_vector

# steering-vectors layer_type -> bakesteer site
SV_TYPES = {"decoder_block": "resid", "self_attn": "attn_out", "mlp": "mlp_out",
            "input_layernorm": "attn_in", "post_attention_layernorm": "mlp_in"}
SITE_SV = {site: t for t, site in SV_TYPES.items()}


def is_dump(obj) -> bool:
    """A steering-vectors dump: {"layer_activations": {N: tensor}, "layer_type": ...} or flat layer_activations.N."""
    return isinstance(obj, dict) and ("layer_activations" in obj or
                                      (bool(obj) and all(str(k).startswith("layer_activations.") for k in obj)))


def read(path: Path, obj: dict, metadata: dict | None = None) -> VectorFile:
    """The VectorFile of a steering-vectors dump."""
    if "layer_activations" in obj:
        acts, layer_type = obj["layer_activations"], obj.get("layer_type", "decoder_block")
    else:
        acts = {k.split(".", 1)[1]: v for k, v in obj.items()}
        layer_type = (metadata or {}).get("layer_type", "decoder_block")
    if not isinstance(layer_type, str) or layer_type not in SV_TYPES:
        raise BakesteerError(f"{path} has layer_type {layer_type!r}; steering-vectors layer types are: "
                             f"{', '.join(SV_TYPES)}.")
    if not isinstance(acts, dict) or not acts:
        raise BakesteerError(f"{path} has no layer_activations; save dataclasses.asdict(steering_vector).")
    vecs = {}
    for k, v in acts.items():
        if not re.fullmatch(r"-?\d+", str(k)):
            raise BakesteerError(f"{path} has a layer key {k!r} that is not a layer number; name layers by integers.")
        if int(k) < 0:
            raise BakesteerError(f"{path} has layer {k}; counted from the end it depends on the model, so "
                                 "save it under its block number.")
        vecs[int(k)] = as_vector(v, f"{path} layer {k}")
    return VectorFile(path, "steering-vectors", vecs, SV_TYPES[layer_type], 0, meta={"layer_type": layer_type})


def write(path: Path, vecs: dict[int, np.ndarray], site: str) -> None:
    """``SteeringVector(**torch.load(path, weights_only=True))`` rebuilds it (.pt); .safetensors keeps
    layer_type in the metadata."""
    layer_type = SITE_SV[site]
    if path.suffix.lower() == ".safetensors":
        from safetensors.numpy import save_file

        save_file({f"layer_activations.{b}": v for b, v in vecs.items()}, str(path),
                  metadata={"format": "steering-vectors", "layer_type": layer_type})
        return
    import torch

    with open(path, "wb") as f:  # torch.save appends no suffix to an open file
        torch.save({"layer_activations": {b: torch.from_numpy(v.copy()) for b, v in vecs.items()},
                    "layer_type": layer_type}, f)
