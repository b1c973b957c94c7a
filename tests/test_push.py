"""`bakesteer push`: the real huggingface_hub code paths down to HTTP, answered by an in-process mock Hub."""
from __future__ import annotations

import base64
import json

import httpx2
import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import ModelCard

from bakesteer.card import DEFAULT_HUB_ID
from bakesteer.cli import main
from helpers import refused, snapshot
from tiny import HIDDEN, save_char_tokenizer, save_model


class MockHub:
    """Answers the Hub API calls of create_repo / create_branch / upload_folder; records every request."""

    def __init__(self, refuse: bool = False):
        self.requests: list[tuple[str, str, bytes]] = []
        self.refuse = refuse

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append((request.method, request.url.path, request.content))
        p = request.url.path
        if self.refuse:
            return httpx2.Response(403, json={"error": "You don't have the rights to create a model under u"})
        if p == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/u/n", "name": "u/n"})
        if p == "/api/validate-yaml":  # upload_folder checks the README's metadata first
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/branch/" in p:
            return httpx2.Response(200, json={})
        if "/preupload/" in p:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if "/commit/" in p:
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/u/n/commit/abc",
                                              "commitOid": "abc", "pullRequestUrl": None})
        return httpx2.Response(404, json={"error": f"no route {p}"})

    def committed(self) -> dict[str, bytes]:
        """path -> content of the files in the commit request."""
        body = next(c for m, p, c in self.requests if "/commit/" in p)
        out = {}
        for line in body.decode().splitlines():
            op = json.loads(line)
            if op["key"] == "file":
                out[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
        return out


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    mock = MockHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(mock)))
    yield mock
    huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)


@pytest.fixture
def baked(tmp_path):
    save_model("llama", tmp_path / "src")
    save_char_tokenizer(tmp_path / "src")  # verify reads its prompts with the bake's tokenizer
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))
    out = tmp_path / "baked"
    assert main(["bake", "--model", str(tmp_path / "src"), "--vector", str(tmp_path / "v.npy"), "--layer", "1",
                 "--coef", "2", "-o", str(out), "-q"]) == 0
    return out


def test_push_uploads_every_file_with_the_card(hub, baked, capsys):
    assert main(["push", str(baked), "--repo", "u/n", "--revision", "steer", "-q"]) == 0
    paths = [p for _, p, _ in hub.requests]
    assert "/api/repos/create" in paths and "/api/models/u/n/branch/steer" in paths
    assert "/api/models/u/n/commit/steer" in paths
    files = hub.committed()
    on_disk = {str(p.relative_to(baked)) for p in baked.rglob("*") if p.is_file()}
    assert set(files) == on_disk and "bakesteer/verify.json" in on_disk  # verified before pushing
    card = files["README.md"].decode()
    assert card == (baked / "README.md").read_text()
    assert "| resid | 1 | 2 |" in card and "PASS" in card and 'from_pretrained("u/n")' in card
    assert "pushed" in capsys.readouterr().out


def test_dry_run_uploads_nothing(hub, baked, capsys):
    capsys.readouterr()
    assert main(["push", str(baked), "--repo", "u/n", "--dry-run", "-q"]) == 0
    out = capsys.readouterr().out
    assert not [p for _, p, _ in hub.requests if p.startswith("/api/")]
    assert "would upload" in out and "  model.safetensors.index.json" in out and "## Recipe" in out


def test_bad_pushes(hub, baked, tmp_path, capsys, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    refused(capsys, ["push", str(plain), "--repo", "u/n"], "not a bakesteer output")
    assert main(["push", str(plain), "--repo", "u/n", "--force", "-q"]) == 0  # pushed as it is
    assert set(hub.committed()) == {"config.json"}
    refused(capsys, ["push", str(baked), "--repo", "no-slash"], "is not a Hub id")
    hub.refuse = True
    refused(capsys, ["push", str(baked), "--repo", "u/n", "-q"], "the Hub refused the upload")
    monkeypatch.delenv("HF_TOKEN")
    refused(capsys, ["push", str(baked), "--repo", "u/n", "-q"], "hf auth login")


def test_dry_run_base_model_sets_the_front_matter(hub, baked, capsys):
    """A bake of a plain local folder names no base model; push --base-model names it, and a dry run writes nothing."""
    assert ModelCard.load(baked / "README.md").data.base_model is None
    before = snapshot(baked)
    capsys.readouterr()
    assert main(["push", str(baked), "--repo", "u/n", "--dry-run", "--base-model", "someone/base-1B", "-q"]) == 0
    card = ModelCard(capsys.readouterr().out.split("\nwould upload")[0])
    assert card.data.base_model == "someone/base-1B" and card.data.base_model_relation == "finetune"
    assert "Base model: [someone/base-1B](https://huggingface.co/someone/base-1B)." in card.text
    assert not [p for _, p, _ in hub.requests if p.startswith("/api/")] and snapshot(baked) == before


def test_push_base_model_is_uploaded_and_recorded(hub, baked):
    from bakesteer.card import render
    from bakesteer.recipe import load_record

    assert main(["push", str(baked), "--repo", "u/n", "--base-model", "someone/base-1B", "-q"]) == 0
    uploaded = ModelCard(hub.committed()["README.md"].decode())
    assert uploaded.data.base_model == "someone/base-1B" and uploaded.data.base_model_relation == "finetune"
    recipe = load_record(baked).recipe  # kept in the record, so a later `verify` writes the same card
    assert recipe["source"]["base_model"] == "someone/base-1B"
    assert ModelCard(render(recipe)).data.base_model == "someone/base-1B"
    assert json.loads(hub.committed()["bakesteer.json"])["source"]["base_model"] == "someone/base-1B"


def test_push_refuses_a_bad_base_model(hub, baked, tmp_path, capsys):
    refused(capsys, ["push", str(baked), "--repo", "u/n", "--dry-run", "--base-model", "no-slash"],
            "is not a Hub model id like owner/name", baked)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("# not a bake\n")
    refused(capsys, ["push", str(plain), "--repo", "u/n", "--force", "--base-model", "someone/x"],
            "is not a bakesteer output; edit its README.md", plain)
    assert not hub.requests


def test_smollm2_dry_run_card(tmp_path, smollm2, monkeypatch, capsys):
    """The acceptance card: a baked SmolLM2, every field filled from the bake and its verification."""
    monkeypatch.chdir(tmp_path)
    assert main(["bake", "--vector", "love.svec", "--layer", "5", "-o", "m", "-q"]) == 0
    capsys.readouterr()
    assert main(["push", "m", "--repo", "u/smollm2-love", "--dry-run", "-q"]) == 0
    text = capsys.readouterr().out.split("\nwould upload")[0]
    card = ModelCard(text)
    d = card.data
    assert d.base_model == DEFAULT_HUB_ID and d.base_model_relation == "finetune"
    assert d.library_name == "transformers" and d.pipeline_tag == "text-generation"
    assert {"steering", "activation-steering", "bakesteer"} <= set(d.tags)
    body = card.text
    assert "| resid | 5 | 1 |" in body and "`love.svec`" in body
    assert "PASS" in body and "identical" in body and "I hate you because" in body  # figures and the sample
    assert "| SGLang | ignored |" in body and "Warning: SGLang" in body  # mlp biases: the portability table
    assert "<" not in body and "TODO" not in body  # no placeholders


@pytest.mark.parametrize("origin, shown", [({}, "(library call)"), ({"file": "vecs/love.svec"}, "`love.svec` |"),
                                           ({"file": "a/v.npy", "format": "npy", "file_layer": 3},
                                            "`v.npy` (npy, its layer 3)")])
def test_card_of_a_library_bake_names_what_it_was_given(tmp_path, origin, shown):
    from bakesteer.bake import Item, bake
    from bakesteer.hooks import Steer

    save_model("llama", tmp_path / "src")
    v = np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32)
    bake(tmp_path / "src", [Item(Steer("resid", 1, v, 2.0), origin)], tmp_path / "out", progress=False)
    row = next(x for x in (tmp_path / "out" / "README.md").read_text().splitlines() if x.startswith("| resid | 1 |"))
    assert row.endswith(shown + (" |" if not shown.endswith("|") else "")), row
