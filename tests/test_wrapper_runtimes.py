"""Runtimes on bakes of multimodal wrappers (the text decoder baked in place, bakesteer.families.WRAPPERS):
llama.cpp (its converter writes the text model), MLX-LM (its text models of these wrappers), CTranslate2 and ONNX
Runtime, against transformers' AutoModelForImageTextToText on text-only tokens. The verdicts here are the
wrappers' rows of the runtime table, marked measured; a test fails when the table says otherwise.

"yes": the runtime loads the bake and gives transformers' logits of it (within twice its own error on the unbaked
source), far from the source's. "refused": the runtime (or its converter) will not take the bake. Gemma 3 in
llama.cpp is read as the text-only family is (tests/test_llamacpp.py): q/k/v biases read once the all-zero o
biases attention_bias brings are dropped, an o bias refused.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from bakesteer.arch import WRAPPERS
from bakesteer.bake import Item, bake
from bakesteer.configs import for_every_reader
from bakesteer.hooks import Steer
from tiny import HIDDEN, WRAPPED

IDS = [1, 5, 17, 42, 100, 256, 1000, 2048, 4000, 9999, 20000, 49000]  # text only: no image token
TEXT = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # SmolLM2's tokenizer (llama.cpp's
# converter needs a pre-tokenizer it knows)
# what the tiny wrappers need to load at all, baked or not, unrelated to biases: (top-level, text_config) keys.
# Gemma 3: MLX-LM reads the vocabulary size from the top level only and takes every 6th block as full attention
# (sliding_window_pattern), whatever layer_types says: 6 blocks, tied as released; a window past the prompt
# (CTranslate2's Gemma 3 fails on a prompt longer than its window). Mistral 3 and Qwen2.5-VL: untied, said where
# MLX-LM looks (Mistral3Config ties by default at the top level; MLX-LM's qwen2 ties unless text_config says not)
FIT = {"gemma3_mm": (dict(tie_word_embeddings=True, vocab_size=TEXT["vocab_size"]),
                     dict(tie_word_embeddings=True, num_hidden_layers=6, sliding_window=64,
                          layer_types=["sliding_attention"] * 5 + ["full_attention"])),
       "mistral3": (dict(tie_word_embeddings=False), dict(tie_word_embeddings=False)),
       **{w: (dict(tie_word_embeddings=False), dict(tie_word_embeddings=False))
          for w in ("qwen2_5_vl", "qwen2_vl")}}
WRAPPER = {"gemma3_mm": "gemma3", "llava": "llava", "mistral3": "mistral3", "qwen2_5_vl": "qwen2_5_vl",
           "qwen2_vl": "qwen2_vl", "llama4_mm": "llama4"}
SITES = {"gemma3_mm": ["attn_in", "attn_out"], "qwen2_5_vl": ["attn_in"], "qwen2_vl": ["attn_in"],
         "llama4_mm": ["attn_in", "attn_out"],
         **{w: ["attn_in", "attn_out", "mlp_in"] for w in ("llava", "mistral3")}}  # one site per bias group
GROUP = {"attn_in": "qkv", "attn_out": "o", "mlp_in": "mlp"}
Y, R = "yes", "refused"
VERDICT = {  # runtime -> wrapper -> bias group -> verdict
    "llama.cpp": {"gemma3_mm": {"qkv": Y, "o": R}, "llava": dict.fromkeys(("qkv", "o", "mlp"), Y),
                  "mistral3": dict.fromkeys(("qkv", "o", "mlp"), Y), "qwen2_5_vl": {"qkv": Y},
                  "qwen2_vl": {"qkv": Y}, "llama4_mm": {"qkv": R, "o": R}},
    "MLX-LM": {"gemma3_mm": {"qkv": R, "o": R}, "llava": dict.fromkeys(("qkv", "o", "mlp"), Y),
               "mistral3": dict.fromkeys(("qkv", "o", "mlp"), Y), "qwen2_5_vl": {"qkv": Y}, "qwen2_vl": {"qkv": Y},
               "llama4_mm": {"qkv": Y, "o": Y}},
    "CTranslate2": {"gemma3_mm": {"qkv": Y, "o": Y}, "llava": dict.fromkeys(("qkv", "o", "mlp"), R),
                    "mistral3": dict.fromkeys(("qkv", "o", "mlp"), R), "qwen2_5_vl": {"qkv": R},
                    "qwen2_vl": {"qkv": R}, "llama4_mm": {"qkv": R, "o": R}},
    "ONNX Runtime": {"gemma3_mm": {"qkv": R, "o": R}, "llava": dict.fromkeys(("qkv", "o", "mlp"), R),
                     "mistral3": dict.fromkeys(("qkv", "o", "mlp"), Y), "qwen2_5_vl": {"qkv": Y},
                     "qwen2_vl": {"qkv": R}, "llama4_mm": {"qkv": R, "o": R}},
}
CASES = [(rt, w, s) for rt in VERDICT for w in SITES for s in SITES[w]]


class Refused(Exception):
    """The runtime (or its converter) would not take the checkpoint."""


def _llamacpp(folder: Path, work: Path, trim: bool = False) -> np.ndarray:
    pytest.importorskip("llama_cpp", reason="the llamacpp test extra is not installed")
    from llamacpp_tools import convert, load, logits, without

    gguf_path = work / "model.gguf"
    convert(folder, gguf_path)
    if trim:  # the all-zero biases a switched-on flag writes beside the steered ones
        import gguf

        zeros = {t.name for t in gguf.GGUFReader(str(gguf_path)).tensors
                 if t.name.endswith(".bias") and not t.data.any()}
        without(gguf_path, work / "trimmed.gguf", zeros)
        gguf_path = work / "trimmed.gguf"
    try:
        return logits(load(gguf_path), IDS)
    except ValueError as e:
        raise Refused(str(e)) from None


def _mlx(folder: Path, work: Path) -> np.ndarray:
    mx = pytest.importorskip("mlx.core", reason="MLX-LM is not installed")
    mlx_utils = pytest.importorskip("mlx_lm.utils")
    try:
        model, _ = mlx_utils.load_model(folder)
    except ValueError as e:  # strict load: "parameters not in model"
        raise Refused(str(e)) from None
    return np.array(model(mx.array([IDS])).astype(mx.float32))[0].astype(np.float64)


def _ct2(folder: Path, work: Path) -> np.ndarray:
    ct2 = pytest.importorskip("ctranslate2", reason="CTranslate2 is not installed")
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(folder)).convert(str(work / "ct2"), quantization="float32", force=True)
    except ValueError as e:  # "No conversion is registered for the model configuration ..."
        raise Refused(str(e)) from None
    gen = ct2.Generator(str(work / "ct2"), device="cpu", compute_type="float32", intra_threads=2)
    return np.array(gen.forward_batch([IDS]))[0].astype(np.float64)


def _ort(folder: Path, work: Path) -> np.ndarray:
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    from onnx_tools import export, load, logits

    try:
        export(folder, work / "onnx")
    except (NotImplementedError, KeyError) as e:  # no builder for the wrapper; Gemma 3's nested rope_parameters
        raise Refused(f"{type(e).__name__}: {e}") from None
    return logits(load(work / "onnx"), IDS)


RUN = {"llama.cpp": _llamacpp, "MLX-LM": _mlx, "CTranslate2": _ct2, "ONNX Runtime": _ort}


def _hf(folder: Path) -> np.ndarray:
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].double().numpy()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, smollm2):
    """wrapper -> (source folder with SmolLM2's tokenizer, transformers' logits of it)."""
    made: dict[str, tuple[Path, np.ndarray]] = {}

    def get(name: str) -> tuple[Path, np.ndarray]:
        if name not in made:
            torch.manual_seed(0)
            cfg = WRAPPED[name]()
            text = cfg.get_text_config()
            top, inner = FIT.get(name, ({}, {}))
            for key, value in {**TEXT, **inner, "initializer_range": 0.2}.items():
                setattr(text, key, value)
            for key, value in top.items():
                setattr(cfg, key, value)
            model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32).eval()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith(".bias"):
                        p.normal_(0, 0.1)
            src = tmp_path_factory.mktemp(name) / "src"
            model.save_pretrained(src)
            path = src / "config.json"
            path.write_text(json.dumps(for_every_reader(json.loads(path.read_text()))))
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(smollm2 / f, src / f)
            made[name] = (src, _hf(src))
        return made[name]
    return get


@pytest.mark.parametrize("runtime,name,site", CASES, ids=[f"{r}-{w}-{s}" for r, w, s in CASES])
def test_runtime_reads_or_refuses_the_wrapper_bake_as_the_table_says(tmp_path, sources, runtime, name, site):
    src, plain = sources(name)
    bake(src, [Item(Steer(site, 1, np.random.default_rng(0).standard_normal(HIDDEN), 2.0), {})], tmp_path / "out",
         progress=False)
    want = _hf(tmp_path / "out")
    run = RUN[runtime]
    verdict = VERDICT[runtime][name][GROUP[site]]
    qkv_only = runtime == "llama.cpp" and name == "gemma3_mm"  # the text family's case (module docstring)
    for d in ("as_written", "trimmed", "control"):
        (tmp_path / d).mkdir()
    if verdict == R or qkv_only:
        with pytest.raises(Refused):
            run(tmp_path / "out", tmp_path / "as_written")
        if verdict == R:
            if qkv_only:  # still refused without the zero biases: the o bias itself
                with pytest.raises(Refused):
                    run(tmp_path / "out", tmp_path / "trimmed", trim=True)
            return
    own = np.abs(run(src, tmp_path / "control") - plain).max()  # the runtime's own error on the unbaked source
    tol = max(1e-4, 2 * own)
    trim = {"trim": True} if qkv_only else {}
    got = run(tmp_path / "out", tmp_path / "trimmed", **trim)
    assert np.abs(got - want).max() <= tol, (np.abs(got - want).max(), tol)
    assert np.abs(want - plain).max() >= 100 * tol


def test_the_table_marks_these_wrapper_verdicts_measured():
    for runtime, by_wrapper in VERDICT.items():
        for name, verdicts in by_wrapper.items():
            w = WRAPPERS[WRAPPER[name]]
            assert set(w.measured.get(runtime, ())) == set(verdicts), (runtime, name)
            assert {g: w.runtimes[runtime][g] for g in verdicts} == verdicts, (runtime, name)
    claimed = {(rt, n) for n, w in WRAPPERS.items() for rt in w.measured if rt != "transformers"}
    assert claimed == {(rt, WRAPPER[n]) for rt in VERDICT for n in VERDICT[rt]}
