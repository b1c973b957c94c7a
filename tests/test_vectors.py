"""Vector files: IBM .svec (its layer convention), bakesteer's own JSON, raw tensors; bad files refused."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from bakesteer.bake import Item, bake
from bakesteer.errors import BakesteerError
from bakesteer.hooks import Steer
from bakesteer.vectors import load_vector_file, pick, save_bakesteer_vector
from helpers import greedy, logits
from tiny import HIDDEN, VOCAB, save_model


def _ibm_svec(path, directions: dict[int, list]):
    path.write_text(json.dumps({"model_type": "llama", "directions": {str(k): v for k, v in directions.items()},
                                "explained_variances": {str(k): 0.5 for k in directions}}))
    return path


def test_ibm_svec_key_n_is_added_to_the_input_of_block_n(tmp_path):
    """IBM's steer() adds directions[i] to the hidden states entering decoder block i; compare with that."""
    source = save_model("llama", tmp_path / "src")
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0))
    vf = load_vector_file(_ibm_svec(tmp_path / "v.svec", {2: [v.tolist()]}))  # 2-D [1, hidden], as AISteer360
    assert vf.format == "ibm-svec"
    (site, block, vec), = pick(vf, [2], None)
    assert (site, block) == ("resid", 1)
    bake(tmp_path / "src", [Item(Steer(site, block, vec, 3.0), {})], tmp_path / "out", progress=False)
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()

    def pre_hook(module, args, kwargs):  # the IBM placement, written independently of bakesteer's sites
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        h = h + 3.0 * v.to(h.dtype)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": h}
        return (h, *args[1:]), kwargs

    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    plain = logits(source, ids)
    handle = source.model.layers[2].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        hooked, g_hooked = logits(source, ids), greedy(source, ids)
    finally:
        handle.remove()
    assert float((logits(baked, ids) - hooked).abs().max()) <= 1e-4
    assert float((hooked - plain).abs().max()) >= 1e-2
    assert greedy(baked, ids) == g_hooked


def test_ibm_key_zero_has_no_bias_slot(tmp_path):
    vf = load_vector_file(_ibm_svec(tmp_path / "v.svec", {0: [0.1] * HIDDEN}))
    with pytest.raises(BakesteerError, match="input of block 0"):
        pick(vf, [0], None)


def test_bakesteer_file_round_trip_and_ibm_view(tmp_path):
    vecs = {L: torch.randn(HIDDEN, dtype=torch.float32) for L in range(4)}
    save_bakesteer_vector(tmp_path / "a.svec", vecs, "resid", {"model_type": "llama"}, coef=2.5, method="test")
    vf = load_vector_file(tmp_path / "a.svec")
    assert vf.format == "bakesteer" and vf.site == "resid" and vf.coef == 2.5 and vf.shift == 0
    for L, v in vecs.items():
        assert np.array_equal(vf.vectors[L].astype(np.float32), v.numpy())  # float32 values survive JSON exactly
    doc = json.loads((tmp_path / "a.svec").read_text())
    assert sorted(doc["directions"]) == ["1", "2", "3", "4"]  # IBM view: key L+1 = input of block L+1
    assert doc["directions"]["3"] == doc["bakesteer"]["vectors"]["2"]
    save_bakesteer_vector(tmp_path / "b.svec", vecs, "attn_in", {"model_type": "llama"})
    assert "directions" not in json.loads((tmp_path / "b.svec").read_text())  # no resid view to give IBM


def test_bundled_love_vector_is_found_by_name():
    vf = load_vector_file("love.svec")
    assert vf.format == "bakesteer" and vf.site == "resid" and vf.hidden_size == 576 and len(vf.vectors) == 30


@pytest.mark.parametrize("kind", ["safetensors", "npy", "pt", "pt-dict"])
def test_raw_tensor_files(tmp_path, kind):
    rows = torch.randn(4, HIDDEN)
    path = tmp_path / f"v.{kind.split('-')[0]}"
    if kind == "safetensors":
        save_file({"layer.0": rows[0], "layer.1": rows[1], "layer.2": rows[2]}, str(path))
    elif kind == "npy":
        np.save(path, rows.numpy())
    elif kind == "pt":
        torch.save(rows, path)
    else:
        torch.save({1: rows[1], 2: rows[2]}, path)
    vf = load_vector_file(path)
    (site, block, v), = pick(vf, [2], "attn_in")
    assert (site, block) == ("attn_in", 2) and np.allclose(v, rows[2].numpy())


def test_raw_one_vector_applies_to_any_layer(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(HIDDEN, dtype=np.float32))
    placed = pick(load_vector_file(tmp_path / "v.npy"), [0, 3], None)
    assert [(s, b) for s, b, _ in placed] == [("resid", 0), ("resid", 3)]


@pytest.mark.parametrize("content,match", [
    (b"{not json", "not valid JSON"),
    (b'{"foo": 1}', "neither 'directions'"),
    (b'{"directions": {"1": [1.0, NaN]}}', "NaN or infinite"),
    (b'{"directions": {"1": ["a", "b"]}}', "not a list of numbers"),
    (b'{"directions": {}}', "holds no vectors"),
])
def test_bad_json_files_are_refused(tmp_path, content, match):
    (tmp_path / "v.svec").write_bytes(content)
    with pytest.raises(BakesteerError, match=match):
        load_vector_file(tmp_path / "v.svec")


def test_pickles_are_never_executed(tmp_path):
    class Boom:
        def __init__(self, marker):
            self.marker = str(marker)

        def __reduce__(self):
            return (exec, (f"open({self.marker!r}, 'w').write('x')",))

    pickle.loads(pickle.dumps(Boom(tmp_path / "PROOF")))  # the payload works: plain unpickling runs it
    assert (tmp_path / "PROOF").exists()
    (tmp_path / "v.pt").write_bytes(pickle.dumps({"v": Boom(tmp_path / "PWNED")}))
    with pytest.raises(BakesteerError, match="could not be read"):
        load_vector_file(tmp_path / "v.pt")
    assert not (tmp_path / "PWNED").exists()


def test_site_conflict_and_missing_layer(tmp_path):
    save_bakesteer_vector(tmp_path / "a.svec", {3: torch.ones(HIDDEN)}, "resid", {"model_type": "llama"})
    vf = load_vector_file(tmp_path / "a.svec")
    with pytest.raises(BakesteerError, match="drop --site"):
        pick(vf, [3], "attn_in")
    with pytest.raises(BakesteerError, match="no vector for layer 1; it has layers 3"):
        pick(vf, [1], None)


def test_per_position_directions_are_refused_with_the_reason(tmp_path):
    vf_path = _ibm_svec(tmp_path / "v.svec", {3: [[0.1] * HIDDEN, [0.2] * HIDDEN]})  # AISteer360 [K=2, hidden]
    with pytest.raises(BakesteerError, match="2 per-position directions"):
        load_vector_file(vf_path)
