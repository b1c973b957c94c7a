"""config.json that readers of both transformers eras parse to the same model.

transformers 5 moved ``rope_theta``, ``rope_scaling`` and ``partial_rotary_factor`` into ``rope_parameters``
(per layer type for Gemma 3) and ``torch_dtype`` to ``dtype``, and writes only the new form. Readers built on
the older form (MLX-LM, and exporters that pin transformers 4) then silently fall back to their defaults,
rope_theta = 10000 among them. transformers 5 reads ``rope_parameters`` first, so writing the old keys beside
the new ones changes nothing for it and everything for the others.
Some families' older readers also want a key under an older name (GPT-2's ``n_ctx``, GPT-NeoX's ``rotary_pct``
and ``rotary_emb_base``); the architecture table lists them as the family's ``legacy`` keys.
"""
from __future__ import annotations

from .arch import ARCHS, family_of

# rope_parameters per layer type (transformers 5) -> the key older readers take its rope_theta from
PER_LAYER_TYPE = {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"}
MOVED = ("rope_theta", "partial_rotary_factor")  # plain values transformers 5 keeps inside rope_parameters


def _legacy_rope(rope: dict) -> dict:
    """The old-form keys for one flat ``rope_parameters`` dict."""
    out = {key: rope[key] for key in MOVED if key in rope}
    if rope.get("rope_type", "default") != "default":
        # transformers 5 takes a present rope_scaling as its rope_parameters: the same dict keeps it unchanged
        out["rope_scaling"] = dict(rope)
    return out


def for_every_reader(config: dict) -> dict:
    """``config`` with the keys transformers 5 moved also written where older readers look (never overwritten)."""
    out = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
        for kind, key in PER_LAYER_TYPE.items():
            if isinstance(rope.get(kind), dict) and "rope_theta" in rope[kind]:
                out.setdefault(key, rope[kind]["rope_theta"])
        for key, value in _legacy_rope(rope["full_attention"]).items():
            if key != "rope_theta":
                out.setdefault(key, value)
    elif isinstance(rope, dict):
        for key, value in _legacy_rope(rope).items():
            out.setdefault(key, value)
    arch = ARCHS.get(family_of(config.get("model_type")) or "")
    for old, new in (arch.legacy.items() if arch else ()):
        if new in out:
            out.setdefault(old, out[new])
    if "dtype" in config:
        out.setdefault("torch_dtype", config["dtype"])
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the decoder's config inside
        out["text_config"] = for_every_reader(config["text_config"])
    return out


# keys that say where a config came from, not what its model computes
_PROVENANCE = ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path")


def pinned(source: dict, source_type: str, target: dict, target_type: str, skip: tuple[str, ...] = ()) -> dict:
    """What the source family reads for keys its config leaves to the family's defaults, where the target family
    would read something else from ``target``: a relabel writes these, so a config that omits a key (Phi-3's
    rms_norm_eps of 1e-5, say, where Llama's default is 1e-6) still describes the same model."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the defaults of either family may warn about each other's values
    try:
        read = AutoConfig.for_model(source_type, **{k: v for k, v in source.items() if k not in _PROVENANCE})
        other = AutoConfig.for_model(target_type, **{k: v for k, v in target.items() if k not in _PROVENANCE})
    finally:
        hf_logging.set_verbosity(level)
    theirs = other.to_dict()
    return {k: v for k, v in read.to_dict().items()
            if k not in source and k not in target and k not in _PROVENANCE and k not in skip and theirs.get(k) != v}
