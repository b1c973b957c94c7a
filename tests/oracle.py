"""An independent oracle: per family, where each site is in transformers' own module tree, written by hand
from the modeling code (transformers 5.x), not read from bakesteer's table.

``SITES[family][site]`` is (module path with ``{L}`` for the block, "output" | "input"): the hidden state the
site names is that module's output (forward hook) or its first input (forward pre-hook). Sites absent from
a family's row have no exact fold there. ``steered`` adds ``coef * v`` there at every position.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_LLAMA_LIKE = {  # pre-norm block: x += attn(input_layernorm(x)); x += mlp(post_attention_layernorm(x))
    "attn_in": ("model.layers.{L}.input_layernorm", "output"),
    "mlp_in": ("model.layers.{L}.post_attention_layernorm", "output"),
    "attn_out": ("model.layers.{L}.self_attn", "output"),
    "mlp_out": ("model.layers.{L}.mlp", "output"),
    "resid": ("model.layers.{L}", "output"),
}
_ATTENTION_ONLY = {k: _LLAMA_LIKE[k] for k in ("attn_in", "attn_out")}  # no MLP bias slot in the family
_NEOX = {
    "attn_in": ("gpt_neox.layers.{L}.input_layernorm", "output"),
    "mlp_in": ("gpt_neox.layers.{L}.post_attention_layernorm", "output"),
    "attn_out": ("gpt_neox.layers.{L}.attention", "output"),
    "mlp_out": ("gpt_neox.layers.{L}.mlp", "output"),
    "resid": ("gpt_neox.layers.{L}", "output"),
}
SITES: dict[str, dict[str, tuple[str, str]]] = {
    "gpt2": {
        "attn_in": ("transformer.h.{L}.ln_1", "output"),
        "mlp_in": ("transformer.h.{L}.ln_2", "output"),
        "attn_out": ("transformer.h.{L}.attn", "output"),
        "mlp_out": ("transformer.h.{L}.mlp", "output"),
        "resid": ("transformer.h.{L}", "output"),
    },
    "gpt_neox": _NEOX,
    "gpt_neox_seq": _NEOX,
    "llama": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,  # the block output itself: residual_multiplier is inside the block
    "granite_swa": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mistral_window": _LLAMA_LIKE,
    "ministral3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,  # pre-norm; the sites feed qkv_proj / gate_up_proj, fused
    "phi3_window": _LLAMA_LIKE,
    "phi3_longrope": _LLAMA_LIKE,
    "qwen2_window": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _ATTENTION_ONLY,
    "gemma": _ATTENTION_ONLY,
    "gemma2": _ATTENTION_ONLY,  # attn_out: the attention module's output, before post_attention_layernorm
    "gemma3": _ATTENTION_ONLY,
    "olmo2": {  # no pre-norm: the attention and MLP read the residual stream itself
        "attn_in": ("model.layers.{L}.self_attn", "input"),
        "attn_out": ("model.layers.{L}.self_attn", "output"),
    },
    "smollm3": _LLAMA_LIKE,
    "seed_oss": _LLAMA_LIKE,  # pre-norm; q/k/v biases native, o and MLP biases under their flags
    "qwen3_moe": _ATTENTION_ONLY,  # the MLP is a mixture of experts without biases
    "qwen2_moe": {"attn_in": _LLAMA_LIKE["attn_in"]},  # and o_proj has no bias
    "olmoe": _ATTENTION_ONLY,  # pre-norm; q_norm/k_norm come after the q/k projections
    "glm4": {"attn_in": _LLAMA_LIKE["attn_in"]},  # o_proj has no bias; post-norms after attention and MLP
    "deepseek_v3": _ATTENTION_ONLY,  # pre-norm; the input enters q_a_proj and kv_a_proj_with_mqa
    "gpt_oss": _LLAMA_LIKE,  # pre-norm; its mlp returns (hidden, router scores), the hook steers the hidden
    "olmo3": {
        "attn_in": ("model.layers.{L}.self_attn", "input"),
        "attn_out": ("model.layers.{L}.self_attn", "output"),
    },
    "starcoder2": _LLAMA_LIKE,  # LayerNorms and a c_fc/c_proj MLP, the same module names
    "phi": {  # parallel: x + attn(ln(x)) + mlp(ln(x)); each branch's own input, not the shared norm's output
        "attn_in": ("model.layers.{L}.self_attn", "input"),
        "mlp_in": ("model.layers.{L}.mlp", "input"),
        "attn_out": ("model.layers.{L}.self_attn", "output"),
        "mlp_out": ("model.layers.{L}.mlp", "output"),
        "resid": ("model.layers.{L}", "output"),
    },
    "opt": {  # fc1/fc2 hang off the block itself; the MLP's output is fc2's
        "attn_in": ("model.decoder.layers.{L}.self_attn_layer_norm", "output"),
        "mlp_in": ("model.decoder.layers.{L}.final_layer_norm", "output"),
        "attn_out": ("model.decoder.layers.{L}.self_attn", "output"),
        "mlp_out": ("model.decoder.layers.{L}.fc2", "output"),
        "resid": ("model.decoder.layers.{L}", "output"),
    },
    "granitemoe": {  # pre-norm; the experts and router have no bias: attention sites only
        "attn_in": ("model.layers.{L}.input_layernorm", "output"),
        "attn_out": ("model.layers.{L}.self_attn", "output"),
    },
    "llama4_text": {  # pre-norm; its feed-forward (MoE or dense) has no bias: attention sites only
        "attn_in": ("model.layers.{L}.input_layernorm", "output"),
        "attn_out": ("model.layers.{L}.self_attn", "output"),
    },
    "opt_post_norm": {  # x -> LN1(x + attn(x)) -> LN2(h + fc2(fc1(h))): no norm before attention or fc1
        "attn_in": ("model.decoder.layers.{L}.self_attn", "input"),
        "mlp_in": ("model.decoder.layers.{L}.fc1", "input"),
        "attn_out": ("model.decoder.layers.{L}.self_attn", "output"),
        "mlp_out": ("model.decoder.layers.{L}.fc2", "output"),
        "resid": ("model.decoder.layers.{L}", "output"),
    },
    "gptj": {  # parallel; q/k/v without bias: no attn_in
        "mlp_in": ("transformer.h.{L}.mlp", "input"),
        "attn_out": ("transformer.h.{L}.attn", "output"),
        "mlp_out": ("transformer.h.{L}.mlp", "output"),
        "resid": ("transformer.h.{L}", "output"),
    },
    **{name: {  # parallel; MLP without bias: no mlp_in
        "attn_in": ("model.layers.{L}.self_attn", "input"),
        "attn_out": ("model.layers.{L}.self_attn", "output"),
        "mlp_out": ("model.layers.{L}.mlp", "output"),
        "resid": ("model.layers.{L}", "output"),
    } for name in ("cohere", "cohere2")},
    # multimodal wrappers: the text decoder's blocks are model.language_model.layers.N in each (Llama 4: below)
    "gemma3_mm": {  # Gemma 3 text: attention sites only (no MLP bias, a norm after each sublayer)
        "attn_in": ("model.language_model.layers.{L}.input_layernorm", "output"),
        "attn_out": ("model.language_model.layers.{L}.self_attn", "output"),
    },
    **{name: {  # a Llama (or Mistral, relabelled to Llama inside text_config) text decoder
        "attn_in": ("model.language_model.layers.{L}.input_layernorm", "output"),
        "mlp_in": ("model.language_model.layers.{L}.post_attention_layernorm", "output"),
        "attn_out": ("model.language_model.layers.{L}.self_attn", "output"),
        "mlp_out": ("model.language_model.layers.{L}.mlp", "output"),
        "resid": ("model.language_model.layers.{L}", "output"),
    } for name in ("llava", "mistral3", "mistral3_window", "ministral3_mm")},
    **{name: {"attn_in": ("model.language_model.layers.{L}.input_layernorm", "output")}  # o, MLP: no bias
       for name in ("qwen2_5_vl", "qwen2_vl")},
    "llama4_mm": {  # Llama 4: its text decoder is a Llama4ForCausalLM at language_model (blocks at .model.layers)
        "attn_in": ("language_model.model.layers.{L}.input_layernorm", "output"),
        "attn_out": ("language_model.model.layers.{L}.self_attn", "output"),
    },
}


def _add_output(delta: torch.Tensor):
    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + delta,) + tuple(output[1:])
        return output + delta
    return hook


def _add_input(delta: torch.Tensor):
    def hook(module, args, kwargs):
        if args:
            return (args[0] + delta,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}
    return hook


@contextlib.contextmanager
def steered(model: torch.nn.Module, family: str, site: str, vectors: dict[int, torch.Tensor],
            coef: float) -> Iterator[torch.nn.Module]:
    """Within the block, ``model`` adds ``coef * vectors[L]`` at ``site`` of each block L."""
    path, at = SITES[family][site]
    handles = []
    try:
        for layer, v in vectors.items():
            module = model.get_submodule(path.format(L=layer))
            delta = (coef * v).to(next(model.parameters()).dtype)
            handles.append(module.register_forward_pre_hook(_add_input(delta), with_kwargs=True) if at == "input"
                           else module.register_forward_hook(_add_output(delta)))
        yield model
    finally:
        for h in handles:
            h.remove()
