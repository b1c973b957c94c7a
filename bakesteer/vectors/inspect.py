"""What a vector file holds: format, model hint, site, convention, and per key its block, norm, variance."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import VectorFile
from .files import load_vector_file
from .svec import CONVENTION, explained_of

CONVENTIONS = {
    "bakesteer": CONVENTION,
    "ibm-svec": "key N is added to the input of decoder block N = the residual stream after block N-1",
    "gguf": "direction.N is added to the output of decoder block N (llama.cpp l_out, repeng ControlModule); N >= 1",
    "steering-vectors": "key N = the output of that layer_type's module in decoder block N",
    "raw": "row or key N = decoder block N; site given by --site",
}


def _notes(vf: VectorFile) -> list[str]:
    notes = []
    if vf.format == "gguf":
        if 0 in vf.vectors:
            notes.append("direction.0 is refused by llama.cpp (repeng reads it as block 0's output)")
        if vf.meta.get("tensor_types") != ["F32"]:
            notes.append(f"llama.cpp needs F32 directions; this file has {', '.join(vf.meta['tensor_types'])}")
        if vf.meta.get("layer_count") not in (None, len(vf.vectors)):
            notes.append(f"controlvector.layer_count says {vf.meta['layer_count']} but there are {len(vf.vectors)}")
    if vf.shift < 0 and min(k for k in vf.vectors if k is not None) + vf.shift < 0:
        notes.append("key 0 goes to block 0's input (the embeddings): no bias slot, so it cannot be baked")
    if vf.format == "steering-vectors":
        notes.append(f"layer_type {vf.meta['layer_type']}")
    return notes


def describe(path: str | Path) -> dict:
    """What a vector file holds, as a dict for `bakesteer inspect` (text or --json)."""
    vf = load_vector_file(path)
    ev = explained_of(vf)
    model = vf.meta.get("model") if vf.format == "bakesteer" else None
    model = model if isinstance(model, dict) else None
    layers = []
    for k, v in sorted(vf.vectors.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        block = None if k is None or k + vf.shift < 0 else k + vf.shift
        layers.append({"key": k, "block": block, "norm": float(np.linalg.norm(v)), "explained": ev.get(k)})
    method = vf.meta.get("method")
    return {
        "file": str(vf.path), "format": vf.format, "sha256": vf.sha256,
        "model": (model or {}).get("name") or vf.model_type,
        "model_identity": model, "site": vf.site or "(not recorded; --site, default resid)",
        "convention": CONVENTIONS.get(vf.format), "method": method if isinstance(method, str) else None,
        "hidden_size": vf.hidden_size, "coef": vf.coef, "layers": layers, "notes": _notes(vf),
    }
