"""eval: perplexity, KL and the sweep checked against direct computations; bad input; lazy imports."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from bakesteer import evaluate as ev
from bakesteer.cli import main
from tiny import HIDDEN, make_model, save_model


def tiny_with_tokenizer(path, name: str = "llama"):
    """A tiny random model saved with a character-level tokenizer (printable ASCII = ids 1..95)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = save_model(name, path)
    vocab = {"<unk>": 0, **{chr(i): i - 31 for i in range(32, 127)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    t.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<unk>").save_pretrained(path)
    return model


def _add_hook(model, layer: int, vec: torch.Tensor):
    """Independent steering: add to the output of decoder block ``layer`` (not bakesteer's hooks)."""
    def hook(mod, inp, out):
        return (out[0] + vec,) + tuple(out[1:]) if isinstance(out, tuple) else out + vec
    return model.model.layers[layer].register_forward_hook(hook)


@torch.no_grad()
def _direct(model, seqs, prompts):
    """Set perplexity = exp(mean NLL over tokens after the first), one sequence at a time; and log-probs."""
    nll = []
    for s in seqs:
        logits = model(torch.tensor([s])).logits[0].double()
        logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        nll += [-float(logp[i, s[i + 1]]) for i in range(len(s) - 1)]
    lps = [torch.log_softmax(model(torch.tensor([p])).logits[0].double(), -1) for p in prompts]
    return math.exp(sum(nll) / len(nll)), lps


def _kl_direct(ps, qs) -> float:
    vals = [float((p.exp() * (p - q)).sum()) for pp, qq in zip(ps, qs) for p, q in zip(pp, qq)]
    return sum(vals) / len(vals)


def test_sweep_matches_a_direct_computation():
    model = make_model("llama", seed=1)
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(0, 96, (n,), generator=g).tolist()  # noqa: E731
    sets = {"on": [rand(n) for n in (5, 9, 13, 7)], "off": [rand(n) for n in (11, 6, 8)]}
    prompts = [rand(6), rand(10)]
    vecs = {1: np.random.default_rng(0).normal(size=HIDDEN), 3: np.random.default_rng(1).normal(size=HIDDEN)}
    coefs = [4.0, 16.0]
    res = ev.sweep(model, vecs, "resid", coefs, sets, prompts, progress=False, batch=3)
    base = {k: _direct(model, v, prompts) for k, v in sets.items()}
    for k in sets:
        assert res["source_perplexity"][k] == pytest.approx(base[k][0], rel=1e-6)
    assert len(res["points"]) == 4
    for p in res["points"]:
        h = _add_hook(model, p["layer"], p["coef"] * torch.tensor(vecs[p["layer"]], dtype=torch.float32))
        try:
            steered = {k: _direct(model, v, prompts) for k, v in sets.items()}
        finally:
            h.remove()
        for k in sets:
            assert p["perplexity"][k] == pytest.approx(steered[k][0], rel=1e-5)
            assert p["ratio"][k] == pytest.approx(steered[k][0] / base[k][0], rel=1e-5)
        assert p["kl"] == pytest.approx(_kl_direct(base["on"][1], steered["on"][1]), rel=1e-4, abs=1e-7)
        assert p["kl"] > 1e-3 and abs(p["ratio"]["on"] - 1) > 1e-3  # the steer matters, so the test can fail


def test_kl_contributions_sum_to_the_kl_and_promoted_tokens_gain():
    g = torch.Generator().manual_seed(3)
    p = [torch.log_softmax(torch.randn(4, 20, generator=g, dtype=torch.float64), -1)]
    q = [torch.log_softmax(torch.randn(4, 20, generator=g, dtype=torch.float64), -1)]
    kl, contrib, gain = ev.kl_terms(p, q)
    assert kl == pytest.approx(_kl_direct(p, q), rel=1e-12)
    assert float(contrib.sum()) / 4 == pytest.approx(kl, rel=1e-12)
    top = int(torch.argmax((q[0].exp() - p[0].exp()).sum(0)))
    assert int(torch.argmax(gain)) == top


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    model = tiny_with_tokenizer(root / "m")
    (root / "on.txt").write_text("# a comment\nthe cat sat on the mat\n\nhello there, my friend\nabcabcabc\n")
    (root / "off.txt").write_text("numbers 12345 and 678\nwhat is going on\n")
    (root / "p.txt").write_text("I think\nthe weather\n")
    np.save(root / "v.npy", np.random.default_rng(2).normal(size=HIDDEN))
    return root, model


def _ids(text: str) -> list[int]:
    return [ord(c) - 31 for c in text]


def test_eval_cli_writes_json_and_plots_with_direct_numbers(tiny, tmp_path, capsys):
    root, model = tiny
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(root / "m"), "--vector", str(root / "v.npy"), "--layers", "1,2",
            "--coefs", "1,3", "--on", str(root / "on.txt"), "--off", str(root / "off.txt"),
            "--prompts", str(root / "p.txt"), "--max-sentences", "2", "-o", str(out), "-q"]
    assert main(argv) == 0
    r = json.loads((out / "eval.json").read_text())
    for name in ("eval.json", "ratio_by_layer.png", "by_coef.png", "heatmap.png"):
        assert (out / name).stat().st_size > 1000
    assert r["sets"] == {"on_topic": 2, "off_topic": 2}  # comment and blank line skipped, --max-sentences cut
    on = [_ids("the cat sat on the mat"), _ids("hello there, my friend")]
    assert r["source_perplexity"]["on_topic"] == pytest.approx(_direct(model, on, [])[0], rel=1e-6)
    v = torch.tensor(np.load(root / "v.npy"), dtype=torch.float32)
    h = _add_hook(model, 2, 3.0 * v)
    try:
        steered = _direct(model, on, [])[0]
    finally:
        h.remove()
    point = next(p for p in r["sweep"]["points"] if p["layer"] == 2 and p["coef"] == 3.0)
    assert point["perplexity"]["on_topic"] == pytest.approx(steered, rel=1e-5)
    assert "KL" in capsys.readouterr().out


def test_eval_of_a_baked_folder_equals_the_hooked_point(tiny, tmp_path):
    from bakesteer.bake import Item, bake
    from bakesteer.steer import Steer

    root, _ = tiny
    v = np.load(root / "v.npy")
    bake(root / "m", [Item(Steer("resid", 1, v, 3.0), {})], tmp_path / "baked", progress=False)
    argv = ["eval", str(tmp_path / "baked"), "--vector", str(root / "v.npy"), "--layers", "1", "--coefs", "3",
            "--on", str(root / "on.txt"), "--off", str(root / "off.txt"), "--prompts", str(root / "p.txt"),
            "-o", str(tmp_path / "ev"), "-q"]
    assert main(argv) == 0
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())
    hooked = r["sweep"]["points"][0]
    for k in ("on_topic", "off_topic"):
        assert r["baked"]["ratio"][k] == pytest.approx(hooked["ratio"][k], rel=1e-4)
        assert abs(hooked["ratio"][k] - 1) > 1e-3
    assert r["baked"]["kl"] == pytest.approx(hooked["kl"], rel=1e-3)


def _bad(argv, capsys, out) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bakesteer: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    return err


def test_bad_inputs(tiny, tmp_path, capsys):
    root, _ = tiny
    out = tmp_path / "ev"
    (tmp_path / "empty.txt").write_text("\n# only a comment\n  \n")
    base = ["eval", "--model", str(root / "m"), "--vector", str(root / "v.npy"), "--layers", "1", "--off",
            str(root / "off.txt"), "--prompts", str(root / "p.txt"), "-o", str(out), "-q"]
    assert "holds no sentences" in _bad(base + ["--on", str(tmp_path / "empty.txt")], capsys, out)
    assert "does not exist" in _bad(base + ["--on", str(tmp_path / "nope.txt")], capsys, out)
    assert "does not parse" in _bad(base + ["--coefs", "1,two"], capsys, out)
    assert "does not parse" in _bad(base + ["--coefs", "1,nan"], capsys, out)
    assert "does not parse" in _bad(base[:5] + ["--layers", "x"] + base[7:], capsys, out)
    assert "out of range" in _bad(base[:5] + ["--layers", "9"] + base[7:], capsys, out)


def test_sentence_longer_than_the_context_is_truncated_with_a_warning(tiny, tmp_path, capsys):
    root, _ = tiny
    (tmp_path / "long.txt").write_text("short one\n" + "x" * 300 + "\n")  # the tiny model's context is 256
    argv = ["eval", "--model", str(root / "m"), "--vector", str(root / "v.npy"), "--layers", "1", "--coefs", "1",
            "--on", str(tmp_path / "long.txt"), "--max-prompts", "0", "-o", str(tmp_path / "ev"), "-q"]
    assert main(argv) == 0
    assert "1 line(s) of the on_topic set are longer than the model's context (256 tokens)" in capsys.readouterr().err
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert r["sets"] == {"on_topic": 2} and math.isfinite(r["source_perplexity"]["on_topic"])


def test_missing_extra_is_one_sentence(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("matplotlib", "rich") else real(n, *a))
    for cmd in ("eval", "compare"):
        assert main([cmd, "--vector", "love.svec", "--layer" + ("s" if cmd == "eval" else ""), "5"]) == 2
        assert "pip install 'bakesteer[eval]'" in capsys.readouterr().err


def test_bake_never_imports_the_eval_extras(tmp_path):
    save_model("llama", tmp_path / "m")
    np.save(tmp_path / "v.npy", np.ones(HIDDEN))
    code = ("import sys; from bakesteer.cli import main; "
            f"rc = main(['bake', '--model', r'{tmp_path / 'm'}', '--vector', r'{tmp_path / 'v.npy'}', '--layer', '1', "
            f"'-o', r'{tmp_path / 'o'}', '-q']); "
            "assert rc == 0; print(sorted(m for m in ('rich', 'matplotlib') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
