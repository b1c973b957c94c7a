"""GPT-OSS stored as released: experts MXFP4-packed (``*_blocks``/``*_scales``), everything else unpacked.

A bake at resid (or attn_*, mlp_out) reads no expert weight and leaves every packed byte as it was; a bake at mlp_in
decodes each expert's gate_up weight to fold through it. Both load with plain from_pretrained (which decodes the
experts on a CPU) and equal hook steering of the source.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import bakesteer.experts
from bakesteer.bake import Item, bake
from bakesteer.cli import main
from bakesteer.hooks import Steer
from oracle import steered
from tiny import HIDDEN, VOCAB, save_packed_gpt_oss

TOL = 1e-4
IDS = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]  # E2M1 codes


def _decode(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 as the OCP spec has it, written here: (E, out, G, 16) bytes, low nibble first, times 2^(scale-127)
    per 32 values -> (E, in, out) float64."""
    lut = np.array(FP4)
    vals = np.stack([lut[blocks & 0x0F], lut[blocks >> 4]], axis=-1).reshape(*blocks.shape[:-1], 32)
    w = vals * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return w.reshape(*blocks.shape[:2], -1).transpose(0, 2, 1)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt_oss")
    save_packed_gpt_oss(root / "mx")
    return root


def _load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _vectors() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {layer: torch.randn(HIDDEN, generator=g, dtype=torch.float64) for layer in (1, 3)}


def _tensors(path) -> dict[str, np.ndarray]:
    with safe_open(path / "model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@torch.inference_mode()
def _check_equals_hooks(root, site: str, out: str) -> None:
    source, vecs = _load(root / "mx"), _vectors()
    baked = _load(root / out)
    with steered(source, "gpt_oss", site, vecs, 4.0):
        hooked = source(IDS).logits
    diff = float((baked(IDS).logits - hooked).abs().max())
    effect = float((hooked - source(IDS).logits).abs().max())
    assert diff <= TOL, f"baked vs hooked max |Δ| = {diff}"
    assert effect >= 100 * TOL, f"the steer moved the logits by only {effect}"


def test_a_resid_bake_never_decodes_an_expert_and_leaves_every_packed_byte(packed, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an expert weight was decoded")

    monkeypatch.setattr(bakesteer.experts, "_decoded", refuse)
    bake(packed / "mx", [Item(Steer("resid", L, v, 4.0), {}) for L, v in _vectors().items()], packed / "resid",
         progress=False)
    monkeypatch.undo()
    before, after = _tensors(packed / "mx"), _tensors(packed / "resid")
    assert set(before) == set(after)
    changed = sorted(k for k in before if before[k].tobytes() != after[k].tobytes())
    assert changed == [f"model.layers.{L}.mlp.experts.down_proj_bias" for L in (1, 3)]
    assert sum(k.endswith(("_blocks", "_scales")) for k in before) == 2 * 2 * 4  # the packed bytes compared above
    assert json.loads((packed / "resid" / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    _check_equals_hooks(packed, "resid", "resid")


def test_an_mlp_in_bake_folds_through_each_decoded_expert(packed):
    vecs = _vectors()
    bake(packed / "mx", [Item(Steer("mlp_in", L, v, 4.0), {}) for L, v in vecs.items()], packed / "mlp_in",
         progress=False)
    before, after = _tensors(packed / "mx"), _tensors(packed / "mlp_in")
    for L, v in vecs.items():
        key = f"model.layers.{L}.mlp.experts.gate_up_proj"
        w = _decode(before[key + "_blocks"], before[key + "_scales"])  # (E, in, out)
        want = before[key + "_bias"].astype(np.float64) + 4.0 * np.einsum("i,eio->eo", v.numpy(), w)
        np.testing.assert_allclose(after[key + "_bias"], want, rtol=1e-6, atol=1e-6)
        assert after[key + "_blocks"].tobytes() == before[key + "_blocks"].tobytes()
    _check_equals_hooks(packed, "mlp_in", "mlp_in")


def test_the_cli_verifies_a_packed_bake_block_by_block(packed, capsys):
    vec = packed / "v.npy"
    np.save(vec, _vectors()[1].numpy())
    out = packed / "cli"
    assert main(["bake", "--model", str(packed / "mx"), "--vector", str(vec), "--layer", "1", "--site", "mlp_in",
                 "--coef", "4", "-o", str(out)]) == 0
    assert main(["verify", str(out), "--random-prompts"]) == 0, capsys.readouterr()
    assert "PASS" in capsys.readouterr().out
