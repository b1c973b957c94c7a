"""`bake --base-model` and what a bake infers about its base model: the recipe records it, the card's front matter
(read back with huggingface_hub's ModelCard) names it, and a plain local folder names none."""
from __future__ import annotations

import json

import numpy as np
import pytest
from huggingface_hub import ModelCard

from bakesteer.cli import main
from helpers import refused
from tiny import HIDDEN, save_model


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    """A tiny Llama folder that also holds what a bake must not take for its base model: a card whose
    ``base_model`` is the source's own parent, and the download records of `hf download --local-dir`."""
    src = tmp_path_factory.mktemp("m") / "my-finetune"
    save_model("llama", src)
    (src / "README.md").write_text("---\nbase_model: meta-llama/Llama-3.2-1B\nlicense: mit\n---\n# my finetune\n")
    meta = src / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text(f"{'a' * 40}\n{'b' * 40}\n1712656091.123\n")
    return src


@pytest.fixture
def vec(tmp_path):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))
    return str(tmp_path / "v.npy")


def _bake(model, vec, out, *extra) -> tuple[dict, ModelCard]:
    assert main(["bake", "--model", str(model), "--vector", vec, "--layer", "1", "-o", str(out), "-q",
                 "--no-strength", *extra]) == 0
    return json.loads((out / "bakesteer.json").read_text()), ModelCard.load(out / "README.md")


def test_base_model_is_recorded_and_in_the_front_matter(tiny_src, vec, tmp_path):
    recipe, card = _bake(tiny_src, vec, tmp_path / "o", "--base-model", "someone/parent-7B")
    assert recipe["source"]["base_model"] == "someone/parent-7B"
    assert card.data.base_model == "someone/parent-7B" and card.data.base_model_relation == "finetune"
    assert "Base model: [someone/parent-7B](https://huggingface.co/someone/parent-7B)." in card.text
    # baking more onto the bake keeps it, and a new --base-model replaces it
    recipe, card = _bake(tmp_path / "o", vec, tmp_path / "o2")
    assert recipe["bakes"] == 2 and card.data.base_model == "someone/parent-7B"
    recipe, card = _bake(tmp_path / "o", vec, tmp_path / "o3", "--base-model", "someone/other")
    assert recipe["source"]["base_model"] == card.data.base_model == "someone/other"


def test_a_local_folder_names_no_base_model(tiny_src, vec, tmp_path):
    """Its own card's base_model is its parent, not it; the --local-dir records hold no repo id: nothing to infer."""
    recipe, card = _bake(tiny_src, vec, tmp_path / "o")
    assert "base_model" not in card.data.to_dict() and "base_model_relation" not in card.data.to_dict()
    assert "base_model" not in recipe["source"] and "hub_id" not in recipe["source"]
    assert "Source: a local folder (`my-finetune`) with no Hub id" in card.text
    assert "meta-llama" not in (tmp_path / "o" / "README.md").read_text()


@pytest.mark.parametrize("bad", ["no-slash", "a/b/c", "has space/x", "a--b/c", "x/y.git", "../etc", "-x/y",
                                 "a/" + "n" * 99])
def test_an_invalid_base_model_is_refused_before_anything_is_written(tiny_src, vec, tmp_path, capsys, bad):
    err = refused(capsys, ["bake", "--model", str(tiny_src), "--vector", vec, "--layer", "1", "-o",
                           str(tmp_path / "o"), f"--base-model={bad}"], "is not a Hub model id like owner/name",
                  tmp_path, tiny_src)
    assert err.count(". ") == 0 and not (tmp_path / "o").exists()


def test_a_gguf_bake_refuses_base_model(tmp_path, vec, capsys):
    refused(capsys, ["bake", "--model", str(tmp_path / "m.gguf"), "--vector", vec, "--layer", "1",
                     "--base-model", "someone/x"], "a GGUF bake writes no card", tmp_path)


def test_a_hub_cache_snapshot_folder_names_its_hub_id(vec, tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--someone--tiny-llama" / "snapshots" / "0123abcd"
    save_model("llama", snap)
    monkeypatch.chdir(tmp_path)
    assert main(["bake", "--model", str(snap), "--vector", vec, "--layer", "1", "-q", "--no-strength"]) == 0
    out = tmp_path / "exported" / "tiny-llama-v-resid-L1"  # named after the repo, not the revision folder
    recipe, card = json.loads((out / "bakesteer.json").read_text()), ModelCard.load(out / "README.md")
    assert recipe["source"]["hub_id"] == "someone/tiny-llama" and recipe["source"]["revision"] == "0123abcd"
    assert card.data.base_model == "someone/tiny-llama" and card.data.base_model_relation == "finetune"
    assert "at revision `0123abcd`" in card.text
    (tmp_path / "link").symlink_to(snap)  # a link to a snapshot: the same, once the link is followed
    recipe, card = _bake(tmp_path / "link", vec, tmp_path / "o")
    assert recipe["source"]["hub_id"] == card.data.base_model == "someone/tiny-llama"
    recipe, card = _bake(snap, vec, tmp_path / "o2", "--base-model", "someone/real-base")  # given beats inferred
    assert card.data.base_model == "someone/real-base" and "revision" not in card.text.split("## Recipe")[0]


@pytest.mark.parametrize("parts", [("datasets--someone--x", "snapshots", "r"), ("models--someone--x", "snap", "r"),
                                   ("models--a--b--c", "snapshots", "r"),
                                   ("models--someone--x", "snapshots", "r", "sub")])
def test_a_folder_that_only_looks_like_a_snapshot_names_nothing(parts, vec, tmp_path):
    src = tmp_path.joinpath(*parts)
    save_model("llama", src)
    recipe, card = _bake(src, vec, tmp_path / "o")
    assert "hub_id" not in recipe["source"] and card.data.base_model is None


def test_a_bad_base_model_in_a_downloaded_record_is_refused(tiny_src, vec, tmp_path, capsys):
    _bake(tiny_src, vec, tmp_path / "o", "--base-model", "someone/parent")
    rec = json.loads((tmp_path / "o" / "bakesteer.json").read_text())
    rec["source"]["base_model"] = "x\n---\ninjected: yes"
    (tmp_path / "o" / "bakesteer.json").write_text(json.dumps(rec))
    refused(capsys, ["push", str(tmp_path / "o"), "--repo", "u/n", "--dry-run"],
            "source.base_model is not a Hub model id", tmp_path / "o")
