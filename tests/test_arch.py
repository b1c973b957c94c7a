"""The architecture table agrees with transformers' own modeling code and config classes."""
from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from bakesteer.arch import (ALWAYS, ARCHS, GROUPS, NEVER, RUNTIMES, SITES, context_length, exact_sites, find_arch,
                            variant)
from bakesteer.errors import BakesteerError
from tiny import CONFIGS, llama_without_mlp_bias


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
    arch = find_arch(cfg.to_dict())
    for slot in set(arch.linears.values()) - {ALWAYS, NEVER}:
        setattr(cfg, slot, True)
    model = AutoModelForCausalLM.from_config(cfg)
    block = model.get_submodule(f"{arch.layers}.0")
    state = model.state_dict()
    for module, slot in arch.linears.items():  # the names a bake writes (a stacked projection's "<name>_bias")
        weight, bias = arch.names(0, module)
        assert weight in state, module
        assert (bias in state) == (slot != NEVER), (module, slot)
    for site in SITES:
        hook = arch.sites[site].hook
        assert hook == "" or block.get_submodule(hook) is not None


def test_portability_rows_cover_every_written_family_and_runtime():
    from bakesteer.portability import support, warnings

    written = {a.relabel.to if a.relabel else a.name for a in ARCHS.values()}
    for fam in written:
        assert set(ARCHS[fam].runtimes) == set(RUNTIMES), fam
        assert all(set(row) == set(GROUPS) for row in ARCHS[fam].runtimes.values()), fam
    assert support("llama", ["mlp"])["SGLang"] == "ignored" and support("llama", ["qkv"])["SGLang"] == "yes"
    assert any("vLLM" in w and "o_proj" in w for w in warnings("qwen3", ["qkv", "o"]))
    gpt2 = warnings("gpt2", ["qkv", "o", "mlp"])  # two runtimes refuse the family itself, one sentence each
    assert len(set(gpt2)) == 2 and all("baked or not" in w for w in gpt2), gpt2
    assert warnings("llama", ["qkv", "o"]) == []


@pytest.mark.parametrize("key,family,group", [
    ("model.layers.0.self_attn.q_proj.bias", "llama", "qkv"), ("model.layers.0.self_attn.o_proj.bias", "llama", "o"),
    ("model.layers.0.mlp.down_proj.bias", "llama", "mlp"), ("transformer.h.0.attn.c_attn.bias", "gpt2", "qkv"),
    ("h.0.attn.c_proj.bias", "gpt2", "o"), ("transformer.h.0.mlp.c_proj.bias", "gpt2", "mlp"),
    ("gpt_neox.layers.0.attention.dense.bias", "gpt_neox", "o"),
])
def test_bias_group_of_a_key_is_the_table_field_of_its_linear(key, family, group):
    assert ARCHS[family].group_of(key) == group


@pytest.mark.parametrize("name", list(ARCHS))
def test_context_length_name_is_a_config_field(name):
    arch = ARCHS[name]
    full = AutoConfig.for_model(arch.model_types[0]).to_dict()
    assert isinstance(full.get(arch.context), int), (arch.context, full.get(arch.context))
    assert context_length({**full, "model_type": arch.model_types[0]}) == full[arch.context]


def test_the_table_cannot_be_changed_and_a_variant_is_scoped():
    llama = ARCHS["llama"]
    with pytest.raises(TypeError):
        ARCHS["llama"] = llama  # type: ignore[index]
    with pytest.raises(TypeError):
        llama.linears["mlp.down_proj"] = NEVER  # type: ignore[index]
    with pytest.raises(TypeError):
        llama.runtimes["SGLang"]["mlp"] = "yes"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        llama.layers = "x"  # type: ignore[misc]
    cfg = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2}
    assert "resid" in exact_sites(cfg)
    with variant(llama_without_mlp_bias()):
        assert "resid" not in exact_sites(cfg) and find_arch(cfg) is not llama
    assert "resid" in exact_sites(cfg) and find_arch(cfg) is llama and ARCHS["llama"] is llama


def test_find_arch_refuses_in_one_sentence():
    with pytest.raises(BakesteerError, match="model_type 'bert' is not supported"):
        find_arch({"model_type": "bert"})
    with pytest.raises(BakesteerError, match="GGUF architecture 'phi3' is not in bakesteer's table"):
        find_arch(gguf="phi3")
    assert {find_arch(gguf=a.gguf.name).name for a in ARCHS.values() if a.gguf} == {
        "llama", "gpt2", "gpt_neox", "granite", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2", "smollm3",
        "starcoder2", "phi", "cohere", "cohere2", "qwen3_moe", "qwen2_moe", "olmoe", "glm4", "seed_oss", "granitemoe"}
