"""CTranslate2 (CPU) runs bakes: its own converter (``TransformersConverter``, float32) and its own forward
(``Generator.forward_batch``) on the baked folder give transformers' logits, and the steer survives conversion.

Read from ctranslate2 4.8.5, converters/transformers.py: every loader whose linears go through
``ModelLoader.set_linear`` (or ``utils.fuse_linear`` for q/k/v) keeps a bias the module has. Not all do:
- ``GemmaLoader`` and ``Gemma2Loader.set_decoder`` copy q/k/v/o ``.weight`` only: attention biases are dropped
  without a word, so a Gemma / Gemma 2 bake converts and runs as the unbaked model.
- ``GPTNeoXLoader.get_model_spec`` reads ``config.rotary_pct`` (folded into ``rope_parameters`` by transformers 5)
  and ``model.embed_out`` (now ``lm_head``): it refuses every GPT-NeoX, baked or not. With both put back it keeps
  every bias.
- Granite and OLMo2 have no loader (``_MODEL_LOADERS``): the converter refuses them.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from bakesteer.arch import ARCHS, INSIDE_WRAPPERS, exact_sites
from bakesteer.bake import Item, bake
from bakesteer.hooks import Steer
from helpers import hf_logits as _hf
from helpers import max_diff as _max
from helpers import runtime_runs_the_smollm2_bake, the_table_says
from tiny import CONFIGS, HIDDEN, LAYERS, make_model, save_char_tokenizer

ct2 = pytest.importorskip("ctranslate2", reason="CTranslate2 is not installed (pip install ctranslate2==4.8.5)")
from ctranslate2.converters import TransformersConverter  # noqa: E402

IDS = [3, 17, 42, 8, 91, 5, 66, 23, 7, 12, 30, 2]
TOL = 1e-4  # CTranslate2's CPU float32 kernels against torch's, tiny models: measured <= 8.6e-6 in every cell
SMOL_TOL = 2e-3  # the same on SmolLM2-135M, logits up to ~30: measured <= 1.3e-4 (tests/test_llamacpp.py's bound)
PROMPTS = ["I hate you because", "The weather today is", "Write a short note to a colleague."]
# the converter keeps every bias a bake writes (Mistral bakes, relabelled to Llama, go through LlamaLoader)
KEPT = ["llama", "mistral", "phi3", "qwen2", "qwen3", "gemma3", "gpt2", "opt", "opt_post_norm", "gptj"]
DROPPED = ["gemma", "gemma2"]  # converts, attention biases dropped
REFUSED = {"gpt_neox": (AttributeError, "rotary_pct"), "granite": (ValueError, "No conversion is registered"),
           "olmo2": (ValueError, "No conversion is registered"),
           "smollm3": (ValueError, "No conversion is registered"),
           "starcoder2": (ValueError, "No conversion is registered"),
           **{f: (ValueError, "No conversion is registered") for f in ("cohere", "cohere2", "olmo3", "qwen3_moe",
                                                                        "qwen2_moe", "gpt_oss", "olmoe",
                                                                        "glm4", "deepseek_v3", "seed_oss",
                                                                        "granite_swa", "llama4_text", "granitemoe")},
           "phi": (AttributeError, "n_layer"),  # its PhiLoader reads config.n_layer, which PhiConfig does not have
           "ministral3": (ValueError, "No conversion is registered")}  # and its bake: test_..._refuses_a_yarn_llama
# relabelled families whose source CTranslate2 cannot convert (the bake, written as Llama, it can): the steer's
# effect is then measured against transformers' logits of the source
SOURCE_NOT_RUN = {"phi3": "CTranslate2 4.8.5's Phi-3 loader reads Phi3Attention.rotary_emb, gone in transformers 5"}
# CTranslate2 limits unrelated to biases, kept out of the way: its Gemma2 has no sliding window or soft-capping
# (1.5 off on the tiny source), its Gemma3 fails on a prompt longer than the window (a buffer size error)
NO_WINDOW = {"gemma2": dict(sliding_window=64, attn_logit_softcapping=None, final_logit_softcapping=None),
             "gemma3": dict(sliding_window=64)}


def _sites(names: list[str]) -> list[tuple[str, str]]:
    return [(n, s) for n in names for s in exact_sites(CONFIGS[n]().to_dict())]


def _source(name: str, path: Path) -> Path:
    """A tiny model with a character tokenizer (bos/eos set: the converter writes them) of the model's size."""
    model = make_model(name, **NO_WINDOW.get(name, {}))
    model.save_pretrained(path)
    save_char_tokenizer(path)
    cfg_path = path / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "bos_token": "<unk>", "eos_token": "<unk>"}))
    n = len(AutoTokenizer.from_pretrained(path).get_vocab())
    if n != model.config.vocab_size:  # e.g. Qwen2's tokenizer class adds <|endoftext|>
        make_model(name, vocab_size=n, **NO_WINDOW.get(name, {})).save_pretrained(path)
    return path


def _converted(folder: Path) -> Path:
    return folder.with_name(folder.name + ".ct2")


def _ct2(folder: Path, prompts: list[list[int]], converter: type = TransformersConverter) -> list[np.ndarray]:
    """CTranslate2's own conversion (float32, into ``_converted(folder)``) and forward: logits per prompt."""
    out = _converted(folder)
    gc.freeze()  # the converter's gc.collect() after every layer: 0.5 s each over the test process's objects
    try:
        converter(str(folder)).convert(str(out), quantization="float32", force=True)
    finally:
        gc.unfreeze()
    gen = ct2.Generator(str(out), device="cpu", compute_type="float32", intra_threads=2)
    return [np.array(gen.forward_batch([ids]))[0].astype(np.float64) for ids in prompts]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """family -> (source folder, CTranslate2's logits of it), built and converted once."""
    made: dict[str, tuple[Path, list[np.ndarray]]] = {}

    def get(name: str) -> tuple[Path, list[np.ndarray]]:
        if name not in made:
            src = _source(name, tmp_path_factory.mktemp(name) / "src")
            made[name] = (src, _hf(src, [IDS]) if name in SOURCE_NOT_RUN else _ct2(src, [IDS]))
        return made[name]
    return get


def _tiny_bake(src: Path, site: str, out: Path) -> Path:
    v = np.random.default_rng(0).normal(size=HIDDEN)
    bake(src, [Item(Steer(site, 1, v, 2.0), {})], out, progress=False)
    return out


def test_every_table_family_has_a_verdict_and_the_table_agrees():
    """A family added to bakesteer's table must be run here, or its drop or refusal shown; the table's
    CTranslate2 cells are these verdicts, marked measured."""
    assert set(KEPT) | set(DROPPED) | set(REFUSED) == set(ARCHS) - set(INSIDE_WRAPPERS)
    the_table_says("CTranslate2", {**{f: "yes" for f in KEPT}, **{f: "ignored" for f in DROPPED},
                                   **{f: "refused" for f in REFUSED}})


@pytest.mark.parametrize("name,site", _sites(KEPT))
def test_ctranslate2_runs_the_bake(tmp_path, source, name, site):
    src, plain = source(name)
    out = _tiny_bake(src, site, tmp_path / "baked")
    got, want = _ct2(out, [IDS]), _hf(out, [IDS])
    err = _max(got, want)
    assert err <= TOL, f"CTranslate2 vs transformers on the {name} {site} bake: {err:.2e}"
    effect = _max(got, plain)  # the bake against the source, both run by CTranslate2
    assert effect >= 100 * TOL, f"the steer moved CTranslate2's logits by only {effect:.2e}"


@pytest.mark.parametrize("name,site", _sites(DROPPED))
def test_ctranslate2_drops_gemma_attention_biases(tmp_path, source, name, site):
    """The converter takes the bake without a word and writes the unbaked model's file, byte for byte; the model
    itself converts right (the source's CTranslate2 logits are transformers')."""
    src, plain = source(name)
    assert _max(plain, _hf(src, [IDS])) <= TOL
    out = _tiny_bake(src, site, tmp_path / "baked")
    got, want = _ct2(out, [IDS]), _hf(out, [IDS])
    same = (_converted(out) / "model.bin").read_bytes() == (_converted(src) / "model.bin").read_bytes()
    assert same, f"CTranslate2 now keeps {name}'s attention biases: move it to KEPT"
    assert _max(got, want) >= 100 * TOL  # CTranslate2 misses the whole steering effect transformers shows


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ctranslate2_refuses_the_family(tmp_path, name):
    """Refused before any bias is read, unbaked source included (GPT-NeoX: the loader predates transformers 5's
    names; Granite, OLMo2: no loader)."""
    error, match = REFUSED[name]
    src = _source(name, tmp_path / "src")
    with pytest.raises(error, match=match):
        TransformersConverter(str(src)).convert(str(tmp_path / "src.ct2"), quantization="float32")


class _NeoXConverter(TransformersConverter):
    """The converter with the two GPT-NeoX names transformers 5 changed put back (``rotary_pct``, ``embed_out``)."""

    def load_model(self, model_class, model_name_or_path, **kwargs):
        model = super().load_model(model_class, model_name_or_path, **kwargs)
        model.config.rotary_pct = model.config.rope_parameters["partial_rotary_factor"]
        model.embed_out = model.get_output_embeddings()
        return model


def test_ctranslate2_keeps_gpt_neox_biases_once_it_reads_the_model(tmp_path):
    """GPT-NeoX's refusal is not about biases: with the renamed attributes put back, a bake at every exact site at
    once (the fused q/k/v bias reordered per head with its weight) runs in CTranslate2 as in transformers."""
    src = _source("gpt_neox", tmp_path / "src")
    g = np.random.default_rng(1)
    sites = exact_sites(CONFIGS["gpt_neox"]().to_dict())
    items = [Item(Steer(s, i % LAYERS, g.normal(size=HIDDEN), 2.0), {}) for i, s in enumerate(sites)]
    bake(src, items, tmp_path / "baked", progress=False)
    got, want = _ct2(tmp_path / "baked", [IDS], _NeoXConverter), _hf(tmp_path / "baked", [IDS])
    assert _max(got, want) <= TOL
    assert _max(got, _ct2(src, [IDS], _NeoXConverter)) >= 100 * TOL


@pytest.fixture(scope="module")
def smol_plain(smollm2, smollm2_tok, tmp_path_factory) -> list[np.ndarray]:
    """CTranslate2's logits of the unbaked SmolLM2 (its conversion goes beside a link to the source)."""
    link = tmp_path_factory.mktemp("smol") / "src"
    link.symlink_to(smollm2, target_is_directory=True)
    return _ct2(link, [smollm2_tok(p)["input_ids"] for p in PROMPTS])


@pytest.mark.parametrize("site", ["resid", "attn_in"])
def test_ctranslate2_runs_the_smollm2_bake(tmp_path, smollm2, smollm2_tok, smol_plain, site):
    """The real default model with the bundled love vector at block 5 (as tests/test_llamacpp.py)."""
    prompts = [smollm2_tok(p)["input_ids"] for p in PROMPTS]
    runtime_runs_the_smollm2_bake("CTranslate2", _ct2, _hf, smollm2, prompts, smol_plain, site, tmp_path / "baked",
                                  SMOL_TOL)


def test_ctranslate2_refuses_a_long_rope_llama(tmp_path):
    """A long-rope Phi-3 baked as Llama: the converter names the long-rope factors its Llama loader never writes,
    as the bake's warning says."""
    src = _source("phi3_longrope", tmp_path / "src")
    out = _tiny_bake(src, "resid", tmp_path / "baked")
    with pytest.raises(ValueError, match="rotary_scaling_long_factor"):
        _ct2(out, [IDS])


def test_ctranslate2_refuses_a_yarn_llama(tmp_path):
    """Ministral 3 baked as Llama keeps its YaRN RoPE, which the converter's Llama loader does not implement, as
    the bake's warning says."""
    out = _tiny_bake(_source("ministral3", tmp_path / "src"), "resid", tmp_path / "baked")
    with pytest.raises(NotImplementedError, match="yarn"):
        _ct2(out, [IDS])
