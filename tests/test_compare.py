"""compare: source vs baked vs hooked completions, checked against direct generation; JSON and Markdown."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bakesteer.cli import main
from tiny import HIDDEN
from test_evaluate import tiny_with_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from bakesteer.bake import Item, bake
    from bakesteer.steer import Steer

    root = tmp_path_factory.mktemp("compare")
    model = tiny_with_tokenizer(root / "m")
    v = np.random.default_rng(5).normal(size=HIDDEN)
    np.save(root / "v.npy", v)
    bake(root / "m", [Item(Steer("resid", 1, v, 3.0), {})], root / "baked", progress=False)
    return root, model


def _decode(ids: list[int]) -> str:
    return "".join(chr(i + 31) for i in ids if i)


def test_greedy_columns_match_direct_generation_and_baked_equals_hooked(folders, tmp_path, capsys):
    root, model = folders
    out = tmp_path / "cmp"
    argv = ["compare", str(root / "baked"), "--vector", str(root / "v.npy"), "--layer", "1", "--coef", "3",
            "--prompt", "hello there", "--prompt", "the cat", "-n", "2", "--new-tokens", "12", "--greedy",
            "-o", str(out), "-q"]
    assert main(argv) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    src, baked, hooked = r["variants"]
    assert src == "source" and baked.startswith("baked") and hooked.startswith("hooked")
    moved = False
    for row in r["rows"]:
        c = row["completions"]
        ids = torch.tensor([[ord(ch) - 31 for ch in row["prompt"]]])
        with torch.inference_mode():
            direct = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                    pad_token_id=0, eos_token_id=0)[0, ids.shape[1]:].tolist()
        direct = direct[:direct.index(0)] if 0 in direct else direct
        assert c[src] == [_decode(direct)]  # --greedy: one completion, whatever -n says
        assert c[baked] == c[hooked]
        moved |= c[hooked] != c[src]
    assert moved, "the steer must change at least one completion, or this test proves nothing"
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") == 1 + 2 and "greedy" in md and r["settings"]["n"] == 1
    assert "hello there" in capsys.readouterr().out  # the rich table


def test_sampling_is_seeded_and_gives_n_completions(folders, tmp_path):
    root, _ = folders
    argv = ["compare", "--model", str(root / "m"), "--vector", str(root / "v.npy"), "--layer", "1", "--prompt", "abc",
            "-n", "3", "--new-tokens", "8", "--seed", "7", "-q"]
    results = []
    for k in range(2):
        assert main(argv + ["-o", str(tmp_path / f"s{k}")]) == 0
        results.append(json.loads((tmp_path / f"s{k}.json").read_text()))
    assert results[0] == results[1]
    row = results[0]["rows"][0]["completions"]["source"]
    assert len(row) == 3 and len(set(row)) > 1  # sampled: n different completions


def test_compare_needs_something_to_compare(folders, capsys):
    root, _ = folders
    assert main(["compare", "--model", str(root / "m"), "--prompt", "x"]) == 2
    assert "give a baked folder, or --vector" in capsys.readouterr().err
    assert main(["compare", "--model", str(root / "m"), "--vector", str(root / "v.npy"), "--layer", "1",
                 "--coef", "1,2", "--prompt", "x"]) == 2
    assert "one coefficient" in capsys.readouterr().err
