"""Peer vector files: round trips that keep every value and the block, placement in a bake, refusals, inspect."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bakesteer.bake import Item, bake
from bakesteer.cli import main
from bakesteer.errors import BakesteerError
from bakesteer.vectors import describe, write_vectors
from bakesteer.hooks import Steer
from tiny import HIDDEN, LAYERS, VOCAB, save_model
from bakesteer.vectors import load_vector_file, pick
from helpers import refused, greedy, logits

MODEL = {"model_type": "llama", "name": "tiny", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS}


def _blocks(*blocks: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.normal(size=HIDDEN).astype(np.float32) for b in blocks}


def _placed(path, layers=None) -> dict[tuple[str, int], np.ndarray]:
    """(site, decoder block) -> vector, as a bake would place the file's vectors."""
    vf = load_vector_file(path)
    return {(s, b): v for s, b, v in pick(vf, layers or sorted(vf.vectors), None)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_round_trip_bakesteer_ibm_gguf_sv_keeps_values_and_blocks(tmp_path, capsys):
    blocks = _blocks(1, 2)
    write_vectors(tmp_path / "a.svec", "bakesteer", "resid", blocks, MODEL, explained={1: 0.5, 2: 0.25})
    want = {("resid", b): v.astype(np.float64) for b, v in blocks.items()}
    assert _same(_placed(tmp_path / "a.svec"), want)
    chain = [("a.svec", "b.svec", ["--to", "ibm"]), ("b.svec", "c.gguf", []), ("c.gguf", "d.pt", []),
             ("d.pt", "e.safetensors", []), ("e.safetensors", "f.gguf", []), ("f.gguf", "g.svec", []),
             ("g.svec", "h.svec", ["--to", "ibm"]), ("h.svec", "i.svec", [])]
    for src, dst, extra in chain:
        assert main(["convert", str(tmp_path / src), str(tmp_path / dst), *extra]) == 0
        assert _same(_placed(tmp_path / dst), want), dst  # every float32 value, at the same block
    assert load_vector_file(tmp_path / "b.svec").format == "ibm-svec"
    assert sorted(load_vector_file(tmp_path / "b.svec").vectors) == [2, 3]  # IBM keys are block + 1
    assert sorted(load_vector_file(tmp_path / "c.gguf").vectors) == [1, 2]  # direction.N is block N
    ibm = json.loads((tmp_path / "b.svec").read_text())
    assert ibm["explained_variances"] == {"2": 0.5, "3": 0.25}  # carried through IBM's numbering
    assert describe(tmp_path / "b.svec")["layers"][0] == {"key": 2, "block": 1, "norm": pytest.approx(
        float(np.linalg.norm(blocks[1]))), "explained": 0.5}


def test_ibm_files_load_with_ibm_s_own_loader(tmp_path):
    """activation_steering.SteeringVector.load: int keys of 'directions' and 'explained_variances' (both required)."""
    for fmt, name in (("ibm", "v.svec"), ("bakesteer", "w.svec")):
        write_vectors(tmp_path / name, fmt, "resid", _blocks(0, 1), MODEL)
        data = json.loads((tmp_path / name).read_text())
        directions = {int(k): np.array(v) for k, v in data["directions"].items()}
        explained = {int(k): v for k, v in data["explained_variances"].items()}
        assert sorted(directions) == sorted(explained) == [1, 2] and data["model_type"] == "llama"


def test_non_resid_sites_round_trip_through_steering_vectors(tmp_path):
    for site, layer_type in (("attn_in", "input_layernorm"), ("mlp_in", "post_attention_layernorm"),
                             ("attn_out", "self_attn"), ("mlp_out", "mlp")):
        write_vectors(tmp_path / f"{site}.pt", "steering-vectors", site, _blocks(0, 3), MODEL)
        obj = torch.load(tmp_path / f"{site}.pt", weights_only=True)
        assert obj["layer_type"] == layer_type and sorted(obj["layer_activations"]) == [0, 3]
        assert main(["convert", str(tmp_path / f"{site}.pt"), str(tmp_path / f"{site}.svec")]) == 0
        vf = load_vector_file(tmp_path / f"{site}.svec")
        assert vf.site == site and sorted(vf.vectors) == [0, 3]


@pytest.mark.parametrize("fmt, file_layer", [("gguf", 2), ("ibm", 3), ("steering-vectors", 2)])
def test_a_bake_from_each_format_adds_at_the_residual_after_block_2(tmp_path, fmt, file_layer):
    """The placement, checked against steering written for this test: add to model.layers[2]'s output."""
    source = save_model("llama", tmp_path / "src")
    v = _blocks(2, seed=3)
    path = tmp_path / {"gguf": "v.gguf", "ibm": "v.svec", "steering-vectors": "v.pt"}[fmt]
    write_vectors(path, fmt, "resid", v, {"model_type": "llama"})
    (site, block, vec), = pick(load_vector_file(path), [file_layer], None)
    bake(tmp_path / "src", [Item(Steer(site, block, vec, 4.0), {})], tmp_path / "out", progress=False)
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    add = torch.from_numpy(4.0 * v[2])
    h = source.model.layers[2].register_forward_hook(lambda m, i, o: (o[0] + add,) + o[1:] if isinstance(o, tuple)
                                                     else o + add)
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    try:
        hooked, g_hooked = logits(source, ids), greedy(source, ids)
    finally:
        h.remove()
    assert float((logits(baked, ids) - hooked).abs().max()) <= 1e-4
    assert float((hooked - logits(source, ids)).abs().max()) >= 1e-2
    assert greedy(baked, ids) == g_hooked


def test_convert_refuses_what_the_target_cannot_express(tmp_path, capsys):
    write_vectors(tmp_path / "attn.svec", "bakesteer", "attn_in", _blocks(1), MODEL)
    write_vectors(tmp_path / "all.svec", "bakesteer", "resid", _blocks(0, 1, 2, 3), MODEL)
    ibm = tmp_path / "ibm.svec"
    ibm.write_text(json.dumps({"model_type": "llama", "directions": {"0": [0.1] * HIDDEN, "1": [0.2] * HIDDEN},
                               "explained_variances": {"0": 1.0, "1": 1.0}}))
    out = tmp_path / "out.gguf"
    refused(capsys, ["convert", str(tmp_path / "attn.svec"), str(out)],
             "only holds residual-stream vectors, not attn_in")
    refused(capsys, ["convert", str(tmp_path / "attn.svec"), str(tmp_path / "o.svec"), "--to", "ibm"], "not attn_in")
    refused(capsys, ["convert", str(tmp_path / "all.svec"), str(out)], "direction.0, which llama.cpp refuses")
    refused(capsys, ["convert", str(tmp_path / "all.svec"), str(tmp_path / "o.svec"), "--to", "ibm"],
             "block 3 is the last")
    refused(capsys, ["convert", str(ibm), str(tmp_path / "o.svec")], "input of block 0 (the embeddings)")
    refused(capsys, ["convert", str(tmp_path / "all.svec"), str(out), "--layers", "7"], "has no vector for layer 7")
    assert not out.exists() and not (tmp_path / "o.svec").exists()
    assert main(["convert", str(tmp_path / "all.svec"), str(out), "--layers", "1-2"]) == 0  # what it can hold
    assert sorted(load_vector_file(out).vectors) == [1, 2]
    refused(capsys, ["convert", str(tmp_path / "all.svec"), str(out), "--layers", "1-2"], "already exists")


def test_steering_vectors_names_no_gemma2_pre_feedforward_norm(tmp_path):
    with pytest.raises(BakesteerError, match="pre_feedforward_layernorm"):
        write_vectors(tmp_path / "v.pt", "steering-vectors", "mlp_in", _blocks(1), {"model_type": "gemma2"})
    assert not (tmp_path / "v.pt").exists()


def test_bad_gguf_files(tmp_path, capsys):
    import gguf

    def write(name, arch, tensors):
        w = gguf.GGUFWriter(str(tmp_path / name), arch)
        for k, v in tensors.items():
            w.add_tensor(k, v)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        return str(tmp_path / name)

    model = write("model.gguf", "llama", {"token_embd.weight": np.ones((4, HIDDEN), np.float32)})
    other = write("other.gguf", "controlvector", {"direction.1": np.ones(HIDDEN, np.float32),
                                                  "bias.1": np.ones(HIDDEN, np.float32)})
    (tmp_path / "text.gguf").write_text("not a gguf")
    refused(capsys, ["inspect", model], "architecture 'llama', not a control vector")
    refused(capsys, ["inspect", other], "holds a tensor 'bias.1'")
    refused(capsys, ["inspect", str(tmp_path / "text.gguf")], "is not a readable GGUF file")
    zero = write("zero.gguf", "controlvector", {"direction.0": np.ones(HIDDEN, np.float32)})
    assert any("direction.0 is refused by llama.cpp" in n for n in describe(zero)["notes"])


def test_hidden_size_mismatch_with_the_model(tmp_path, capsys):
    save_model("llama", tmp_path / "m")
    write_vectors(tmp_path / "big.gguf", "gguf", "resid", {1: np.ones(HIDDEN + 8, np.float32)}, {})
    refused(capsys, ["convert", str(tmp_path / "big.gguf"), str(tmp_path / "o.svec"), "--model", str(tmp_path / "m")],
             f"has {HIDDEN + 8} entries but the model's hidden size is {HIDDEN}")
    refused(capsys, ["bake", "--model", str(tmp_path / "m"), "--vector", str(tmp_path / "big.gguf"), "--layer", "1",
                      "-o", str(tmp_path / "out"), "-q"], "it was made for another model")
    assert not (tmp_path / "o.svec").exists() and not (tmp_path / "out").exists()


def test_gguf_needs_the_gguf_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(BakesteerError, match="pip install gguf"):
        write_vectors(tmp_path / "v.gguf", "gguf", "resid", _blocks(1), MODEL)
    assert not (tmp_path / "v.gguf").exists()


def test_inspect(tmp_path, capsys):
    write_vectors(tmp_path / "v.gguf", "gguf", "resid", _blocks(3, 5), {"model_type": "llama"})
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "v.gguf")]) == 0
    out = capsys.readouterr().out
    assert "gguf" in out and "model: llama" in out and "site: resid" in out and "l_out" in out
    assert main(["inspect", str(tmp_path / "v.gguf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["block"]) for r in info["layers"]] == [(3, 3), (5, 5)]
    assert info["hidden_size"] == HIDDEN and info["format"] == "gguf"



@dataclasses.dataclass
class SteeringVector:  # stands for steering_vectors.SteeringVector, saved whole with torch.save
    layer_activations: dict
    layer_type: str = "decoder_block"


def test_a_pickled_steering_vector_is_refused_with_the_way_to_save_it(tmp_path):
    torch.save(SteeringVector({1: torch.ones(HIDDEN)}), tmp_path / "sv.pt")
    with pytest.raises(BakesteerError, match=r"torch.save\(dataclasses.asdict\(sv\), path\)"):
        load_vector_file(tmp_path / "sv.pt")
