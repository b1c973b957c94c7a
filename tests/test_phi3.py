"""Phi-3: no bias slot, q|k|v and gate|up fused; baked as Llama (SmolLM3 with a window in play) with the fused
weights split by a rewrite of the shard headers (bakesteer/fused.py).

The shared tests (test_equivalence, test_oracle, test_streaming, test_verify_proof) run the tiny phi3 models of
tests/tiny.py like every family. Here: the data bytes stay where they were, the header names the parts by the
rows the modeling code slices (read from modeling_phi3.py, not from the table), a sharded source, composition
and unbake, a tampered header caught by verify, long-rope past its switch, and Phi-4-mini's partial rotary refused.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Phi3Config

from bakesteer.bake import Item, bake
from bakesteer.checkpoint import Checkpoint
from bakesteer.cli import main
from bakesteer.hooks import Steer
from bakesteer.recipe import unbake
from bakesteer.vectors.files import write_vectors
from helpers import hooked_vs_baked, logits, refused, snapshot
from oracle import steered
from tiny import _COMMON, HIDDEN, PHI3_LONGROPE, VOCAB, make_model

TOL = 1e-4


def _steers(site: str, layers=(1, 3), coef: float = 4.0) -> list[Steer]:
    g = torch.Generator().manual_seed(7)
    return [Steer(site, L, torch.randn(HIDDEN, generator=g, dtype=torch.float64).numpy(), coef) for L in layers]


def _header(path) -> tuple[dict, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), 8 + n


def _data(path) -> bytes:
    return path.read_bytes()[_header(path)[1]:]


def test_the_split_is_a_header_rewrite_with_the_rows_the_modeling_code_slices(tmp_path):
    model = make_model("phi3")
    model.save_pretrained(tmp_path / "src")
    recipe = bake(tmp_path / "src", [Item(s, {}) for s in _steers("mlp_in")], tmp_path / "out", progress=False)
    assert recipe["written"]["relabelled_from"] == "phi3"
    assert recipe["written"]["architectures"] == ["LlamaForCausalLM"]
    src_shard = tmp_path / "src" / "model.safetensors"
    out_shard = next(p for p in (tmp_path / "out").glob("*.safetensors") if _header(p)[0].get(
        "model.layers.0.self_attn.q_proj.weight"))
    assert _data(out_shard) == _data(src_shard), "the data section must be the source's byte for byte"
    head, _ = _header(out_shard)
    assert not any("qkv_proj" in k or "gate_up_proj" in k for k in head)
    # rows as Phi3Attention/Phi3MLP slice them: q = heads*head_dim, k = v = kv_heads*head_dim; gate then up
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    out = Checkpoint(tmp_path / "out")
    for L in range(cfg.num_hidden_layers):
        qkv = model.model.layers[L].self_attn.qkv_proj.weight.detach().numpy()
        gu = model.model.layers[L].mlp.gate_up_proj.weight.detach().numpy()
        parts = {"self_attn.q_proj": qkv[:q], "self_attn.k_proj": qkv[q:q + kv], "self_attn.v_proj": qkv[q + kv:],
                 "mlp.gate_proj": gu[:cfg.intermediate_size], "mlp.up_proj": gu[cfg.intermediate_size:]}
        for name, want in parts.items():
            assert np.array_equal(out.read(f"model.layers.{L}.{name}.weight"), want), (L, name)
    baked, info = LlamaForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True,
                                                   attn_implementation="eager")
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff, effect, g_hooked, g_baked = hooked_vs_baked(model, baked.eval(), _steers("mlp_in"), ids)
    assert diff <= TOL and effect >= 100 * TOL and g_hooked == g_baked, (diff, effect)


def test_a_sharded_source_composes_and_unbakes_bit_for_bit(tmp_path, capsys):
    make_model("phi3").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert len(list((tmp_path / "src").glob("*.safetensors"))) > 2
    before = snapshot(tmp_path / "src")
    bake(tmp_path / "src", [Item(s, {}) for s in _steers("attn_in", (1,))], tmp_path / "one", progress=False,
         link=True)
    second = bake(tmp_path / "one", [Item(s, {}) for s in _steers("resid", (2,))], tmp_path / "two",
                  progress=False)
    assert second["bakes"] == 2 and second["written"]["relabelled_from"] == "phi3"
    assert main(["verify", str(tmp_path / "two"), "--random-prompts"]) == 0, capsys.readouterr()
    unbake(tmp_path / "two", tmp_path / "un")
    src_files = {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir() if p.is_file()}
    un_files = {p.name: p.read_bytes() for p in (tmp_path / "un").iterdir() if p.is_file()}
    assert un_files == src_files
    assert snapshot(tmp_path / "src") == before


def test_verify_catches_a_header_that_swaps_two_parts(tmp_path, capsys):
    make_model("phi3").save_pretrained(tmp_path / "src")
    bake(tmp_path / "src", [Item(s, {}) for s in _steers("resid", (1,))], tmp_path / "out", progress=False)
    shard = next(p for p in (tmp_path / "out").glob("*.safetensors")
                 if "model.layers.2.self_attn.k_proj.weight" in _header(p)[0])
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].decode()
    # k and v of block 2 have one shape: swapping their names keeps the file valid, and the model wrong
    text = (text.replace("layers.2.self_attn.k_proj.", "layers.2.self_attn.TMP.")
            .replace("layers.2.self_attn.v_proj.", "layers.2.self_attn.k_proj.")
            .replace("layers.2.self_attn.TMP.", "layers.2.self_attn.v_proj."))
    shard.write_bytes(raw[:8] + text.encode() + raw[8 + n:])
    code = main(["verify", str(tmp_path / "out"), "--random-prompts", "--new-tokens", "0"])
    out = capsys.readouterr()
    assert code != 0 and "the shard header" in out.out + out.err, out


@pytest.mark.parametrize("length", [12, 40])
def test_long_rope_equals_phi3_per_forward_on_both_sides_of_its_switch(tmp_path, capsys, length):
    rope = {**PHI3_LONGROPE, "original_max_position_embeddings": 16}
    cfg = Phi3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     original_max_position_embeddings=16, rope_parameters=rope, initializer_range=0.2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    model.save_pretrained(tmp_path / "src")
    steers = _steers("attn_in")
    assert main(["bake", "--model", str(tmp_path / "src"), "--vector", _svec(tmp_path / "v.svec", steers[0]),
                 "--layer", "1", "--site", "attn_in", "--coef", "4", "-o", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "warning: long-rope" in said and "16 tokens" in said, said
    assert "Warning: long-rope" in (tmp_path / "out" / "README.md").read_text()
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(3))
    with steered(model, "phi3", "attn_in", {1: torch.from_numpy(steers[0].vector)}, 4.0):
        hooked = logits(model, ids)
    plain = logits(model, ids)
    assert (logits(baked, ids) - hooked).abs().max() <= TOL
    assert (hooked - plain).abs().max() >= 100 * TOL


def _svec(path, steer: Steer) -> str:
    return str(write_vectors(path, "bakesteer", steer.site, {steer.layer: steer.vector}))


def test_partial_rotary_is_refused_in_one_sentence(tmp_path, capsys):
    cfg = Phi3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2, partial_rotary_factor=0.75)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "src")
    vec = _svec(tmp_path / "v.svec", _steers("resid", (1,))[0])
    refused(capsys, ["bake", "--model", str(tmp_path / "src"), "--vector", vec, "--layer", "1", "-o",
                     str(tmp_path / "out")], "partial_rotary_factor 0.75", tmp_path)


@pytest.mark.parametrize("name", ["phi3", "phi3_window"])
def test_a_config_that_leaves_values_to_phi3s_defaults_is_relabelled_to_the_same_model(tmp_path, name):
    """config.json files written by hand omit what Phi-3's class defaults give (rms_norm_eps 1e-5, RoPE base
    10000); Llama's and SmolLM3's defaults differ (1e-6; SmolLM3's base is 2e6), so the relabel writes them."""
    model = make_model(name)
    model.save_pretrained(tmp_path / "src")
    path = tmp_path / "src" / "config.json"
    short = {k: v for k, v in json.loads(path.read_text()).items()
             if k not in ("rms_norm_eps", "rope_parameters", "rope_theta", "hidden_act", "attention_dropout")}
    path.write_text(json.dumps(short))
    steers = _steers("resid")
    bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "out", progress=False)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rms_norm_eps"] == 1e-5 and written["rope_parameters"]["rope_theta"] == 10000.0
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    source = AutoModelForCausalLM.from_pretrained(tmp_path / "src", attn_implementation="eager").eval()
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    diff, effect, _, _ = hooked_vs_baked(source, baked, steers, ids)
    assert diff <= TOL and effect >= 100 * TOL, (diff, effect)


@pytest.mark.parametrize("doc", [{"../model.safetensors": "{}"}, {"model.safetensors": 7}, ["not", "a", "map"]])
def test_a_damaged_record_of_source_headers_is_refused_before_anything_is_written(tmp_path, capsys, doc):
    """A downloaded bake's bakesteer/original_headers.json names only source shards the record names, as text."""
    make_model("phi3").save_pretrained(tmp_path / "src")
    bake(tmp_path / "src", [Item(s, {}) for s in _steers("resid", (1,))], tmp_path / "out", progress=False)
    (tmp_path / "out" / "bakesteer" / "original_headers.json").write_text(json.dumps(doc))
    refused(capsys, ["unbake", str(tmp_path / "out"), "-o", str(tmp_path / "back")], "bake record is damaged",
            tmp_path)
