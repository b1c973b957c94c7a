"""Baked == hooked on tiny random models of every family, every exact site, one and three layers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bakesteer.arch import exact_sites, fold_target, folds
from bakesteer.bake import Item, bake
from bakesteer.checkpoint import Checkpoint
from bakesteer.configs import for_every_reader
from bakesteer.hooks import Steer, steering
from helpers import hooked_vs_baked, logits
from tiny import CONFIGS, HIDDEN, VOCAB, make_model, save_model, steerable

TOL = 1e-4
EXPECTED_EXACT = {  # what the table must say; checked so a table edit cannot silently drop a site
    "gpt2": 5, "gpt_neox": 5, "gpt_neox_seq": 5, "llama": 5, "granite": 5, "mistral": 5, "qwen2": 5,
    "qwen3": 2, "gemma": 2, "gemma2": 2, "gemma3": 2, "olmo2": 2, "smollm3": 5, "starcoder2": 5, "phi": 5, "opt": 5,
    "opt_post_norm": 5, "llama4_text": 2, "granitemoe": 2,
    "gptj": 4, "cohere": 4, "cohere2": 4, "mistral_window": 5, "qwen2_window": 5, "olmo3": 2, "qwen3_moe": 2,
    "qwen2_moe": 1, "gpt_oss": 5, "olmoe": 2, "glm4": 1, "deepseek_v3": 2, "phi3": 5, "phi3_window": 5,
    "phi3_longrope": 5, "seed_oss": 5, "ministral3": 5, "granite_swa": 5,
}


CASES = [
    (name, site, layers)
    for name in CONFIGS
    for site in exact_sites(CONFIGS[name]().to_dict())
    for layers in ((1,), steerable(CONFIGS[name]().to_dict(), site, (0, 2, 3)))
]


def _steers(site: str, layers, seed: int = 1, coef: float = 4.0) -> list[Steer]:
    g = torch.Generator().manual_seed(seed)
    return [Steer(site, L, torch.randn(HIDDEN, generator=g, dtype=torch.float64), coef) for L in layers]


def test_every_family_has_its_exact_sites():
    assert {n: len(exact_sites(CONFIGS[n]().to_dict())) for n in CONFIGS} == EXPECTED_EXACT


@pytest.mark.parametrize("name,site,layers", CASES, ids=[f"{n}-{s}-{len(l)}L" for n, s, l in CASES])
def test_fp32_baked_equals_hooked(tmp_path, name, site, layers):
    source = save_model(name, tmp_path / "src")
    steers = _steers(site, layers)
    recipe = bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    baked, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True,
                                                       attn_implementation="eager")
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff, effect, g_hooked, g_baked = hooked_vs_baked(source, baked.eval(), steers, ids)
    assert diff <= TOL, f"baked vs hooked max |Δ| = {diff}"
    assert effect >= 100 * TOL, f"steering moved logits by only {effect}"
    assert g_hooked == g_baked
    # every bias a switched-on flag creates exists explicitly in the file, zero unless folded into
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    for flag in recipe["written"]["flags_switched_on"]:
        assert cfg[flag] is True
    out = Checkpoint(tmp_path / "out")
    for key in recipe["tensors_added"]:
        t = out.read(key).astype(np.float64)
        target = fold_target(CONFIGS[name]().to_dict(), site)
        shift = 1 if target.site.next_block else 0  # the fold sits in the next block
        folded = any(f".{s.layer + shift}." in key for s in steers) and any(
            m in key for m in folds(target.arch, target.site))
        assert bool(np.abs(t).sum() > 0) == folded, key


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2"])
def test_bf16_adds_no_error_beyond_the_dtype(tmp_path, name):
    make_model(name, init=0.02).to(torch.bfloat16).save_pretrained(tmp_path / "src")
    src32 = AutoModelForCausalLM.from_pretrained(tmp_path / "src", dtype=torch.float32).eval()
    src16 = AutoModelForCausalLM.from_pretrained(tmp_path / "src", dtype=torch.bfloat16).eval()
    steers = _steers("resid", (1, 2), coef=16.0)
    bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    baked16 = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16).eval()
    assert next(baked16.parameters()).dtype == torch.bfloat16
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff_baked, effect, _, _ = hooked_vs_baked(src16, baked16, steers, ids, reference=src32)
    with steering(src32, steers):
        hooked32 = logits(src32, ids)
    with steering(src16, steers):
        hooked16 = logits(src16, ids)
    own = float((hooked16 - hooked32).abs().max())  # the dtype's own error under the same steering
    tol = 2 * own + 1e-3
    print(f"{name}: baked {diff_baked:.3g}, bf16's own {own:.3g}, tolerance {tol:.3g}, effect {effect:.3g}")
    assert diff_baked <= tol, (diff_baked, own)
    assert effect >= 100 * tol, (effect, tol)


def test_existing_biases_are_kept_and_added_to(tmp_path):
    """GPT-2 has every bias: the fold must add to the stored bias, never replace it."""
    source = save_model("gpt2", tmp_path / "src")
    steers = _steers("mlp_out", (2,))
    recipe = bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    assert recipe["tensors_added"] == [] and recipe["tensors_changed"] == ["transformer.h.2.mlp.c_proj.bias"]
    new = torch.from_numpy(Checkpoint(tmp_path / "out").read("transformer.h.2.mlp.c_proj.bias").astype(np.float64))
    old = source.transformer.h[2].mlp.c_proj.bias.detach()
    assert torch.allclose(new.double(), old.double() + 4.0 * steers[0].vector, atol=1e-6)
    assert old.abs().max() > 0.01


def test_several_vectors_and_sites_compose_additively(tmp_path):
    source = save_model("llama", tmp_path / "src")
    steers = _steers("resid", (1,), seed=3) + _steers("attn_in", (1, 2), seed=4) + _steers("resid", (1,), seed=5)
    bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff, effect, g1, g2 = hooked_vs_baked(source, baked, steers, ids)
    assert diff <= TOL and effect >= 100 * TOL and g1 == g2


def test_qwen2_attn_in_keeps_its_architecture_and_resid_relabels_to_llama(tmp_path):
    save_model("qwen2", tmp_path / "src")
    bake(tmp_path / "src", [Item(s, {}) for s in _steers("attn_in", (1,))], tmp_path / "a", progress=False)
    before = json.loads((tmp_path / "src" / "config.json").read_text())
    after = json.loads((tmp_path / "a" / "config.json").read_text())
    assert after == for_every_reader(before)  # the architecture kept, only the moved keys written twice
    assert after["rope_theta"] == before["rope_parameters"]["rope_theta"]
    r = bake(tmp_path / "src", [Item(s, {}) for s in _steers("resid", (1,))], tmp_path / "b", progress=False)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert r["written"]["relabelled_from"] == "qwen2"
    assert cfg["attention_bias"] is True and cfg["mlp_bias"] is True


def test_sharded_checkpoint(tmp_path):
    source = make_model("llama")
    source.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()
    steers = _steers("mlp_in", (0, 3))
    bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert "model.layers.3.mlp.up_proj.bias" in index["weight_map"]
    baked, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff, effect, g1, g2 = hooked_vs_baked(source, baked.eval(), steers, ids)
    assert diff <= TOL and effect >= 100 * TOL and g1 == g2


def test_gpt2_checkpoint_without_the_transformer_prefix(tmp_path):
    """The original GPT-2 files name tensors 'h.0.attn...', not 'transformer.h.0.attn...'."""
    from safetensors.torch import load_file, save_file

    source = save_model("gpt2", tmp_path / "src")
    path = tmp_path / "src" / "model.safetensors"
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    steers = _steers("attn_in", (1,))
    r = bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    assert r["tensors_changed"] == ["h.1.attn.c_attn.bias"]
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff, effect, g1, g2 = hooked_vs_baked(source, baked, steers, ids)
    assert diff <= TOL and effect >= 100 * TOL and g1 == g2


def test_ministral3_relabel_is_exact_below_its_query_scaling_switch_and_says_so(tmp_path):
    """Ministral 3 scales its queries from original_max_position_embeddings on; Llama does not. Below that the
    relabel is exact (the shared tests), past it not, and the bake's caveat says where."""
    from tiny import MINISTRAL3_ROPE

    model = make_model("ministral3", rope_parameters={**MINISTRAL3_ROPE, "original_max_position_embeddings": 16})
    model.save_pretrained(tmp_path / "src")
    steers = _steers("resid", (1,))
    recipe = bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    assert "exact for positions below 16" in recipe["written"]["caveat"]
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    for n, exact in ((16, True), (40, False)):
        ids = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(2))
        diff, effect, _, _ = hooked_vs_baked(model, baked, steers, ids)
        assert effect >= 100 * TOL and (diff <= TOL) == exact, (n, diff)
