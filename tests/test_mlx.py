"""MLX-LM (CPU) runs bakes: its own loader (``mlx_lm.utils.load_model``) and forward on the baked folder, against
transformers, for every family of bakesteer's table at every exact site (the table's MLX-LM column, measured).

Read from mlx-lm 0.32.2 (models/*.py, utils.py) and mlx 0.32.4 (nn/layers/base.py ``Module.load_weights``):
- load_model calls ``load_weights(strict=True)``: a tensor the model was not built with is an error
  ("Received N parameters not in model"). Qwen3, Gemma, Gemma2 and Gemma3 (gemma3_text) build every q/k/v/o
  with ``bias=False`` hard-coded: a bake of any of them is refused, while the unbaked source runs.
- Llama (Mistral is remapped to it), Granite and OLMo2 build q/k/v/o and MLP with ``bias=attention_bias`` /
  ``mlp_bias`` from the config; Qwen2's q/k/v biases are native (its other bakes are relabelled to Llama).
- GPT-2 and GPT-NeoX build every bias, but refuse what transformers 5 writes before reading any bias: GPT-2's
  ModelArgs requires ``n_ctx`` (no longer written) and its sanitize expects the keys without the ``transformer.``
  prefix save_pretrained writes; GPT-NeoX's requires ``rotary_pct`` and ``rotary_emb_base`` (now inside
  ``rope_parameters``). A bake writes those keys under their old names too (the table's ``legacy`` keys), so
  GPT-NeoX bakes run; GPT-2 bakes of a transformers-5 checkpoint still fail on the key prefix.
No family lacks an MLX-LM model, and none loads a bias to ignore it.

Also the config trap: transformers 5 writes rope_theta only inside ``rope_parameters``, MLX-LM's Llama reads the
top-level key and falls back to 10000. A bake writes both forms (bakesteer/configs.py): MLX-LM runs it right.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bakesteer.arch import ARCHS, INSIDE_WRAPPERS, exact_sites
from bakesteer.bake import Item, bake
from bakesteer.configs import for_every_reader
from bakesteer.hooks import Steer
from helpers import hf_logits as _hf
from helpers import max_diff as _max
from helpers import long_rope_as_read, runtime_runs_the_smollm2_bake, the_table_says
from tiny import CONFIGS, HIDDEN, LAYERS, make_model

mx = pytest.importorskip("mlx.core", reason="MLX-LM runs on the CPU with `pip install 'mlx[cpu]' mlx-lm`")
mlx_utils = pytest.importorskip("mlx_lm.utils")

IDS = [3, 17, 42, 8, 91, 5, 66, 23, 7, 12, 30, 2]
TOL = 1e-4  # MLX's CPU float32 kernels against torch's on logits up to ~6: measured <= 8.1e-6 in every cell
SMOL_TOL = 2e-3  # the same on SmolLM2-135M, logits up to ~30: measured <= 1.6e-4 (tests/test_llamacpp.py's bound)
GEMMA_TOL = 5e-3  # MLX-LM's Gemma MLP uses exact GELU, transformers' the tanh form: 1.8e-3 on the tiny source
THETA = 500000.0  # not MLX-LM's fallback of 10000, so a lost rope_theta shows
PROMPTS = ["I hate you because", "The weather today is", "Write a short note to a colleague."]
# every bias group a bake writes runs in MLX-LM (Mistral bakes, and Qwen2 bakes outside q/k/v, are written as Llama)
KEPT = ["llama", "granite", "mistral", "ministral3", "phi3", "qwen2", "olmo2", "gpt_neox", "phi", "smollm3",
        "starcoder2", "gptj", "cohere", "cohere2", "olmo3", "qwen2_moe", "olmoe", "glm4", "deepseek_v3", "seed_oss",
        "granitemoe"]
# strict load: the q/k/v/o biases are "not in model"
REFUSED = ["qwen3", "gemma", "gemma2", "gemma3", "qwen3_moe", "llama4_text"]
_GPT2_KEYS = (ValueError, r"parameters not in model: \nmodel\.transformer\.h\.0\.")
FAMILY_REFUSED = {"gpt2": [_GPT2_KEYS]}
NO_MODEL: list[str] = ["opt", "opt_post_norm", "granite_swa"]  # families MLX-LM has no model for
# read in the released layout only: GPT-OSS's sanitize splits MXFP4-packed experts (``*_blocks``/``*_scales``); the
# unpacked (E, in, out) experts transformers saves are renamed without ".weight" and refused as not in the model
PACKED_ONLY = ["gpt_oss"]
# MLX-LM limits unrelated to biases, kept out of the way: Gemma and Gemma2 always tie the output embedding (as the
# real models do), Gemma2 has no sliding window (1.9 off with a window of 8), Gemma3's masks take block 5 (fewer
# blocks: IndexError), GPT-NeoX builds a 4x MLP whatever intermediate_size says and uses the tanh GELU (1.7e-3
# off transformers' default exact GELU), StarCoder2 uses the exact GELU (1.3e-3 off its default tanh form), Cohere
# and Cohere2 always tie the output embedding (as the released models do), Llama 4 text has no MoE blocks there
FIT = {"gemma": dict(tie_word_embeddings=True), "gemma2": dict(tie_word_embeddings=True, sliding_window=64),
       "gemma3": dict(num_hidden_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"]),
       "gpt_neox": dict(intermediate_size=4 * HIDDEN, hidden_act="gelu_new"), "starcoder2": dict(hidden_act="gelu"),
       "cohere": dict(tie_word_embeddings=True), "cohere2": dict(tie_word_embeddings=True),
       # MLX-LM's llama4_text is the dense, tied form (MobileLLM-R1, RoPE in every block; MLX-LM also norms q/k in a
       # NoPE block, transformers does not: 0.51 off there); Llama 4's MoE decoder is in its llama4 wrapper
       "llama4_text": dict(moe_layers=[], tie_word_embeddings=True, no_rope_layers=[1] * LAYERS)}


def _sites(names) -> list[tuple[str, str]]:
    return [(n, s) for n in names for s in exact_sites(CONFIGS[n]().to_dict())]


def _edit_config(folder: Path, edit) -> None:
    (folder / "config.json").write_text(json.dumps(edit(json.loads((folder / "config.json").read_text()))))


def _unprefixed(folder: Path) -> None:
    for f in folder.glob("model*.safetensors"):
        weights = load_file(f)
        save_file({k.removeprefix("transformer."): v for k, v in weights.items()}, f, metadata={"format": "pt"})


def _keys(folder: Path) -> set[str]:
    return {k for f in folder.glob("model*.safetensors") for k in load_file(f)}


FIXES = {"gpt2": [_unprefixed]}  # one per refusal in FAMILY_REFUSED, in order


def _mlx(folder: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    model, _ = mlx_utils.load_model(folder)
    return [np.array(model(mx.array([ids])).astype(mx.float32))[0].astype(np.float64) for ids in prompts]


def _save(name: str, path: Path) -> Path:
    """The tiny model as transformers 5 writes it, rope_theta only inside ``rope_parameters`` (set to THETA)."""
    model = make_model(name, **FIT.get(name, {}))
    rope = getattr(model.config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        rope["rope_theta"] = THETA
    model.save_pretrained(path)
    return path


def _readable(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with its config in both forms."""
    _edit_config(shutil.copytree(src, dst), for_every_reader)
    return dst


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """family -> (source folder, MLX-LM's logits of it read right), built once: a copy with both config forms
    (and the family's refusals fixed) is what MLX-LM runs."""
    made: dict[str, tuple[Path, list[np.ndarray]]] = {}

    def get(name: str) -> tuple[Path, list[np.ndarray]]:
        if name not in made:
            src = _save(name, tmp_path_factory.mktemp(name) / "src")
            readable = _readable(src, src.with_name("readable"))
            for fix in FIXES.get(name, []):
                fix(readable)
            made[name] = (src, _mlx(readable, [IDS]))
        return made[name]
    return get


def _tiny_bake(src: Path, site: str, out: Path) -> Path:
    bake(src, [Item(Steer(site, 1, np.random.default_rng(0).normal(size=HIDDEN), 2.0), {})], out, progress=False)
    cfg, was = (json.loads((f / "config.json").read_text()) for f in (out, src))
    assert cfg.get("rope_theta") == for_every_reader(was).get("rope_theta")  # both forms: MLX-LM reads the base
    return out


def test_every_table_family_has_a_verdict_and_the_table_agrees():
    """A family added to bakesteer's table must be run here, or its refusal shown; MLX-LM has a model for all."""
    lists = [set(KEPT), set(REFUSED), set(FAMILY_REFUSED), set(NO_MODEL), set(PACKED_ONLY)]
    families = set(ARCHS) - set(INSIDE_WRAPPERS)
    assert set().union(*lists) == families and sum(map(len, lists)) == len(families)
    for name, arch in ((n, ARCHS[n]) for n in sorted(families)):
        for model_type in arch.model_types:
            with pytest.raises(ValueError, match="not supported") if name in NO_MODEL else contextlib.nullcontext():
                mlx_utils._get_classes({"model_type": model_type})
    the_table_says("MLX-LM", {**{f: "yes" for f in [*KEPT, *PACKED_ONLY]},
                              **{f: "refused" for f in [*REFUSED, *FAMILY_REFUSED]},
                              **{f: "refused" for f in NO_MODEL}})


@pytest.mark.parametrize("name,site", _sites(KEPT + list(FAMILY_REFUSED)))
def test_mlx_runs_the_bake(tmp_path, source, name, site):
    src, plain = source(name)
    out = _tiny_bake(src, site, tmp_path / "baked")
    want = _hf(out, [IDS])
    for fix in FIXES.get(name, []):
        fix(out)
    got = _mlx(out, [IDS])
    err = _max(got, want)
    assert err <= TOL, f"MLX-LM vs transformers on the {name} {site} bake: {err:.2e}"
    effect = _max(got, plain)  # the bake against the source, both run by MLX-LM with the right rotary base
    assert effect >= 100 * TOL, f"the steer moved MLX-LM's logits by only {effect:.2e}"


@pytest.mark.parametrize("name,site", _sites(REFUSED))
def test_mlx_refuses_the_bias(tmp_path, source, name, site):
    """The unbaked source runs in MLX-LM as in transformers; the bake is refused, naming exactly the bias tensors
    it added (an attn_in or attn_out bake switches attention_bias on: q/k/v/o of every block)."""
    src, plain = source(name)
    assert _max(plain, _hf(src, [IDS])) <= (GEMMA_TOL if name == "gemma" else TOL)
    out = _tiny_bake(src, site, tmp_path / "baked")
    added = _keys(out) - _keys(src)
    assert added and all(k.endswith("_proj.bias") for k in added)
    with pytest.raises(ValueError, match=r"parameters not in model") as refusal:
        mlx_utils.load_model(out)
    named = set(str(refusal.value).split(": \n", 1)[1].rstrip(".").split(",\n"))
    assert named == added, f"MLX-LM refused {sorted(named - added)} beyond the added biases"


@pytest.mark.parametrize("name", sorted(FAMILY_REFUSED))
def test_mlx_refuses_the_family_as_transformers_5_writes_it(tmp_path, source, name):
    """Refused before any bias is read, unbaked source included; each refusal goes once its old name is back."""
    src, _ = source(name)
    for folder in (_readable(src, tmp_path / "src"), _tiny_bake(src, "resid", tmp_path / "baked")):
        want = _hf(folder, [IDS])
        for (error, match), fix in zip(FAMILY_REFUSED[name], FIXES[name]):
            with pytest.raises(error, match=match):
                mlx_utils.load_model(folder)
            fix(folder)
        assert _max(_mlx(folder, [IDS]), want) <= TOL


# MLX-LM, like llama.cpp, always truncates YaRN's correction range (GPT-OSS's released configs switch it off:
# 0.06 logits off on the tiny model, baked or not); the tiny GPT-OSS here has it on
_YARN_TRUNCATED = {"gpt_oss": dict(rope_parameters={**CONFIGS["gpt_oss"]().rope_parameters, "truncate": True})}


@pytest.fixture(scope="module")
def packed_source(tmp_path_factory):
    from tiny import save_packed_gpt_oss

    made: dict[str, tuple[Path, list[np.ndarray]]] = {}

    def get(name: str) -> tuple[Path, list[np.ndarray]]:
        if name not in made:
            src = tmp_path_factory.mktemp(name) / "src"
            save_packed_gpt_oss(src, **_YARN_TRUNCATED[name])
            readable = _readable(src, src.with_name("readable"))
            made[name] = (src, _mlx(readable, [IDS]))
        return made[name]
    return get


@pytest.mark.parametrize("name,site", _sites(PACKED_ONLY))
def test_mlx_runs_the_bake_of_a_packed_checkpoint(tmp_path, packed_source, name, site):
    src, plain = packed_source(name)
    out = _tiny_bake(src, site, tmp_path / "baked")
    got, want = _mlx(out, [IDS]), _hf(out, [IDS])
    assert _max(got, want) <= TOL, f"MLX-LM vs transformers on the packed {name} {site} bake: {_max(got, want):.2e}"
    assert _max(got, plain) >= 100 * TOL, f"the steer moved MLX-LM's logits by only {_max(got, plain):.2e}"


@pytest.mark.parametrize("name", PACKED_ONLY)
def test_mlx_refuses_the_family_saved_unpacked(tmp_path, name):
    src = _readable(_save(name, tmp_path / "plain"), tmp_path / "src")
    for folder in (src, _tiny_bake(src, "resid", tmp_path / "baked")):
        with pytest.raises(ValueError, match="parameters not in model"):
            mlx_utils.load_model(folder)


def test_the_rope_theta_trap_is_real_and_fixed(tmp_path):
    """The transformers-5-only config misleads MLX-LM; the same weights with both forms do not."""
    src = _save("llama", tmp_path / "src")
    want = _hf(src, [IDS])
    trapped = _max(_mlx(src, [IDS]), want)
    assert trapped > 100 * TOL, f"MLX-LM read the transformers 5 config right ({trapped:.2e}): the trap is gone"
    _edit_config(src, for_every_reader)
    assert _max(_mlx(src, [IDS]), want) <= TOL
    assert _max(_hf(src, [IDS]), want) == 0  # transformers 5 reads rope_parameters first: unchanged


@pytest.fixture(scope="module")
def smol_plain(smollm2, smollm2_tok) -> list[np.ndarray]:
    return _mlx(smollm2, [smollm2_tok(p)["input_ids"] for p in PROMPTS])


@pytest.mark.parametrize("site", ["resid", "attn_in"])
def test_mlx_runs_the_smollm2_bake(tmp_path, smollm2, smollm2_tok, smol_plain, site):
    """The real default model (its converted config in both forms) with the bundled love vector at block 5 (as
    tests/test_llamacpp.py): MLX-LM gives transformers' logits, and the steer moves them."""
    prompts = [smollm2_tok(p)["input_ids"] for p in PROMPTS]
    runtime_runs_the_smollm2_bake("MLX-LM", _mlx, _hf, smollm2, prompts, smol_plain, site, tmp_path / "baked",
                                  SMOL_TOL)


@pytest.mark.parametrize("name,error", [("gpt_neox", "'rotary_emb_base'"), ("gpt2", "'n_ctx'")])
def test_older_key_names_are_written_for_older_readers(tmp_path, name, error):
    """MLX-LM wants GPT-NeoX's rotary_emb_base/rotary_pct and GPT-2's n_ctx, which transformers 5 does not write; a
    bake (and ``for_every_reader``) writes them beside the new keys (GPT-2 then fails only on its key prefix)."""
    src = _save(name, tmp_path / "src")
    with pytest.raises(TypeError, match=error):
        mlx_utils.load_model(src)
    _edit_config(src, for_every_reader)
    if name == "gpt2":
        with pytest.raises(_GPT2_KEYS[0], match=_GPT2_KEYS[1]):
            mlx_utils.load_model(src)
    else:
        assert _max(_mlx(src, [IDS]), _hf(src, [IDS])) <= TOL


def test_mlx_reads_a_long_rope_llama_with_the_long_factors_at_every_length(tmp_path):
    """A long-rope Phi-3 baked as Llama: MLX-LM's Llama applies the long factors below
    original_max_position_embeddings too (its SuScaledRoPE never reads short_factor), as the bake's warning says."""
    src = _save("phi3_longrope", tmp_path / "src")
    out = _tiny_bake(src, "resid", tmp_path / "baked")
    got = _mlx(out, [IDS])
    assert _max(got, _hf(long_rope_as_read(out, tmp_path / "long", "long"), [IDS])) <= TOL
    assert _max(got, _hf(out, [IDS])) >= 0.1
