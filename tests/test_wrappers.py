"""Multimodal wrappers (Gemma 3, LLaVA, Mistral 3, Qwen2-VL, Qwen2.5-VL): the text decoder inside is baked in
place.

save_pretrained writes these checkpoints under their older names (``language_model.model.layers.N``; Qwen's
``model.layers.N``); a bias added under another prefix loads nowhere. Each bake here is read back by plain
from_pretrained of the wrapper class with no missing or unexpected key, equals steering by a hook written by hand
at transformers' module path (``model.language_model.layers.{L}``), leaves the vision tower and projector byte for
byte, and puts its flags in ``text_config``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

from bakesteer.arch import exact_sites
from bakesteer.bake import Item, bake
from bakesteer.cli import main
from bakesteer.errors import BakesteerError
from bakesteer.hooks import Steer
from oracle import SITES, steered
from tiny import HIDDEN, VOCAB, WRAPPED, make_wrapped

TOL = 1e-4
IDS = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
EXACT = {w: list(SITES[w]) for w in WRAPPED}  # tests/oracle.py, written by hand from the modeling code
CASES = [(w, s) for w in WRAPPED for s in EXACT[w]]


def _vectors() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {layer: torch.randn(HIDDEN, generator=g, dtype=torch.float64) for layer in (1, 3)}


def _hooked(model, name: str, site: str, vecs: dict[int, torch.Tensor], coef: float) -> torch.Tensor:
    with torch.inference_mode(), steered(model, name, site, vecs, coef):
        return model(IDS).logits


def _tensors(folder) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "np") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrapped")
    models = {}
    for name in WRAPPED:
        models[name] = make_wrapped(name)
        models[name].save_pretrained(root / name)
    return root, models


def test_the_table_names_the_exact_sites_inside_each_wrapper():
    assert {w: exact_sites(WRAPPED[w]().to_dict()) for w in WRAPPED} == EXACT


@pytest.mark.parametrize("name,site", CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_the_bake_loads_cleanly_and_equals_the_hand_written_hook(sources, tmp_path, name, site):
    root, models = sources
    vecs = _vectors()
    bake(root / name, [Item(Steer(site, L, v, 4.0), {}) for L, v in vecs.items()], tmp_path / "baked", progress=False)
    baked, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "baked", dtype=torch.float32,
                                                              attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hooked = _hooked(models[name], name, site, vecs, 4.0)
    with torch.inference_mode():
        diff = float((baked.eval()(IDS).logits - hooked).abs().max())
        effect = float((hooked - models[name](IDS).logits).abs().max())
    assert diff <= TOL, f"baked vs hand-written hook: {diff}"
    assert effect >= 100 * TOL, f"the steer moved the logits by only {effect}"

    before, after = _tensors(root / name), _tensors(tmp_path / "baked")
    assert all(before[k].tobytes() == after[k].tobytes() for k in before if not k.endswith(".bias")), \
        "a weight changed"
    touched = {k for k in after if k not in before or before[k].tobytes() != after[k].tobytes()}
    stored = "model.layers." if name.startswith("qwen2") else "language_model.model.layers."  # save_pretrained's
    assert touched and all(k.startswith(stored) for k in touched), sorted(touched)[:3]
    written = json.loads((tmp_path / "baked" / "config.json").read_text())
    source = json.loads((root / name / "config.json").read_text())
    assert written["model_type"] == source["model_type"] and written["architectures"] == source["architectures"]
    assert written["vision_config"] == source["vision_config"]


def test_mistral3_is_relabelled_inside_its_text_config_to_llama_or_with_a_window_to_smollm3(sources, tmp_path):
    root, _ = sources
    bake(root / "mistral3", [Item(Steer("attn_out", 1, _vectors()[1], 4.0), {})], tmp_path / "baked", progress=False)
    text = json.loads((tmp_path / "baked" / "config.json").read_text())["text_config"]
    assert text["model_type"] == "llama" and text["attention_bias"] is True
    bake(root / "mistral3_window", [Item(Steer("attn_out", 1, _vectors()[1], 4.0), {})], tmp_path / "windowed",
         progress=False)
    text = json.loads((tmp_path / "windowed" / "config.json").read_text())["text_config"]
    assert text["model_type"] == "smollm3" and text["sliding_window"] == 8 and text["attention_bias"] is True


@pytest.mark.parametrize("name", ["gemma3_mm", "qwen2_5_vl", "llama4_mm"])
def test_the_cli_bakes_verifies_and_unbakes_a_wrapper(sources, tmp_path, capsys, name):
    root, _ = sources
    np.save(tmp_path / "v.npy", _vectors()[1].numpy())
    out = tmp_path / "baked"
    assert main(["bake", "--model", str(root / name), "--vector", str(tmp_path / "v.npy"), "--layer", "1",
                 "--site", "attn_in", "--coef", "4", "-o", str(out)]) == 0
    assert main(["verify", str(out), "--random-prompts"]) == 0, capsys.readouterr()
    assert "PASS" in capsys.readouterr().out
    assert main(["unbake", str(out), "-o", str(tmp_path / "back")]) == 0
    back, source = _tensors(tmp_path / "back"), _tensors(root / name)
    assert set(back) == set(source) and all(back[k].tobytes() == source[k].tobytes() for k in source)


def test_a_site_without_a_slot_inside_a_wrapper_is_refused_naming_the_ones_that_work(sources, tmp_path):
    root, _ = sources
    with pytest.raises(BakesteerError, match=r"sites that bake exactly here: attn_in, attn_out"):
        bake(root / "gemma3_mm", [Item(Steer("resid", 1, _vectors()[1], 4.0), {})], tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_wrapper_whose_text_decoder_is_not_in_the_table_is_refused_in_one_sentence():
    from bakesteer.arch import find_arch

    with pytest.raises(BakesteerError, match=r"text decoder \(model_type 'internlm2'\) is not in "):
        find_arch({"model_type": "llava", "text_config": {"model_type": "internlm2"}})


@pytest.mark.parametrize("name", ["gemma3_mm", "llava", "qwen2_5_vl", "mistral3", "mistral3_window", "llama4_mm"])
def test_the_in_memory_bake_equals_the_streamed_one(sources, tmp_path, name):
    from bakesteer.inmemory import bake_model

    root, _ = sources
    vecs = _vectors()
    site = EXACT[name][-1]
    bake(root / name, [Item(Steer(site, L, v, 4.0), {}) for L, v in vecs.items()], tmp_path / "baked", progress=False)
    streamed = AutoModelForImageTextToText.from_pretrained(tmp_path / "baked", dtype=torch.float32).state_dict()
    model = bake_model(make_wrapped(name), [Item(Steer(site, L, v, 4.0), {}) for L, v in vecs.items()])
    mem = model.state_dict()
    assert set(mem) == set(streamed)
    assert all(torch.equal(mem[k], streamed[k]) for k in mem)
    before = make_wrapped(name).state_dict()
    changed = [k for k in mem if k not in before or not torch.equal(mem[k], before[k])]
    assert changed and all(k.endswith(".bias") for k in changed), changed  # the bake did something, biases only


def test_a_wrapper_bake_reports_the_wrappers_measured_runtimes_not_the_text_familys(sources, tmp_path):
    """The written model_type is the wrapper's: the runtime report reads the wrapper's row (measured in
    tests/test_wrapper_runtimes.py); where its text decoder is written as another family than the one measured
    (Mistral 3 with a window: SmolLM3 inside), it claims transformers alone."""
    from bakesteer.portability import for_recipe, support

    root, _ = sources
    recipe = bake(root / "gemma3_mm", [Item(Steer("attn_in", 1, _vectors()[1], 4.0), {})], tmp_path / "g",
                  progress=False)
    family, groups = for_recipe(recipe)
    assert family == "multimodal gemma3" and groups == ["qkv", "o"], (family, groups)
    said = support(family, groups)
    assert said["transformers"] == "yes" and said["MLX-LM"] == "refused" and said["llama.cpp"] == "refused"
    recipe = bake(root / "mistral3_window", [Item(Steer("attn_in", 1, _vectors()[1], 4.0), {})], tmp_path / "q",
                  progress=False)
    assert recipe["written"]["text_model_type"] == "smollm3"
    said = support(*for_recipe(recipe))
    assert said["transformers"] == "yes" and set(said.values()) == {"yes", "unknown"}
    assert [rt for rt, v in said.items() if v == "yes"] == ["transformers"]
