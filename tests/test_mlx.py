"""MLX-LM (CPU) runs bakes: its own loader and forward on the baked folder give transformers' logits.

Also the config trap: transformers 5 writes rope_theta only inside ``rope_parameters``, MLX-LM reads the
top-level key and falls back to 10000. A bake writes both forms (bakesteer/configs.py), so MLX-LM runs the
bake of a transformers-5 checkpoint with the right rotary base, while the source folder itself is off.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bakesteer.cli import main
from bakesteer.configs import for_every_reader
from tiny import HIDDEN, make_model

mx = pytest.importorskip("mlx.core", reason="MLX-LM runs on the CPU with `pip install 'mlx[cpu]' mlx-lm`")
mlx_utils = pytest.importorskip("mlx_lm.utils")

IDS = [[3, 17, 42, 8, 91, 5, 66, 23, 7, 12, 30, 2]]
TOL = 2e-4  # MLX's CPU float32 kernels against torch's on logits up to ~6 (measured ≤ 7.2e-6 at every site)
THETA = 500000.0  # not MLX-LM's fallback of 10000, so a lost rope_theta shows
# family -> exact sites MLX-LM builds the bias slots for (its Llama reads attention_bias and mlp_bias; Qwen2's
# q/k/v biases are native)
FAMILIES = {"llama": ["resid", "attn_in", "mlp_in", "attn_out", "mlp_out"], "qwen2": ["attn_in"]}


def _source(name: str, path):
    model = make_model(name)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": THETA}
    model.save_pretrained(path)
    assert "rope_theta" not in json.loads((path / "config.json").read_text())  # the transformers 5 form
    return path


def _mlx_logits(folder) -> np.ndarray:
    model, _ = mlx_utils.load_model(folder)
    return np.array(model(mx.array(IDS)).astype(mx.float32))


def _hf_logits(folder) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


@pytest.mark.parametrize("name,site", [(n, s) for n, sites in FAMILIES.items() for s in sites])
def test_mlx_runs_the_bake(tmp_path, name, site):
    src = _source(name, tmp_path / "src")
    v = tmp_path / "v.npy"
    np.save(v, np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))
    out = tmp_path / "baked"
    assert main(["bake", "--model", str(src), "--vector", str(v), "--layer", "1", "--site", site, "--coef", "2",
                 "-o", str(out), "-q"]) == 0
    assert json.loads((out / "config.json").read_text())["rope_theta"] == THETA

    want, got = _hf_logits(out), _mlx_logits(out)
    err = np.abs(got - want).max()
    assert err <= TOL, f"MLX-LM vs transformers on the bake: {err:.2e}"
    # the steer survives in MLX-LM: the bake against the source, both run by MLX-LM with the right rotary base
    fixed = tmp_path / "src_fixed"
    fixed.mkdir()
    for f in src.iterdir():
        (fixed / f.name).write_bytes(f.read_bytes())
    (fixed / "config.json").write_text(json.dumps(for_every_reader(json.loads((src / "config.json").read_text()))))
    effect = np.abs(got - _mlx_logits(fixed)).max()
    assert effect > 100 * TOL, f"the steer moved MLX-LM's logits by only {effect:.2e}"


def test_the_rope_theta_trap_is_real_and_fixed(tmp_path):
    """The transformers-5-only config misleads MLX-LM; the same weights with both forms do not."""
    src = _source("llama", tmp_path / "src")
    want = _hf_logits(src)
    trapped = np.abs(_mlx_logits(src) - want).max()
    assert trapped > 100 * TOL, f"MLX-LM read the transformers 5 config right ({trapped:.2e}): the trap is gone"
    (src / "config.json").write_text(json.dumps(for_every_reader(json.loads((src / "config.json").read_text()))))
    assert np.abs(_mlx_logits(src) - want).max() <= TOL
    assert np.abs(_hf_logits(src) - want).max() == 0  # transformers 5 reads rope_parameters first: unchanged


def test_mlx_runs_the_smollm2_bake(tmp_path, smollm2):
    """The real default model (its converted config in both forms), baked at resid: MLX-LM gives its logits."""
    out = tmp_path / "baked"
    assert main(["bake", "--model", str(smollm2), "--vector", "love.svec", "--layer", "5", "-o", str(out), "-q"]) == 0
    want, got = _hf_logits(out), _mlx_logits(out)
    err = np.abs(got - want).max()
    assert err <= 1e-3, f"MLX-LM vs transformers on the SmolLM2 bake: {err:.2e}"  # measured 1.4e-4, logits to 31
    effect = np.abs(got - _mlx_logits(smollm2)).max()
    assert effect > 100 * err, f"the steer moved MLX-LM's logits by only {effect:.2e}"
