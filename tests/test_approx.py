"""Approximate bakes on tiny random Qwen3, Gemma2, Gemma3 and OLMo2: loadable, measured, never worse than
the closed form, recorded figures reproduced independently; exact sites never approximated; bad input refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bakesteer.cli import main
from bakesteer.hooks import Steer, steering
from helpers import refused
from tiny import HIDDEN, LAYERS, save_char_tokenizer, save_model

CASES = [("qwen3", "resid"), ("gemma2", "resid"), ("gemma3", "resid"), ("olmo2", "resid"), ("gemma2", "mlp_in"),
         ("olmo2", "mlp_in"), ("qwen3", "mlp_out"), ("gemma", "resid"), ("gemma2", "mlp_out"),
         ("olmo3", "resid"), ("qwen3_moe", "resid")]
LAYER, COEF = 1, 1.0
ARGS = ["--calib-tokens", "256", "--fit-steps", "30", "-q"]


def _source(tmp_path, family: str):
    d = tmp_path / family
    save_model(family, d)
    save_char_tokenizer(d)
    return d


def _vector(tmp_path) -> str:
    v = np.random.default_rng(1).normal(size=HIDDEN).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    return str(tmp_path / "v.npy")


def _independent_gap(src, out, steer: Steer, budget: int) -> dict:
    """KL(hooked ‖ baked), KL(source ‖ hooked), top-1: one unpadded passage at a time, in float64 sums."""
    tok = AutoTokenizer.from_pretrained(out)
    source = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    baked = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    texts = (out / "bakesteer" / "heldout.txt").read_text().splitlines()
    kl_hb = kl_sh = agree = n = 0.0
    left = budget
    for t in texts:
        ids = tok(t)["input_ids"][:256][: max(2, left)]
        left -= len(ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            p = torch.log_softmax(source(x).logits[0].double(), -1)
            with steering(source, [steer]):
                h = torch.log_softmax(source(x).logits[0].double(), -1)
            b = torch.log_softmax(baked(x).logits[0].double(), -1)
        kl_hb += float((h.exp() * (h - b)).sum())
        kl_sh += float((p.exp() * (p - h)).sum())
        agree += float((h.argmax(-1) == b.argmax(-1)).sum())
        n += len(ids)
        if left <= 0:
            break
    return {"kl_hooked_baked": kl_hb / n, "kl_source_hooked": kl_sh / n, "top1_agreement": agree / n, "tokens": n}


@pytest.mark.parametrize("family,site", CASES)
def test_approximate_bake(tmp_path, family, site):
    src, out = _source(tmp_path, family), tmp_path / "out"
    vec = _vector(tmp_path)
    assert main(["bake", "--model", str(src), "--vector", vec, "--layer", str(LAYER), "--site", site,
                 "--coef", str(COEF), "-o", str(out), "--approx", *ARGS]) == 0
    recipe = json.loads((out / "bakesteer.json").read_text())
    assert recipe["exact"] is False
    a = recipe["approximation"]
    assert a["slots"] == [f"{LAYER + 1}.self_attn.{m}_proj" for m in ("k", "o", "q")]
    assert len(a["calibration"]["sha256"]) == 64 and a["calibration"]["fit_passages"] > 0

    # loads as its own architecture with plain from_pretrained, nothing missing or unexpected
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == json.loads((src / "config.json").read_text())["architectures"]
    assert cfg["attention_bias"] is True
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info

    # the recorded figures equal an independent recomputation on the recorded held-out text
    steer = Steer(site, LAYER, np.load(vec), COEF)
    got = _independent_gap(src, out, steer, a["calibration"]["heldout_token_budget"])
    rec = a["heldout"]
    assert got["tokens"] == rec["tokens"]
    assert got["kl_hooked_baked"] == pytest.approx(rec["kl_hooked_baked"], rel=1e-3, abs=1e-7)
    assert got["kl_source_hooked"] == pytest.approx(rec["kl_source_hooked"], rel=1e-3, abs=1e-7)
    assert abs(got["top1_agreement"] - rec["top1_agreement"]) <= 1 / rec["tokens"]
    # the steering is visible, and what was kept is no worse than the closed form on held-out text
    assert got["kl_source_hooked"] > 0.02
    assert got["kl_hooked_baked"] <= a["closed_form"]["kl_hooked_baked"] * (1 + 1e-3)
    assert got["kl_hooked_baked"] < got["kl_source_hooked"]  # closer to the hooked model than no bake at all
    assert main(["verify", str(out), "-q"]) == 0


def test_closed_form_recomputed_on_prenorm(tmp_path):
    """On a pre-norm family the closed form is coef·v at the o bias of block L+1: recompute its gap by hand."""
    src, out = _source(tmp_path, "qwen3"), tmp_path / "out"
    vec = _vector(tmp_path)
    assert main(["bake", "--model", str(src), "--vector", vec, "--layer", str(LAYER), "--coef", str(COEF),
                 "-o", str(out), "--approx", *ARGS]) == 0
    a = json.loads((out / "bakesteer.json").read_text())["approximation"]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    placed = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    placed.model.layers[LAYER + 1].self_attn.o_proj.register_forward_hook(
        lambda m, i, y: y + COEF * torch.from_numpy(np.load(vec)))  # = an o bias of coef·v in block L+1
    tok = AutoTokenizer.from_pretrained(out)
    texts = (out / "bakesteer" / "heldout.txt").read_text().splitlines()
    steer = Steer("resid", LAYER, np.load(vec), COEF)
    kl, n, left = 0.0, 0, a["calibration"]["heldout_token_budget"]
    for t in texts:
        ids = tok(t)["input_ids"][:256][: max(2, left)]
        left -= len(ids)
        x = torch.tensor([ids])
        with torch.no_grad(), steering(model, [steer]):
            h = torch.log_softmax(model(x).logits[0].double(), -1)
        with torch.no_grad():
            c = torch.log_softmax(placed(x).logits[0].double(), -1)
        kl += float((h.exp() * (h - c)).sum())
        n += len(ids)
        if left <= 0:
            break
    assert kl / n == pytest.approx(a["closed_form"]["kl_hooked_baked"], rel=1e-3)
    assert a["heldout"]["kl_hooked_baked"] <= kl / n * (1 + 1e-3)


@pytest.mark.parametrize("family,site", [("qwen3", "attn_out"), ("gemma2", "attn_in"), ("olmo2", "attn_in"),
                                         ("llama", "resid")])
def test_exact_site_never_approximated(tmp_path, family, site, monkeypatch):
    import bakesteer.approx

    def boom(*a, **k):
        raise AssertionError("an exact site went through the approximate path")

    monkeypatch.setattr(bakesteer.approx, "fit", boom)
    src, out = _source(tmp_path, family), tmp_path / "out"
    assert main(["bake", "--model", str(src), "--vector", _vector(tmp_path), "--layer", "1", "--site", site,
                 "-o", str(out), "--approx", "-q"]) == 0
    recipe = json.loads((out / "bakesteer.json").read_text())
    assert recipe["exact"] is True and "approximation" not in recipe
    assert main(["verify", str(out), "-q"]) == 0


def test_unbake_restores_an_approximate_bake(tmp_path):
    src, out, back = _source(tmp_path, "gemma2"), tmp_path / "out", tmp_path / "back"
    (src / "README.md").write_text("the base model's own card\n")
    assert main(["bake", "--model", str(src), "--vector", _vector(tmp_path), "--layer", "1", "-o", str(out),
                 "--approx", *ARGS]) == 0
    card = (out / "README.md").read_text()
    h = json.loads((out / "bakesteer.json").read_text())["approximation"]["heldout"]
    assert "APPROXIMATE" in card and f"{h['ratio']:.1%} of the steering's KL" in card, card
    assert main(["unbake", str(out), "-o", str(back), "-q"]) == 0
    assert (back / "README.md").read_text() == "the base model's own card\n"
    a, b = load_file(str(src / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (back / "config.json").read_bytes() == (src / "config.json").read_bytes()


@pytest.mark.parametrize("calib,extra,match", [
    ("# only a comment\n\n", [], "has 0 passage(s)"),
    ("a\nb\nc\nd\ne\n", [], "tokens to fit on"),
    (None, ["--fit-lr", "1e30"], "the fit diverged"),
    (None, ["--layer", str(LAYERS - 1)], "choose a layer below"),
    (None, ["--calib-tokens", "0"], "--calib-tokens must be positive"),
])
def test_bad_approximate_input(tmp_path, capsys, calib, extra, match):
    src, out = _source(tmp_path, "qwen3"), tmp_path / "out"
    argv = ["bake", "--model", str(src), "--vector", _vector(tmp_path), "-o", str(out), "--approx", *ARGS]
    if calib is not None:
        (tmp_path / "calib.txt").write_text(calib)
        argv += ["--calib", str(tmp_path / "calib.txt")]
    argv += extra if "--layer" in extra else ["--layer", "1", *extra]
    refused(capsys, argv, match, tmp_path, out)


def test_refusal_points_to_approx_and_approximations_do_not_compose(tmp_path, capsys):
    src, out = _source(tmp_path, "olmo2"), tmp_path / "out"
    vec = _vector(tmp_path)
    base = ["bake", "--model", str(src), "--vector", vec, "--layer", "1", "-q"]
    refused(capsys, base + ["-o", str(out)], "sites that bake exactly here: attn_in, attn_out; or pass --approx",
             tmp_path, out)
    assert main(base + ["-o", str(out), "--approx", *ARGS]) == 0
    again = tmp_path / "again"
    capsys.readouterr()
    assert main(["bake", "--model", str(out), "--vector", vec, "--layer", "1", "--site", "attn_out", "-o",
                 str(again), "-q"]) == 2
    assert "does not compose" in capsys.readouterr().err and not again.exists()
