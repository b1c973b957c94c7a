"""llama.cpp for real (llama-cpp-python, the `llamacpp` test extra that scripts/setup.sh installs).

1. A baked SmolLM2 checkpoint, converted by llama.cpp's own convert_hf_to_gguf.py, runs in llama.cpp with
   transformers' logits.
2. A bake straight into SmolLM2's Q4_1 GGUF equals llama.cpp's own control-vector steering of the
   unbaked GGUF (resid), and its attn_in bias is in llama.cpp's permuted q/k order.
3. GGUF bakes of tiny Granite, Qwen2 and GPT-2 models run in llama.cpp as transformers' hooks.
4. Bakes of tiny models of the other families, converted by llama.cpp's converter, run in llama.cpp as in
   transformers where llama.cpp creates the bias tensors, and are refused where it does not; GGUF bakes of
   their converted sources run as transformers' hooks.
(GGUF bakes that need only the gguf package are in tests/test_gguf_bake.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GptOssConfig

from bakesteer.bake import Item, bake
from bakesteer.gguf_bake import bake_gguf
from bakesteer.hooks import Steer, steering
from bakesteer.models import smollm2_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="the llamacpp test extra is not installed (scripts/setup.sh)")
from llamacpp_tools import convert, cvec_logits, greedy, load, logits, rewrite, without  # noqa: E402
from helpers import hf_logits, long_rope_as_read, love_steer, the_table_says  # noqa: E402
from tiny import HIDDEN, make_model  # noqa: E402

PROMPTS = ["I hate you because", "The weather today is", "Write a short note to a colleague."]
LAYER = 5
TOL = 2e-3  # fp32 llama.cpp vs transformers, max |Δlogit|


def _hf_plain_and_hooked(model, ids: list[int], steer: Steer | list[Steer]) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor([ids])
    with torch.no_grad():
        base = model(x).logits[0].double().numpy()
        with steering(model, steer if isinstance(steer, list) else [steer]):
            return base, model(x).logits[0].double().numpy()


@pytest.mark.parametrize("site", ["resid", "attn_in", "attn_out"])
def test_converted_bake_runs_in_llamacpp(tmp_path, smollm2, smollm2_model, smollm2_tok, site):
    steer = love_steer(site)
    bake(smollm2, [Item(steer, {})], tmp_path / "baked", progress=False)
    convert(tmp_path / "baked", tmp_path / "baked.gguf")
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", dtype=torch.float32).eval()
    llm = load(tmp_path / "baked.gguf")
    for p in PROMPTS:
        ids = smollm2_tok(p)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            hf = baked(x).logits[0].double().numpy()
            plain = smollm2_model(x).logits[0].double().numpy()
        cpp = logits(llm, ids)
        assert np.abs(cpp - hf).max() <= TOL, np.abs(cpp - hf).max()
        assert np.abs(hf - plain).max() >= 100 * TOL  # the steering moved the logits far beyond the tolerance
    ids = smollm2_tok(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        hf_greedy = baked.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)[0, len(ids):].tolist()
    assert greedy(llm, ids) == hf_greedy


def test_gguf_bake_equals_llamacpp_control_vector(tmp_path, smollm2_tok):
    steer = love_steer("resid")
    out = tmp_path / "love.gguf"
    bake_gguf(smollm2_gguf(), [Item(steer, {})], out)
    baked, plain = load(out), load(smollm2_gguf())
    for p in PROMPTS:
        ids = smollm2_tok(p)["input_ids"]
        got = logits(baked, ids)
        want = cvec_logits(smollm2_gguf(), (steer.coef * steer.vector).astype(np.float32), LAYER, ids)
        tol = 1e-3 * np.abs(want).max()
        assert np.abs(got - want).max() <= tol, (np.abs(got - want).max(), tol)
        assert np.abs(want - logits(plain, ids)).max() >= 100 * tol


def test_gguf_attn_in_bias_is_in_llamacpp_q_k_order(tmp_path, smollm2, smollm2_model, smollm2_tok):
    """llama.cpp's converter stores q/k permuted for RoPE; a bias from the stored weight is in that order.

    On an F32 GGUF made by llama.cpp's own converter, the GGUF bake equals transformers' hooked model; the
    same bias in transformers' (unpermuted) q/k order is far off.
    """
    steer = love_steer("attn_in")
    f32 = tmp_path / "f32.gguf"
    convert(smollm2, f32)
    right, wrong = tmp_path / "right.gguf", tmp_path / "wrong.gguf"
    bake_gguf(f32, [Item(steer, {})], right)
    attn, v = smollm2_model.model.layers[LAYER].self_attn, torch.from_numpy(steer.coef * steer.vector).float()
    unpermuted = {f"blk.{LAYER}.attn_{n}.bias": (lin.weight.detach() @ v).numpy()
                  for n, lin in (("q", attn.q_proj), ("k", attn.k_proj))}
    rewrite(right, wrong, unpermuted)
    right_llm, wrong_llm = load(right), load(wrong)
    for p in PROMPTS:
        ids = smollm2_tok(p)["input_ids"]
        base, hooked = _hf_plain_and_hooked(smollm2_model, ids, steer)
        assert np.abs(logits(right_llm, ids) - hooked).max() <= TOL
        assert np.abs(hooked - base).max() >= 100 * TOL
        assert np.abs(logits(wrong_llm, ids) - hooked).max() >= 50 * TOL  # the order matters


def test_gguf_attn_in_on_q4_1_steers_like_transformers(tmp_path, smollm2_model, smollm2_tok):
    """On the Q4_1 file llama.cpp quantizes activations too (plain vs plain differs by ~0.7 logits), so the
    steering effect is compared in direction: cosine with transformers' hooked effect."""
    steer = love_steer("attn_in")
    out = tmp_path / "attn.gguf"
    bake_gguf(smollm2_gguf(), [Item(steer, {})], out)
    plain, baked = load(smollm2_gguf()), load(out)
    for p in PROMPTS:
        ids = smollm2_tok(p)["input_ids"]
        base, hooked = _hf_plain_and_hooked(smollm2_model, ids, steer)
        d_hf = hooked - base
        d_cpp = logits(baked, ids) - logits(plain, ids)
        cos = float((d_hf * d_cpp).sum() / np.linalg.norm(d_hf) / np.linalg.norm(d_cpp))
        assert cos >= 0.95, cos


@pytest.mark.parametrize("site", ["resid", "attn_in"])
def test_granite_gguf_bake_runs_in_llamacpp_as_the_converted_transformers_bake(tmp_path, smollm2, site):
    """A tiny Granite (residual_multiplier 0.22, SmolLM2's tokenizer so the converter takes it): the GGUF bake of
    its llama.cpp conversion gives llama.cpp's logits of the converted transformers bake, and those are
    transformers' hooked logits. A resid fold that ignored the multiplier would be off by 1/0.22."""
    import shutil

    make_model("granite", vocab_size=49152, bos_token_id=1, eos_token_id=2).save_pretrained(tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / name, tmp_path / "src" / name)
    g = np.random.default_rng(3)
    steers = [Steer(site, layer, g.standard_normal(HIDDEN), 2.0) for layer in (1, 3)]
    bake(tmp_path / "src", [Item(s, {}) for s in steers], tmp_path / "hf", progress=False)
    convert(tmp_path / "src", tmp_path / "src.gguf")
    convert(tmp_path / "hf", tmp_path / "hf.gguf")
    bake_gguf(tmp_path / "src.gguf", [Item(s, {}) for s in steers], tmp_path / "baked.gguf")
    ids = list(range(5, 29))
    ours, converted, plain = (logits(load(tmp_path / f), ids) for f in ("baked.gguf", "hf.gguf", "src.gguf"))
    source = AutoModelForCausalLM.from_pretrained(tmp_path / "src", dtype=torch.float32).eval()
    _, hooked = _hf_plain_and_hooked(source, ids, steers)
    assert np.abs(ours - converted).max() <= 1e-5
    assert np.abs(ours - hooked).max() <= 1e-4
    assert np.abs(converted - plain).max() >= 100 * 1e-4  # the steer moved llama.cpp's logits far beyond that


@pytest.mark.parametrize("family,site", [("qwen2", "attn_in"), ("gpt2", "attn_in"), ("gpt2", "mlp_in"),
                                         ("gpt2", "resid")])
def test_qwen2_and_gpt2_gguf_bakes_run_in_llamacpp_as_transformers_hooks(tmp_path, family, site):
    """A tiny Qwen2 / GPT-2 as llama.cpp's qwen2 / gpt2 architecture (tests/gguf_convert.py; the converter
    refuses the tiny model's tokenizer): the GGUF bake's llama.cpp logits equal transformers' hooked ones
    within llama.cpp's own error on the unbaked model (GPT-2: its GELU table, ~5e-3). A Conv1D layout read
    the wrong way round would be refused or off by the whole steering effect."""
    import gguf_convert

    model = make_model(family, vocab_size=49152, bos_token_id=1, eos_token_id=2)
    gguf_convert.write(tmp_path / "src.gguf", family, model, smollm2_gguf())
    g = np.random.default_rng(3)
    steers = [Steer(site, layer, g.standard_normal(HIDDEN), 2.0) for layer in (1, 3)]
    bake_gguf(tmp_path / "src.gguf", [Item(s, {}) for s in steers], tmp_path / "baked.gguf")
    ids = list(range(5, 29))
    plain, hooked = _hf_plain_and_hooked(model, ids, steers)
    own = np.abs(logits(load(tmp_path / "src.gguf"), ids) - plain).max()  # llama.cpp vs transformers, unbaked
    tol = max(1e-4, 2 * own)
    assert np.abs(logits(load(tmp_path / "baked.gguf"), ids) - hooked).max() <= tol
    assert np.abs(hooked - plain).max() >= 100 * tol


# Families whose converted bakes run in llama.cpp with every bias group; families whose llama.cpp architecture
# creates the q/k/v biases but no attention-output bias (attention_bias switches all four on in transformers).
EVERY_GROUP = ["gpt2", "gpt_neox", "granite", "starcoder2", "phi", "gpt_oss"]
ATTENTION_ONLY = ["granitemoe"]  # no MLP bias slots (experts): both attention groups run
QKV_ONLY = ["qwen3", "gemma", "gemma2", "gemma3", "olmo2", "olmo3", "smollm3", "cohere", "qwen3_moe", "olmoe"]
# llama.cpp's runtime reads Cohere2's q/k/v biases (a GGUF bake runs), its converter refuses any non-zero bias
CONVERTER_REFUSES_BIASES = ["cohere2"]
NO_CONVERTER = ["opt", "opt_post_norm", "gptj"]  # llama.cpp has no such architecture
RUNTIME_REFUSES_BIASES = ["deepseek_v3", "llama4_text"]  # no q_a/kv_a/o (deepseek2), no q/k/v/o (llama4) biases:
# any bake refused, source runs
NATIVE_QKV = ["qwen2_moe", "glm4", "seed_oss"]  # q/k/v biases the source has: an attn_in bake changes them in place
# of those, families whose o and MLP biases a bake can switch on and llama.cpp refuses (no such tensors)
NATIVE_QKV_ONLY = ["seed_oss"]
# what the tiny models need to be what llama.cpp runs: Gemma's output embedding is always tied in llama.cpp; its
# phi2 has one key/value head per query head and a 4x MLP (as Phi-2); its SmolLM3 is ~10 logits off transformers'
# on the unbaked tiny model's NoPE block (a disagreement of the two implementations, baked or not), so the tiny
# SmolLM3 here has three blocks with RoPE
_FIT = {**{f: dict(tie_word_embeddings=True) for f in ("gemma", "gemma2", "gemma3", "cohere", "cohere2")},
        "phi": dict(num_key_value_heads=4, intermediate_size=4 * HIDDEN),
        "smollm3": dict(use_sliding_window=False, num_hidden_layers=3, no_rope_layers=[1, 1, 1],
                        layer_types=["full_attention"] * 3),
        # llama.cpp always truncates YaRN's correction range, which GPT-OSS's released configs switch off
        # (truncate: false): 0.11 logits off on the tiny model, baked or not; with truncate on it is ~1e-5
        "gpt_oss": dict(rope_parameters={**GptOssConfig().rope_parameters, "truncate": True}),
        "glm4": dict(vocab_size=49152 + 4),
        "olmoe": dict(num_key_value_heads=4)}  # llama.cpp's olmoe sizes k_norm by the hidden size: no GQA (as released)
# llama.cpp's converter reads Cohere2's rotary_pct, which transformers 5's Cohere2Config does not write (it rotates
# whole heads): put in config.json as 1.0
_CONFIG_KEYS = {"cohere2": {"rotary_pct": 1.0}}
# GLM4's converter reads these from the tokenizer's added vocabulary (SmolLM2's lacks them): added as three more ids
_CHAT_TOKENS = {"glm4": ["[gMASK]", "<|user|>", "<|observation|>"]}
_CONVERT = {"gemma": dict(no_sentencepiece=True), "gemma2": dict(no_sentencepiece=True),
            "gpt_neox": dict(raw_config=True)}  # see tests/llamacpp_tools.py: stand-ins for the user's environment
IDS = list(range(5, 29))
SEVERAL = [1, 2]  # blocks steered in the tiny bakes


@pytest.fixture(scope="module")
def converted(tmp_path_factory, smollm2):
    """family -> (source folder, transformers' model, its llama.cpp GGUF, llama.cpp's own error on it): a tiny
    model with SmolLM2's tokenizer (the converter knows its pre-tokenizer) and a config as the Hub's carry it
    (both forms: what a bake writes)."""
    import json
    import shutil

    from bakesteer.configs import for_every_reader

    made: dict[str, tuple] = {}

    def get(family: str):
        if family not in made:
            src = tmp_path_factory.mktemp(family) / "src"
            model = make_model(family, **{"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2,
                                          **_FIT.get(family, {})})
            model.save_pretrained(src)
            cfg = src / "config.json"
            written = for_every_reader(json.loads(cfg.read_text()))
            cfg.write_text(json.dumps({**written, **_CONFIG_KEYS.get(family, {})}))
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(smollm2 / name, src / name)
            if family in _CHAT_TOKENS:  # the tokens its converter names special
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(src)
                tok.add_special_tokens({"additional_special_tokens": _CHAT_TOKENS[family]})
                tok.save_pretrained(src)
            convert(src, src.with_suffix(".gguf"), **_CONVERT.get(family, {}))
            plain = _hf_plain_and_hooked(model, IDS, [])[0]
            own = np.abs(logits(load(src.with_suffix(".gguf")), IDS) - plain).max()
            made[family] = (src, model, src.with_suffix(".gguf"), own)
        return made[family]
    return get


def _steers(site: str) -> list[Steer]:
    g = np.random.default_rng(3)
    return [Steer(site, layer, g.standard_normal(HIDDEN), 2.0) for layer in SEVERAL]


def _bake_and_convert(converted, tmp_path, family: str, site: str):
    src, model, src_gguf, own = converted(family)
    bake(src, [Item(s, {}) for s in _steers(site)], tmp_path / "hf", progress=False)
    convert(tmp_path / "hf", tmp_path / "hf.gguf", **_CONVERT.get(family, {}))
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    return baked, max(1e-4, 2 * own), logits(load(src_gguf), IDS)


def _zero_biases(path) -> set[str]:
    import gguf

    return {t.name for t in gguf.GGUFReader(str(path)).tensors if t.name.endswith(".bias") and not t.data.any()}


@pytest.mark.parametrize("family,site", [*((f, s) for f in EVERY_GROUP if f != "granite"
                                            for s in ("attn_in", "mlp_in", "attn_out", "resid")),
                                         ("granite", "attn_out"),  # Granite's other groups: the test above
                                         *((f, s) for f in ATTENTION_ONLY for s in ("attn_in", "attn_out")),
                                         *((f, "attn_in") for f in NATIVE_QKV)])  # their q/k/v biases exist
def test_converted_tiny_bake_runs_in_llamacpp(tmp_path, converted, family, site):
    """One site per bias group (mlp_out writes resid's tensor). A bake converted by llama.cpp's converter gives
    transformers' logits of the baked folder, within twice llama.cpp's own error on the unbaked source (GPT-2,
    GPT-NeoX: its GELU, ~4e-3); the steer moves llama.cpp's logits far beyond that."""
    baked, tol, plain_cpp = _bake_and_convert(converted, tmp_path, family, site)
    got = logits(load(tmp_path / "hf.gguf"), IDS)
    want = _hf_plain_and_hooked(baked, IDS, [])[0]
    assert np.abs(got - want).max() <= tol, np.abs(got - want).max()
    assert np.abs(got - plain_cpp).max() >= 100 * tol


@pytest.mark.parametrize("family,site", [*((f, s) for f in QKV_ONLY for s in ("attn_in", "attn_out")),
                                         ("smollm3", "mlp_in")])
def test_llamacpp_reads_qkv_biases_and_refuses_an_o_bias(tmp_path, converted, family, site):
    """attn_in and attn_out switch attention_bias on, so both bakes carry q/k/v and o biases (zero where not
    steered). llama.cpp refuses each as converted (its source runs). Without the zero o biases, the attn_in bake
    runs with transformers' logits; without the zero q/k/v biases, the attn_out bake is still refused: the o bias
    alone is what llama.cpp will not load. SmolLM3's MLP biases (mlp_bias) are refused the same way."""
    baked, tol, plain_cpp = _bake_and_convert(converted, tmp_path, family, site)
    with pytest.raises(ValueError, match="Failed to load model"):
        load(tmp_path / "hf.gguf")
    zeros = _zero_biases(tmp_path / "hf.gguf")
    names = {"attn_in": ("attn_q", "attn_k", "attn_v"), "attn_out": ("attn_output",), "mlp_in": ("ffn_gate", "ffn_up")}
    steered = {f"blk.{b}.{n}.bias" for b in SEVERAL for n in names[site]}
    assert zeros and not zeros & steered
    without(tmp_path / "hf.gguf", tmp_path / "trimmed.gguf", zeros)
    if site != "attn_in":
        with pytest.raises(ValueError, match="Failed to load model"):
            load(tmp_path / "trimmed.gguf")
        return
    got = logits(load(tmp_path / "trimmed.gguf"), IDS)
    want = _hf_plain_and_hooked(baked, IDS, [])[0]
    assert np.abs(got - want).max() <= tol, np.abs(got - want).max()
    assert np.abs(got - plain_cpp).max() >= 100 * tol


@pytest.mark.parametrize("family,site", [*((f, "attn_in") for f in [*QKV_ONLY, *CONVERTER_REFUSES_BIASES, *NATIVE_QKV]),
                                         *((f, s) for f in ATTENTION_ONLY for s in ("attn_in", "attn_out")),
                                         *((f, s) for f in ("gpt_neox", "starcoder2", "phi")
                                           for s in ("attn_in", "mlp_in", "attn_out", "resid"))])
def test_gguf_bake_of_a_converted_tiny_model_runs_as_transformers_hooks(tmp_path, converted, family, site):
    """bakesteer's GGUF bake of the converter's output (the q/k/v biases only, where that is all llama.cpp
    creates) gives transformers' hooked logits in llama.cpp."""
    src, model, src_gguf, own = converted(family)
    steers = _steers(site)
    bake_gguf(src_gguf, [Item(s, {}) for s in steers], tmp_path / "baked.gguf")
    plain, hooked = _hf_plain_and_hooked(model, IDS, steers)
    tol = max(1e-4, 2 * own)
    assert np.abs(logits(load(tmp_path / "baked.gguf"), IDS) - hooked).max() <= tol
    assert np.abs(hooked - plain).max() >= 100 * tol


def test_the_table_marks_these_families_measured_in_llamacpp():
    """SmolLM2 (Llama: every group), Qwen2 (q/k/v) and the tiny families above."""
    the_table_says("llama.cpp", {"llama": "yes", "qwen2": "yes",
                                 **{f: {"qkv": "yes"} for f in NATIVE_QKV if f not in NATIVE_QKV_ONLY},
                                 **{f: {"qkv": "yes", "o": "refused", "mlp": "refused"} for f in NATIVE_QKV_ONLY},
                                 **{f: "yes" for f in EVERY_GROUP},
                                 **{f: {"qkv": "yes", "o": "yes"} for f in ATTENTION_ONLY},
                                 **{f: {"qkv": "yes", "o": "refused"} for f in QKV_ONLY if f != "smollm3"},
                                 "smollm3": {"qkv": "yes", "o": "refused", "mlp": "refused"},
                                 **{f: "refused" for f in NO_CONVERTER},
                                 **{f: {"qkv": "refused", "o": "refused"}
                                    for f in [*CONVERTER_REFUSES_BIASES, *RUNTIME_REFUSES_BIASES]}})


@pytest.mark.parametrize("family,site", [(f, s) for f in NATIVE_QKV_ONLY for s in ("attn_out", "mlp_in")])
def test_llamacpp_refuses_the_o_and_mlp_biases_it_has_no_tensors_for(tmp_path, converted, family, site):
    """The converted attn_out / mlp_in bake (its flag switched on) does not load; the source and an attn_in bake do
    (tests above)."""
    _bake_and_convert(converted, tmp_path, family, site)
    with pytest.raises(ValueError, match="Failed to load model"):
        load(tmp_path / "hf.gguf")


@pytest.mark.parametrize("family,site", [(f, s) for f in RUNTIME_REFUSES_BIASES for s in ("attn_in", "attn_out")])
def test_llamacpp_refuses_every_bias_of_the_family(tmp_path, converted, family, site):
    """The unbaked source converts and runs (the fixture measures it); a converted bake at either site does not."""
    _bake_and_convert(converted, tmp_path, family, site)
    with pytest.raises(ValueError, match="Failed to load model"):
        load(tmp_path / "hf.gguf")


@pytest.mark.parametrize("family,site", [(f, s) for f in CONVERTER_REFUSES_BIASES for s in ("attn_in", "attn_out")])
def test_llamacpp_converter_refuses_the_bias(tmp_path, converted, family, site):
    """The source converts (and runs: the fixture); a bake with any non-zero bias is refused by the converter, in
    its Cohere2 class's bias check (conversion/command_r.py: "Cohere2 runtime in llama.cpp expects no bias
    tensors"; under lazy loading the check itself fails)."""
    import subprocess

    with pytest.raises(subprocess.CalledProcessError) as refusal:
        _bake_and_convert(converted, tmp_path, family, site)
    assert b"command_r.py" in refusal.value.stderr


@pytest.mark.parametrize("family", NO_CONVERTER)
def test_llamacpp_converter_refuses_the_family(tmp_path, converted, family):
    """llama.cpp has no OPT or GPT-J architecture: its converter refuses the unbaked model (so any bake)."""
    import subprocess

    with pytest.raises(subprocess.CalledProcessError) as refusal:
        converted(family)
    assert b"ForCausalLM is not supported" in refusal.value.stderr



@pytest.mark.parametrize("family", ["phi3", "phi3_longrope", "ministral3"])
def test_phi3_baked_as_llama_in_llamacpp(tmp_path, smollm2, family):
    """Phi-3 baked (as Llama, its fused weights split) and converted by llama.cpp's converter, which cannot take
    the tiny Phi-3 source itself (its Phi-3 class wants a sentencepiece tokenizer.model). With default RoPE
    llama.cpp gives transformers' logits of the bake. With long-rope it reads the Llama's rope_scaling as plain
    RoPE, as the bake's warning says: its logits are transformers' on the same weights with RoPE unscaled.
    Ministral 3 baked as Llama keeps its YaRN RoPE, which llama.cpp computes otherwise (the warning says so)."""
    import shutil

    src = tmp_path / "src"
    model = make_model(family, vocab_size=49152, bos_token_id=1, eos_token_id=2)
    model.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / name, src / name)
    recipe = bake(src, [Item(s, {}) for s in _steers("resid")], tmp_path / "hf", progress=False)
    assert ("llama.cpp" in recipe["written"].get("caveat", "")) == (family != "phi3")
    assert ("caveat" in recipe["written"]) == (family != "phi3")
    convert(tmp_path / "hf", tmp_path / "hf.gguf")
    got = logits(load(tmp_path / "hf.gguf"), IDS)
    want = hf_logits(tmp_path / "hf", [IDS])[0]
    if family == "ministral3":  # Llama with YaRN: the first position (no rotation) agrees, the rest do not
        assert np.abs(got[0] - want[0]).max() <= 1e-4 and np.abs(got - want).max() >= 0.1, np.abs(got - want).max()
    elif family == "phi3":
        assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
        assert np.abs(want - _hf_plain_and_hooked(model, IDS, [])[0]).max() >= 100 * 1e-4
    else:
        unscaled = hf_logits(long_rope_as_read(tmp_path / "hf", tmp_path / "plain", "plain"), [IDS])[0]
        assert np.abs(got - unscaled).max() <= 1e-4, np.abs(got - unscaled).max()
        assert np.abs(got - want).max() >= 0.1, np.abs(got - want).max()
