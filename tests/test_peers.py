"""The peers as oracles on the real SmolLM2: their own extraction and their own steering code vs a bake.

repeng 0.4.0 and steering-vectors 0.12.2 (the `peers` extra, installed with --no-deps). A vector is made
with the peer's code, steered with the peer's hooks, baked from the peer's file by bakesteer, and the
logits compared in fp32: this is what proves each file's layer convention.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

with pytest.MonkeyPatch.context() as mp:  # repeng 0.4.0 names np.float_ (removed in NumPy 2) at import only
    mp.setattr(np, "float_", np.float64, raising=False)
    repeng = pytest.importorskip("repeng")
sv_lib = pytest.importorskip("steering_vectors")

from bakesteer.cli import main  # noqa: E402
from bakesteer.extract import Pair, extract  # noqa: E402
from bakesteer.hooks import Steer, steering  # noqa: E402
from bakesteer.vectors import load_vector_file  # noqa: E402
from helpers import greedy, logits  # noqa: E402

PAIRS = [("I love you", "I hate you"), ("Love", "Hate"), ("You are wonderful and kind", "You are awful and cruel"),
         ("What a lovely day", "What a terrible day"), ("We care for each other", "We loathe each other"),
         ("Thank you so much, friend", "Damn you, enemy")]
PROMPTS = ["I hate you because", "The best thing about the weekend is"]
TOL = 1e-4


@pytest.fixture(scope="module")
def model(smollm2_model):
    return smollm2_model


@pytest.fixture(scope="module")
def tok(smollm2_tok):
    return smollm2_tok


def _bake(smollm2, tmp_path, vector, layers: str, coef: float):
    out = tmp_path / "baked"
    assert main(["bake", "--model", str(smollm2), "--vector", str(vector), "--layer", layers, "--coef", str(coef),
                 "-o", str(out), "-q"]) == 0
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()


def _compare(tok, model, baked, steer_ctx) -> tuple[float, float]:
    """(max |baked - peer-steered|, max |peer-steered - plain|) over the prompts; 32 greedy tokens must match."""
    diff = effect = 0.0
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt")["input_ids"]  # one sequence per call (repeng's ControlModel)
        plain = logits(model, ids)
        with steer_ctx():
            hooked = logits(model, ids)
            g_hooked = greedy(model, ids, 32) if prompt == PROMPTS[0] else None
        diff = max(diff, float((logits(baked, ids) - hooked).abs().max()))
        effect = max(effect, float((hooked - plain).abs().max()))
        if g_hooked is not None:
            assert greedy(baked, ids, 32) == g_hooked, prompt
    return diff, effect


def test_repeng_control_vector_gguf_baked_equals_control_model(smollm2, model, tok, tmp_path):
    """repeng trains and exports the GGUF; its ControlModel adds direction N to model.layers[N]'s output."""
    layers = [4, 8, 12]
    cv = repeng.ControlVector.train(model, tok, [repeng.DatasetEntry(p, n) for p, n in PAIRS], hidden_layers=layers)
    cv.export_gguf(str(tmp_path / "cv.gguf"))
    assert sorted(load_vector_file(tmp_path / "cv.gguf").vectors) == layers
    baked = _bake(smollm2, tmp_path, tmp_path / "cv.gguf", "4,8,12", 8.0)

    class control:
        def __enter__(self):
            self.cm = repeng.ControlModel(model, layers)
            self.cm.set_control(cv, 8.0)

        def __exit__(self, *exc):
            self.cm.reset()
            self.cm.unwrap()

    diff, effect = _compare(tok, model, baked, control)
    print(f"repeng ControlModel vs bake: max |Δ| {diff:.2e}, effect {effect:.3f}")
    assert diff <= TOL and effect >= 100 * TOL


LAYER_TYPES = {"decoder_block": 0.5, "self_attn": 2.0, "mlp": 2.0, "input_layernorm": 2.0,
               "post_attention_layernorm": 2.0}  # multiplier: the block output's difference is ~100x the others


def test_steering_vectors_dumps_baked_equal_apply(smollm2, model, tok, tmp_path):
    """steering-vectors trains (mean aggregator) one vector per layer_type at block 6 and applies them all;
    bakesteer bakes the five .pt dumps together, each at the site its layer_type names."""
    svs, argv = {}, []
    for layer_type, mult in LAYER_TYPES.items():
        svs[layer_type] = sv_lib.train_steering_vector(model, tok, PAIRS, layers=[6], layer_type=layer_type)
        torch.save(dataclasses.asdict(svs[layer_type]), tmp_path / f"{layer_type}.pt")
        argv += ["--vector", str(tmp_path / f"{layer_type}.pt"), "--coef", str(mult)]
    assert main(["bake", "--model", str(smollm2), *argv, "--layer", "6", "-o", str(tmp_path / "baked"), "-q"]) == 0
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", dtype=torch.float32).eval()

    @contextlib.contextmanager
    def apply_all():
        with contextlib.ExitStack() as stack:
            for layer_type, mult in LAYER_TYPES.items():
                stack.enter_context(svs[layer_type].apply(model, multiplier=mult))
            yield

    diff, effect = _compare(tok, model, baked, apply_all)
    print(f"steering-vectors apply (5 layer types at block 6) vs bake: max |Δ| {diff:.2e}, effect {effect:.3f}")
    assert diff <= TOL and effect >= 100 * TOL


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_mean_diff_agrees_with_steering_vectors(model, tok, tmp_path, layer_type):
    sv = sv_lib.train_steering_vector(model, tok, PAIRS, layers=[2, 6], layer_type=layer_type)
    torch.save(dataclasses.asdict(sv), tmp_path / "sv.pt")
    site = load_vector_file(tmp_path / "sv.pt").site
    ours = extract(model, tok, [Pair(p, n) for p, n in PAIRS], site, [2, 6])
    for L in (2, 6):
        theirs = sv.layer_activations[L].double().numpy()
        rel = float(np.abs(ours.vectors[L] - theirs).max() / np.abs(theirs).max())
        print(f"mean_diff vs steering-vectors' mean aggregator ({layer_type} -> {site}, block {L}): "
              f"max relative |Δ| {rel:.1e}")
        assert rel <= 1e-5


@pytest.mark.parametrize("method", ["pca_diff", "pca_center"])
def test_pca_directions_agree_with_repeng(model, tok, method):
    """Same pairs, same blocks (all but the last: repeng reads that one after the final norm)."""
    layers = list(range(1, model.config.num_hidden_layers - 1))
    theirs = repeng.ControlVector.train(model, tok, [repeng.DatasetEntry(p, n) for p, n in PAIRS],
                                        hidden_layers=layers, method=method).directions
    ours = extract(model, tok, [Pair(p, n) for p, n in PAIRS], layers=layers, method=method).vectors
    cos = [float(ours[L] @ theirs[L]) / float(np.linalg.norm(theirs[L])) for L in layers]
    print(f"{method}: min cosine vs repeng {min(cos):.6f}")
    assert min(cos) >= 0.999  # and the same sign: the positive side projects higher in both


def test_bakesteer_files_load_in_the_peers(model, tok, tmp_path):
    """A bakesteer extraction written as GGUF reads in repeng; as a .pt dump it rebuilds a SteeringVector."""
    res = extract(model, tok, [Pair(p, n) for p, n in PAIRS], "attn_out", [3, 7])
    from bakesteer.vectors import write_vectors

    write_vectors(tmp_path / "v.pt", "steering-vectors", "attn_out", res.vectors, {"model_type": "llama"})
    sv = sv_lib.SteeringVector(**torch.load(tmp_path / "v.pt", weights_only=True))
    assert sv.layer_type == "self_attn" and sorted(sv.layer_activations) == [3, 7]
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    with sv.apply(model, multiplier=3.0):
        theirs = logits(model, ids)
    with steering(model, [Steer("attn_out", L, v.astype(np.float32), 3.0) for L, v in res.vectors.items()]):
        ours = logits(model, ids)
    assert float((theirs - ours).abs().max()) <= 1e-5 and float((ours - logits(model, ids)).abs().max()) >= 1e-2

    resid = extract(model, tok, [Pair(p, n) for p, n in PAIRS], layers=[5, 9], method="pca_diff")
    write_vectors(tmp_path / "v.gguf", "gguf", "resid", resid.vectors, {"model_type": "llama"})
    cv = repeng.ControlVector.import_gguf(str(tmp_path / "v.gguf"))
    assert cv.model_type == "llama" and sorted(cv.directions) == [5, 9]
    assert all(np.array_equal(cv.directions[L], resid.vectors[L].astype(np.float32)) for L in (5, 9))
