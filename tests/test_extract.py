"""Extraction: every site of every family in one pass per batch, padding sides, aggregations, methods, inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bakesteer.arch import SITES
from bakesteer.cli import main
from bakesteer.errors import BakesteerError
from bakesteer.extract import Pair, Prompting, capture, direction, extract, load_pairs, parse_pairs
from bakesteer.hooks import site_at, watch
from tiny import CONFIGS, LAYERS, VOCAB, make_model
from bakesteer.vectors import load_vector_file

TOL = 1e-4  # fp32 batching moves values by ~1e-5; a padding or indexing bug moves them by O(1)
TEXTS = ["the cat sat", "a much longer sentence about dogs", "hi", "love and kindness", "x y", "hate"]


class CharTok:
    """A character tokenizer with offsets: enough for capture(), independent of any vocabulary file."""

    pad_token_id, eos_token_id, chat_template = 0, 0, None

    def __init__(self, side: str = "right"):
        self.padding_side = side

    def __call__(self, texts, add_special_tokens=True, return_offsets_mapping=False):
        out = {"input_ids": [[1 + ord(c) % (VOCAB - 1) for c in t] for t in texts]}
        if return_offsets_mapping:
            out["offset_mapping"] = [[(i, i + 1) for i in range(len(t))] for t in texts]
        return out


@torch.inference_mode()
def _reference(model, text: str, site: str, layer: int, span: slice) -> np.ndarray:
    """The site's output for one unpadded text, averaged over ``span`` of its tokens."""
    got = {}

    def hook(hidden):
        got["h"] = hidden[0] if hidden.dim() == 3 else hidden  # OPT's fc2 gives the (T, H) rows of one text

    h = watch(*site_at(model, site, layer), hook)
    try:
        model(torch.tensor([CharTok()([text])["input_ids"][0]]))
    finally:
        h.remove()
    return got["h"][span].double().mean(0).numpy()


@pytest.fixture(scope="module")
def models():
    return {name: make_model(name) for name in CONFIGS}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_capture_equals_each_text_alone_on_every_site(models, name):
    """Batched and padded, all blocks at once, whichever side the tokenizer pads: each text run alone."""
    model = models[name]
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        for site in SITES:
            for side in ("right", "left"):
                calls.clear()
                got = capture(model, CharTok(side), TEXTS, [0] * len(TEXTS), site, [0, 2], batch_size=4)
                assert len(calls) == 2  # one forward pass per batch of 4, both blocks captured in it
                for i, text in enumerate(TEXTS):
                    for L in (0, 2):
                        ref = _reference(model, text, site, L, slice(-1, None))
                        assert np.abs(got[L][i] - ref).max() < TOL, (site, side, L, i)
    finally:
        model._forward_pre_hooks.clear()


def test_the_pass_stops_after_the_deepest_block(models):
    model = models["llama"]
    seen = []
    h = model.model.layers[LAYERS - 1].register_forward_hook(lambda *a: seen.append(1))
    try:
        capture(model, CharTok(), TEXTS, [0] * len(TEXTS), "resid", [1], batch_size=8)
    finally:
        h.remove()
    assert seen == []


@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_and_suffix_aggregation(models, side):
    model = models["qwen2"]
    prompting = Prompting("I am {text}.", " Then I said")
    rendered = [prompting.render(None, t) for t in TEXTS]
    texts, starts = [r[0] for r in rendered], [r[1] for r in rendered]
    mean = capture(model, CharTok(side), texts, starts, "mlp_out", [1], "mean", batch_size=3)
    suffix = capture(model, CharTok(side), texts, starts, "mlp_out", [1], "suffix", batch_size=3)
    for i, (text, start) in enumerate(zip(texts, starts)):
        assert text.endswith(" Then I said") and start == len(text) - len(" Then I said")
        assert np.abs(mean[1][i] - _reference(model, text, "mlp_out", 1, slice(None))).max() < TOL
        assert np.abs(suffix[1][i] - _reference(model, text, "mlp_out", 1, slice(start, None))).max() < TOL


def test_suffix_aggregation_needs_a_suffix(models):
    with pytest.raises(BakesteerError, match="--suffix"):
        capture(models["llama"], CharTok(), TEXTS, [len(t) for t in TEXTS], "resid", [0], "suffix")


def test_methods_against_an_eigendecomposition():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(12, 16)) + np.linspace(0, 3, 16)
    neg = rng.normal(size=(12, 16))
    d = pos - neg
    v, ev = direction(pos, neg, "mean_diff")
    assert np.allclose(v, d.mean(0))
    for method, train in (("pca_diff", d - d.mean(0)), ("pca_center", np.concatenate([d / 2, -d / 2]))):
        w, vecs = np.linalg.eigh(train.T @ train)
        v, ev = direction(pos, neg, method)
        assert abs(np.linalg.norm(v) - 1) < 1e-12
        assert abs(abs(v @ vecs[:, -1]) - 1) < 1e-10
        assert abs(ev - w[-1] / w.sum()) < 1e-10
        assert (d @ v > 0).mean() >= 0.5  # the positive side projects higher
        v2, _ = direction(neg, pos, method)
        assert np.allclose(v2, -v)  # swapping the sides flips the sign


def test_pca_diff_needs_two_pairs():
    with pytest.raises(BakesteerError, match="at least 2 pairs"):
        direction(np.ones((1, 4)), np.zeros((1, 4)), "pca_diff")


def test_pair_files(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"positive": "a", "negative": "b"}\n\n{"positive": "c", "negative": "d"}\n')
    (tmp_path / "p.csv").write_text("positive,negative\na,b\n\"c, with comma\",d\n")
    (tmp_path / "p.json").write_text(json.dumps([{"positive": "a", "negative": "b"}]))
    assert load_pairs(tmp_path / "p.jsonl") == [Pair("a", "b"), Pair("c", "d")]
    assert load_pairs(tmp_path / "p.csv")[1] == Pair("c, with comma", "d")
    assert load_pairs(tmp_path / "p.json") == [Pair("a", "b")]


@pytest.mark.parametrize("text, match", [
    ("", "holds no pairs"),
    ('{"positive": "a", "negative": "b"}\n{"positive": "a", "negative": \n', "line 2 is not valid JSON"),
    ('{"positive": "a", "negative": "b"}\n{"positive": "a", "negative": "  "}\n', "line 2 has an empty negative"),
    ('{"positive": "a"}\n', "line 1 is not an object with 'positive' and 'negative'"),
])
def test_bad_pair_files(text, match):
    with pytest.raises(BakesteerError, match=match):
        parse_pairs(text, "pairs.jsonl")


def test_chat_template_and_suffix(smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2)
    text, start = Prompting("Pretend you are {text}.", "Sure,", chat=True).render(tok, "kind")
    assert "<|im_start|>user\nPretend you are kind.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\nSure,") and text[start:] == "Sure,"


# ---- the command, on a tiny Llama that uses SmolLM2's tokenizer -------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cli_extract_writes_a_self_describing_file(tmp_path, tiny_dir, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"positive": p, "negative": n}) + "\n"
                             for p, n in [("Love", "Hate"), ("I love you", "I hate you"), ("kind", "cruel")]))
    out, ibm = tmp_path / "v.svec", tmp_path / "v-ibm.svec"
    assert main(["extract", "--model", str(tiny_dir), "--pairs", str(pairs), "--method", "pca_diff",
                 "--template", "I feel {text}", "--suffix", " today", "--aggregate", "suffix",
                 "-o", str(out), "--ibm", str(ibm), "-q"]) == 0
    doc = json.loads(out.read_text())["bakesteer"]
    assert doc["site"] == "resid" and doc["method"] == "pca_diff(suffix)" and doc["pairs"] == 3
    assert doc["model"]["hidden_size"] == 32 and doc["model"]["num_hidden_layers"] == 3
    assert doc["prompting"] == {"template": "I feel {text}", "suffix": " today", "chat": False}
    assert set(doc["vectors"]) == {"0", "1", "2"} and set(doc["explained_variances"]) == {"0", "1", "2"}
    assert all(abs(n - 1) < 1e-6 for n in doc["norms"].values())
    vf = load_vector_file(ibm)  # IBM: key N+1, the last block left out (its output is the input of no block)
    assert vf.format == "ibm-svec" and sorted(vf.vectors) == [1, 2]
    assert np.array_equal(vf.vectors[2], load_vector_file(out).vectors[1])
    assert "block 2 left out" in capsys.readouterr().out


def test_cli_extract_pos_neg_and_site(tmp_path, tiny_dir):
    out = tmp_path / "v.svec"
    assert main(["extract", "--model", str(tiny_dir), "--pos", "Love", "--neg", "Hate", "--site", "attn_in",
                 "--layers", "1", "--dtype", "bfloat16", "-o", str(out), "-q"]) == 0
    vf = load_vector_file(out)
    assert vf.site == "attn_in" and sorted(vf.vectors) == [1] and vf.meta["method"] == "mean_diff(last)"


@pytest.mark.parametrize("args, match", [
    (["--pairs", "{empty}"], "holds no pairs"),
    (["--pairs", "{bad}"], "line 2 is not valid JSON"),
    (["--pos", "Love", "--neg", " "], "empty negative side"),
    (["--pos", "Love", "--neg", "Hate", "--layers", "7"], "layer 7 is out of range; this model has blocks 0 to 2"),
    (["--pos", "Love", "--neg", "Hate", "--template", "no placeholder"], "must contain {text}"),
    (["--pos", "Love", "--neg", "Hate", "--site", "mlp_in", "--ibm", "{tmp}/x.svec"], "only holds residual"),
    (["--pos", "Love", "--pos", "Kind", "--neg", "Hate"], "as many --neg as --pos"),
    (["--pos", "Love", "--neg", "Hate", "--method", "pca_diff"], "at least 2 pairs"),
])
def test_cli_extract_bad_input(tmp_path, tiny_dir, capsys, args, match):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"positive": "a", "negative": "b"}\n{"positive": "a", oops}\n')
    args = [a.format(empty=tmp_path / "empty.jsonl", bad=tmp_path / "bad.jsonl", tmp=tmp_path) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(["extract", "--model", str(tiny_dir), *args, "-o", str(tmp_path / "out.svec"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bakesteer: error: ") and match in err and err.count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_extract_layers_default_to_all(tiny_dir):
    from bakesteer.extract import load_model

    model, tok, identity = load_model(str(tiny_dir))
    res = extract(model, tok, [Pair("Love", "Hate")])
    assert sorted(res.vectors) == [0, 1, 2] and identity["model_type"] == "llama"


def test_device_map_auto(tiny_dir):
    """--device auto loads with device_map="auto" (accelerate's dispatch hooks; on this machine, all CPU)."""
    from bakesteer.extract import load_model

    model, tok, _ = load_model(str(tiny_dir), device="auto", quiet=True)
    plain, _, _ = load_model(str(tiny_dir), quiet=True)
    pairs = [Pair("Love", "Hate"), Pair("kind words", "cruel words")]
    a, b = extract(model, tok, pairs, layers=[1]), extract(plain, tok, pairs, layers=[1])
    assert np.abs(a.vectors[1] - b.vectors[1]).max() < 1e-5
