"""The architecture table agrees with transformers' own modeling code and config classes."""
from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from bakesteer.arch import ALWAYS, ARCHS, NEVER, SITES
from bakesteer.tiny import CONFIGS


@pytest.mark.parametrize("name", list(ARCHS))
def test_defaults_and_dims_match_transformers(name):
    arch = ARCHS[name]
    full = AutoConfig.for_model(arch.model_types[0]).to_dict()
    for key, value in arch.defaults.items():
        assert full.get(key) == value, (key, value, full.get(key))
    for key in arch.dims:
        assert key in full


@pytest.mark.parametrize("tiny", list(CONFIGS))
def test_every_module_and_bias_slot_exists_as_the_table_says(tiny):
    """Build the model with every flag on: ALWAYS/flag slots have a bias, NEVER slots have none."""
    cfg = CONFIGS[tiny]()
    arch = next(a for a in ARCHS.values() if cfg.model_type in a.model_types)
    for slot in set(arch.linears.values()) - {ALWAYS, NEVER}:
        setattr(cfg, slot, True)
    model = AutoModelForCausalLM.from_config(cfg)
    block = model.get_submodule(f"{arch.layers}.0")
    for module, slot in arch.linears.items():
        has_bias = block.get_submodule(module).bias is not None
        assert has_bias == (slot != NEVER), (module, slot)
    for site in SITES:
        hook = arch.sites[site].hook
        assert hook == "" or block.get_submodule(hook) is not None


def test_portability_table_covers_every_family_and_runtime():
    from bakesteer.arch import ARCHS
    from bakesteer.portability import GROUPS, RUNTIMES, TABLE, group_of, support, warnings

    written = {a.relabel.to if a.relabel else a.name for a in ARCHS.values()} | {a.name for a in ARCHS.values()}
    for fam in written - {"mistral"}:  # Mistral is always written as Llama
        assert set(TABLE[fam]) == set(RUNTIMES), fam
        assert all(set(row) == set(GROUPS) for row in TABLE[fam].values()), fam
    assert [group_of(k) for k in ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.o_proj.bias",
                                  "model.layers.0.mlp.down_proj.bias", "transformer.h.0.attn.c_attn.bias",
                                  "transformer.h.0.attn.c_proj.bias", "transformer.h.0.mlp.c_proj.bias",
                                  "gpt_neox.layers.0.attention.dense.bias")] == ["qkv", "o", "mlp", "qkv", "o",
                                                                                  "mlp", "o"]
    assert support("llama", ["mlp"])["SGLang"] == "ignored" and support("llama", ["qkv"])["SGLang"] == "yes"
    assert any("vLLM" in w and "o_proj" in w for w in warnings("qwen3", ["qkv", "o"]))
    assert warnings("gpt2", ["qkv", "o", "mlp"]) == []
