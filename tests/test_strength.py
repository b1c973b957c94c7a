"""Steering strength: what a steer does to the model, reported apart from whether a bake reproduces it.

The figures are checked against transformers on the real SmolLM2 (an independent forward with hooks),
and the verdicts against steers whose effect is known from the eval sweep (scripts/results/eval_love).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bakesteer.cli import main
from bakesteer.engine import Model
from bakesteer.evaluate import propose, read_lines
from bakesteer.hooks import Steer, steering
from bakesteer.lm import take_tokens
from bakesteer.paths import BUNDLED
from bakesteer.strength import DESTRUCTIVE_PPL, NEGLIGIBLE_KL, STRENGTH_TOKENS, measure
from bakesteer.vectors import load_vector_file

LOVE = load_vector_file("love.svec").vectors


@pytest.fixture(scope="module")
def streamed(smollm2):
    m = Model(smollm2, torch.float32)
    yield m
    m.close()


@torch.inference_mode()
def test_the_figures_equal_a_plain_transformers_forward(streamed, smollm2_model, smollm2_tok):
    """KL over the prompts, perplexity of the text and the typical norm, recomputed from transformers' own
    forward (unpadded, one sequence at a time) with hook steering."""
    steer = Steer("resid", 5, LOVE[5], 1.0)
    got = measure(streamed, smollm2_tok, [steer])
    tok, model = smollm2_tok, smollm2_model
    prompts = [tok(p)["input_ids"] for p in read_lines(BUNDLED / "prompts.txt")]
    text = take_tokens(tok, read_lines(BUNDLED / "calib.txt"), STRENGTH_TOKENS)
    kls, norms, nll = [], [], {"plain": [], "hooked": []}
    for ids in prompts + text:
        x = torch.tensor([ids])
        out = model(x, output_hidden_states=True)
        norms.append(out.hidden_states[6][0, 1:].double().norm(dim=-1))  # after block 5; position 0 left out
        with steering(model, [steer]):
            hooked = model(x).logits[0].double()
        plain = out.logits[0].double()
        if ids in prompts:
            p, q = plain.log_softmax(-1), hooked.log_softmax(-1)
            kls.append((p.exp() * (p - q)).sum(-1))
        else:
            for name, lg in (("plain", plain), ("hooked", hooked)):
                nll[name].append(-lg[:-1].log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0])
    kl = float(torch.cat(kls).mean())
    ppl = {k: math.exp(float(torch.cat(v).mean())) for k, v in nll.items()}
    assert got.kl == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert got.ppl_source == pytest.approx(ppl["plain"], rel=1e-4)
    assert got.ppl_steered == pytest.approx(ppl["hooked"], rel=1e-4)
    size, = got.sizes
    assert size.typical == pytest.approx(float(torch.cat(norms).median()), rel=1e-4)
    assert size.norm == pytest.approx(float(np.linalg.norm(LOVE[5])), rel=1e-6)
    assert got.kl > 10 * NEGLIGIBLE_KL  # the steer moved the model: the figures above are not all zero


def test_no_steer_measures_nothing(streamed, smollm2_tok):
    s = measure(streamed, smollm2_tok, [])
    assert s.kl == pytest.approx(0.0, abs=1e-12) and s.ppl_ratio == pytest.approx(1.0, abs=1e-12)
    assert s.verdict == "negligible"


@pytest.mark.parametrize("steers, verdict", [
    ([(5, 0.05)], "negligible"),  # KL about 1.6e-3
    ([(5, 1.0)], "visible"),  # the main job: KL about 0.4, perplexity ×1.6
    ([(10, 4.0), (11, 4.0), (12, 4.0)], "destructive"),  # the old README range example: ',-----------'
    ([(4, 0.3), (5, 0.3), (6, 0.3)], "visible"),  # the README's range example
    ([(4, 0.5), (5, 0.5), (6, 0.5)], "destructive"),  # ... which the README says breaks at 0.5
])
def test_the_verdicts(streamed, smollm2_tok, steers, verdict):
    s = measure(streamed, smollm2_tok, [Steer("resid", b, LOVE[b], c) for b, c in steers])
    assert s.verdict == verdict, (s.kl, s.ppl_ratio)
    assert (s.warning() is None) == (verdict == "visible")
    if verdict == "destructive":
        assert s.ppl_ratio > DESTRUCTIVE_PPL and "breaks the model" in s.warning()
    if verdict == "negligible":
        assert s.kl < NEGLIGIBLE_KL and "changes almost nothing" in s.warning()


def test_bake_and_verify_report_strength_apart_from_the_verdict(tmp_path, capsys):
    out = tmp_path / "weak"
    assert main(["bake", "--vector", "love.svec", "--layer", "5", "--coef", "0.05", "-o", str(out), "-q"]) == 0
    said = capsys.readouterr().out
    assert "strength (negligible)" in said and "warning: this steer changes almost nothing" in said
    assert main(["verify", str(out), "-q", "--new-tokens", "4"]) == 0  # equivalent, so PASS and exit 0
    said = capsys.readouterr().out
    assert said.splitlines()[1].startswith("PASS") and "warning: this steer changes almost nothing" in said
    doc = json.loads((out / "bakesteer" / "verify.json").read_text())
    assert doc["passed"] and doc["strength"]["verdict"] == "negligible"
    assert "Steering strength (negligible)" in (out / "README.md").read_text()


def test_a_destructive_bake_draws_the_warning(tmp_path, capsys):
    assert main(["bake", "--vector", "love.svec", "--layers", "10-12", "--coefs", "4", "-o", str(tmp_path / "x"),
                 "-q"]) == 0
    said = capsys.readouterr().out
    assert "strength (destructive)" in said and "warning: this steer breaks the model's language" in said


def test_the_readme_extract_path_steers_visibly_with_its_suggested_coefficient(tmp_path, streamed, smollm2_tok,
                                                                                capsys):
    """pca_diff writes unit vectors; the file's suggested coefficient (the pairs' mean separation along the
    direction) makes the README's extract -> bake path a visible steer, where coef 1 is negligible."""
    vec = tmp_path / "lovehate.svec"
    assert main(["extract", "--pairs", "love_hate.jsonl", "--method", "pca_diff", "--layers", "5", "-o", str(vec),
                 "-q"]) == 0
    assert "suggested coefficient" in capsys.readouterr().out
    vf = load_vector_file(vec)
    assert np.linalg.norm(vf.vectors[5]) == pytest.approx(1.0)
    assert vf.coef > 1 and "separation" in vf.meta["coef_basis"]
    steered = measure(streamed, smollm2_tok, [Steer("resid", 5, vf.vectors[5], vf.coef)])
    unit = measure(streamed, smollm2_tok, [Steer("resid", 5, vf.vectors[5], 1.0)])
    assert steered.verdict == "visible" and steered.kl > NEGLIGIBLE_KL, steered
    assert unit.verdict == "negligible", unit


def test_eval_proposes_the_visible_and_harmless_coefficients():
    pts = [{"layer": 5, "coef": c, "kl": kl, "ratio": {"on": r, "off": r}} for c, kl, r in
           [(0.1, 0.001, 1.0), (0.5, 0.05, 1.1), (1.0, 0.4, 1.6), (2.0, 2.0, 32.0)]]
    pts += [{"layer": 9, "coef": c, "kl": 5.0, "ratio": {"on": 100.0}} for c in (0.5, 1.0)]
    pts += [{"layer": 3, "coef": -2.0, "kl": 0.2, "ratio": {"on": 1.2}}, {"layer": 3, "coef": 1.0, "kl": 0.1,
                                                                          "ratio": {"on": 1.1}}]
    assert propose(pts) == {"3": [1.0, -2.0], "5": [0.5, 1.0], "9": None}
