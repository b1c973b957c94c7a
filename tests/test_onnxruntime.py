"""ONNX Runtime for real: onnxruntime-genai's model builder exports the baked folder (fp32, CPU, from the local
folder with the network cut off) and its Generator runs the exported model (`pip install onnxruntime-genai onnx
onnx_ir`; the builder imports onnx_ir without declaring it).

1. A baked SmolLM2 (resid, attn_in) gives transformers' logits and greedy tokens in ONNX Runtime, and the
   steering survives: the exported bake and the exported source differ far beyond the tolerance.
2. Tiny bakes of every family the builder builds, at every exact site of the family: the same, and the folded
   bias is in the exported graph.
3. The families it does not build are shown refused, source and bake alike (onnxruntime-genai 0.18.0):
   GPT-2, GPT-NeoX and OLMo2 have no builder (NotImplementedError); Gemma3 fails on transformers 5's
   per-layer-type ``rope_parameters`` (KeyError 'rope_type').
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bakesteer.arch import ARCHS, INSIDE_WRAPPERS, exact_sites
from bakesteer.bake import Item, bake
from bakesteer.hooks import Steer
from helpers import long_rope_as_read, love_steer, the_table_says
from tiny import CONFIGS, HIDDEN, make_model, save_char_tokenizer

og = pytest.importorskip("onnxruntime_genai", reason="needs `pip install onnxruntime-genai onnx onnx_ir`")
pytest.importorskip("onnx_ir", reason="onnxruntime-genai's model builder needs onnx_ir (not declared by it)")
pytest.importorskip("onnx", reason="onnxruntime-genai's model builder needs onnx")
from onnx_tools import eos_ids, export, greedy, load, logits, onnx_bias_names  # noqa: E402

# fp32 ONNX Runtime vs transformers, max |Δlogit|, about 10x the worst measured: ≤ 7.9e-6 on the tiny bakes (logits
# up to ~6; 100x TOL is still below the weakest steer, Granite attn_out's 0.10) and ≤ 1.2e-4 on the SmolLM2 bakes
# (logits up to ~30; MLX-LM's bound for them too)
TOL = 1e-4
FAMILY_TOL = {"phi": 2e-3}  # the builder's Phi MLP (its own GELU kernel): 8.5e-4 off on the unbaked tiny source
SMOL_TOL = 1e-3
PROMPTS = ["I hate you because", "The weather today is", "Write a short note to a colleague."]
IDS = [3, 17, 42, 8, 91, 5, 66, 23, 7, 12, 30, 2]  # tiny models: 12 tokens, beyond Gemma2's sliding window of 8
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # within the tiny vocabulary (the builder reads them)
# the builder's GroupQueryAttention wants a rotary cache of a multiple of 8: Phi's default half-rotary 16-wide heads
# give 4, so the tiny Phi rotates whole heads
FIT = {"phi": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}),
       # the builder takes a Phi-3 whose context differs from original_max_position_embeddings for long-rope
       "phi3": dict(original_max_position_embeddings=256)}
# families the builder builds (Mistral and Qwen2 bakes at a site they have no slot for are written as Llama)
BUILT = ("llama", "mistral", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "granite", "phi", "gpt_oss")
CELLS = [(f, s) for f in BUILT for s in exact_sites(CONFIGS[f]().to_dict())]
# families it refuses: onnxruntime_genai/models/builder.py create_model dispatches on config.architectures[0] and
# has no GPT2LMHeadModel, GPTNeoXForCausalLM or Olmo2ForCausalLM; builders/base.py Model.make_rope_init reads
# config.rope_parameters["rope_type"], which transformers 5 nests per layer type for Gemma3
NOT_BUILT = {"gpt2": (NotImplementedError, "is not currently supported"),
             "gpt_neox": (NotImplementedError, "is not currently supported"),
             "olmo2": (NotImplementedError, "is not currently supported"), "gemma3": (KeyError, "rope_type"),
             "starcoder2": (NotImplementedError, "is not currently supported"),
             # builders/smollm.py fails on a NoPE block (every 4th in SmolLM3's default no_rope_layers)
             "smollm3": (KeyError, "position_ids"),
             **{f: (NotImplementedError, "is not currently supported") for f in ("opt", "opt_post_norm")},
             **{f: (NotImplementedError, "is not currently supported")
                for f in ("gptj", "cohere", "cohere2", "olmo3", "qwen3_moe", "qwen2_moe", "olmoe", "glm4",
                          "deepseek_v3", "seed_oss", "granite_swa", "llama4_text",
                          "granitemoe")}}
# relabelled families whose source the builder refuses and whose bake (a Llama) it builds with its RoPE read
# otherwise: test_onnxruntime_builds_a_yarn_llama_without_its_rope_scaling
MISREAD = ("ministral3",)
# the exported graph's name for the bias a site folds into (block 1)
FOLDED = {"attn_in": ["attn.qkv_proj.Add"], "mlp_in": ["mlp.gate_proj.Add", "mlp.up_proj.Add"],
          "attn_out": ["attn.o_proj.Add"], "mlp_out": ["mlp.down_proj.Add"], "resid": ["mlp.down_proj.Add"]}
FOLDED_BY_FAMILY = {
    "phi": {**FOLDED, "mlp_in": ["mlp.fc1.Add"], "mlp_out": ["mlp.fc2.Add"], "resid": ["mlp.fc2.Add"]},
    # its MoE node keeps the experts' stacked biases as initializers of their own
    "gpt_oss": {**FOLDED, "mlp_in": ["moe.router.Add", "moe.experts.gate_up_proj"],
                "mlp_out": ["moe.experts.down_proj"], "resid": ["moe.experts.down_proj"]},
}


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _tiny_bake(src: Path, out: Path, site: str) -> Path:
    """A random vector at ``site`` of block 1, coef 2 (the API: the CLI's strength report costs ~5 s a bake)."""
    v = np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32)
    bake(src, [Item(Steer(site, 1, v, 2.0), {})], out, progress=False)
    return out


def _tiny_source(path: Path, family: str) -> Path:
    """A tiny model with the character tokenizer, whose end-of-sequence token is the config's (id 2, '!'): the
    builder adds the tokenizer's eos to genai_config.json, and a Qwen2 tokenizer's default one is out of range."""
    make_model(family, **TOKENS, **FIT.get(family, {})).save_pretrained(path)
    save_char_tokenizer(path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": "!"}))
    return path


@pytest.fixture(scope="module")
def smol_plain(tmp_path_factory, smollm2):
    """The unbaked SmolLM2, exported and loaded once."""
    return load(export(smollm2, tmp_path_factory.mktemp("smollm2") / "onnx"))


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Callable[[str], tuple[Path, np.ndarray]]:
    """family -> (tiny source folder, its ONNX Runtime logits on IDS), each family exported once."""
    cache: dict[str, tuple[Path, np.ndarray]] = {}

    def get(family: str) -> tuple[Path, np.ndarray]:
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            src = _tiny_source(root / "src", family)
            cache[family] = src, logits(load(export(src, root / "onnx")), IDS)
        return cache[family]

    return get


def test_every_family_is_classified_and_the_table_agrees():
    assert set(BUILT) | set(NOT_BUILT) | set(MISREAD) == set(ARCHS) - set(INSIDE_WRAPPERS)
    assert not set(BUILT) & set(NOT_BUILT)
    the_table_says("ONNX Runtime", {**{f: "yes" for f in BUILT}, **{f: "refused" for f in NOT_BUILT}})


@pytest.mark.parametrize("site", ["resid", "attn_in"])
def test_smollm2_bake_runs_in_onnxruntime(tmp_path, smollm2, smollm2_tok, smol_plain, site):
    bake(smollm2, [Item(love_steer(site), {})], tmp_path / "baked", progress=False)
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", dtype=torch.float32).eval()
    onnx = load(export(tmp_path / "baked", tmp_path / "onnx"))
    for p in PROMPTS:
        ids = smollm2_tok(p)["input_ids"]
        with torch.no_grad():
            want = baked(torch.tensor([ids])).logits[0].double().numpy()
        got = logits(onnx, ids)
        err = np.abs(got - want).max()
        assert err <= SMOL_TOL, f"ONNX Runtime vs transformers on the SmolLM2 bake: {err:.2e}"
        effect = np.abs(got - logits(smol_plain, ids)).max()
        assert effect >= 100 * SMOL_TOL, f"the steer moved ONNX Runtime's logits by only {effect:.2e}"
    # the Generator's decoding (key/value cache) picks transformers' greedy tokens: each is the argmax of the
    # baked model's logits on the text so far (end-of-sequence masked: the Generator holds it back to 32 tokens)
    ids = smollm2_tok(PROMPTS[0])["input_ids"]
    tokens = greedy(onnx, ids)
    with torch.no_grad():
        forced = baked(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1]
    forced[:, eos_ids(tmp_path / "onnx")] = -np.inf
    assert forced.argmax(-1).tolist() == tokens


@pytest.mark.parametrize("family,site", CELLS)
def test_tiny_bake_runs_in_onnxruntime(tmp_path, tiny_source, family, site):
    src, plain = tiny_source(family)
    out = _tiny_bake(src, tmp_path / "baked", site)
    onnx = export(out, tmp_path / "onnx")
    got = logits(load(onnx), IDS)
    err, tol = np.abs(got - _hf_logits(out, IDS)).max(), FAMILY_TOL.get(family, TOL)
    assert err <= tol, f"ONNX Runtime vs transformers on the {family} {site} bake: {err:.2e}"
    effect = np.abs(got - plain).max()
    assert effect >= 100 * tol, f"the steer moved ONNX Runtime's logits by only {effect:.2e}"
    names = onnx_bias_names(onnx)
    folded = FOLDED_BY_FAMILY.get(family, FOLDED)[site]
    assert all(f"model.layers.1.{m}.bias" in names for m in folded), sorted(names)


@pytest.mark.parametrize("family", sorted(NOT_BUILT))
def test_builder_refuses_the_family(tmp_path, family):
    """Refused for the family, not for the bake: the unbaked source fails the same way. When a builder release
    takes one of these, this fails: move the family to BUILT."""
    error, match = NOT_BUILT[family]
    src = _tiny_source(tmp_path / "src", family)
    out = _tiny_bake(src, tmp_path / "baked", exact_sites(CONFIGS[family]().to_dict())[0])
    for folder in (src, out):
        with pytest.raises(error, match=match):
            export(folder, tmp_path / f"{folder.name}_onnx")


def test_onnxruntime_reads_a_long_rope_llama_as_plain_rope(tmp_path):
    """A long-rope Phi-3 baked as Llama: the builder's Llama ignores rope_scaling (plain RoPE), as the bake's
    warning says; its logits are transformers' on the same weights with RoPE unscaled."""
    src = _tiny_source(tmp_path / "src", "phi3_longrope")
    out = _tiny_bake(src, tmp_path / "baked", "resid")
    got = logits(load(export(out, tmp_path / "onnx")), IDS)
    assert np.abs(got - _hf_logits(long_rope_as_read(out, tmp_path / "plain", "plain"), IDS)).max() <= 1e-4
    assert np.abs(got - _hf_logits(out, IDS)).max() >= 0.1


def test_onnxruntime_builds_a_yarn_llama_without_its_rope_scaling(tmp_path):
    """Ministral 3 baked as Llama keeps its YaRN RoPE: the builder's Llama computes other rotations (the first
    position, unrotated, agrees), as the bake's warning says."""
    src = _tiny_source(tmp_path / "src", "ministral3")
    out = _tiny_bake(src, tmp_path / "baked", "resid")
    got, want = logits(load(export(out, tmp_path / "onnx")), IDS), _hf_logits(out, IDS)
    assert np.abs(got[0] - want[0]).max() <= 1e-4 and np.abs(got - want).max() >= 0.1
