"""verify as a streamed proof: bytes of untouched tensors, touched blocks on their real inputs, end to end;
tampering fails, bad input is one sentence."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from bakesteer.cli import main
from bakesteer.checkpoint import Checkpoint
from bakesteer.verify import verify

from bakesteer.arch import exact_sites
from tiny import CONFIGS, HIDDEN, make_model, save_char_tokenizer, save_model
from hostile_tools import refused


@pytest.fixture()
def baked(tmp_path):
    """A sharded tiny Llama with a tokenizer, baked at resid of block 1 (coef 4)."""
    make_model("llama").save_pretrained(tmp_path / "src", max_shard_size="60KB")
    save_char_tokenizer(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))
    assert main(["bake", "--model", str(tmp_path / "src"), "--vector", str(tmp_path / "v.npy"), "--layer", "1",
                 "--coef", "4", "-o", str(tmp_path / "out"), "-q"]) == 0
    return tmp_path / "out"


def _flip(path, offset: int, delta: int = 1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = (data[offset] + delta) % 256
    path.write_bytes(bytes(data))


def test_a_clean_bake_passes_every_part(baked):
    recipe, report = verify(baked, new_tokens=8, progress=False)
    assert report.passed and report.bytes.passed and report.bytes.tensors > 30
    assert [c.block for c in report.blocks] == [1] and report.blocks[0].effect > 100 * report.blocks[0].tolerance
    assert report.parts == ["bytes", "blocks (1 touched)", "end-to-end"]
    assert report.steering_effect > 100 * report.tolerance and report.greedy_match


def test_a_changed_byte_in_an_untouched_tensor_fails(baked, capsys):
    ck = Checkpoint(baked)
    key = "model.layers.2.mlp.up_proj.weight"
    info = ck.tensors[key]
    _flip(baked / info.shard, (info.start + info.end) // 2)
    capsys.readouterr()
    assert main(["verify", str(baked), "-q", "--new-tokens", "4"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  bytes: " in out and key in out


def test_a_changed_bias_in_a_touched_block_fails(baked, capsys):
    ck = Checkpoint(baked)
    key = "model.layers.1.mlp.down_proj.bias"
    info = ck.tensors[key]
    with safe_open(str(baked / info.shard), "np") as f:
        assert f.get_tensor(key).dtype == np.float32
    off = info.start + 4 * 3 + 2  # entry 3, a middle byte of its mantissa: far below the steer's own size
    _flip(baked / info.shard, off, 7)
    capsys.readouterr()
    assert main(["verify", str(baked), "-q", "--new-tokens", "4"]) == 1
    out = capsys.readouterr().out
    assert "PASS  bytes:" in out and "FAIL  blocks:" in out and "failing: 1" in out


def test_source_gone(baked, capsys):
    shutil.move(baked.parent / "src", baked.parent / "moved")
    refused(capsys, ["verify", str(baked), "-q"], "recorded in the bake is gone", baked.parent)


def test_source_changed_since_the_bake(baked, capsys):
    ck = Checkpoint(baked.parent / "src")
    info = ck.tensors["model.layers.3.self_attn.q_proj.weight"]
    _flip(baked.parent / "src" / info.shard, info.start + 5)
    refused(capsys, ["verify", str(baked), "-q"], "the source changed since the bake", baked.parent)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(baked, capsys):
    refused(capsys, ["verify", str(baked), "-q", "--device", "cuda"], "no CUDA device", baked.parent)


def test_a_shard_unreadable_mid_stream(baked, capsys, monkeypatch):
    from bakesteer import engine

    real, calls = engine.Model._read, []

    def flaky(self, key):
        calls.append(key)
        if ".layers.2." in key:  # after embeddings, blocks 0 and 1 were read
            raise engine.BakesteerError(f"cannot read {self.folder / self.ckpt.tensors[key].shard} (Input/output "
                                        "error); check the file and the disk, then run the command again.")
        return real(self, key)

    monkeypatch.setattr(engine.Model, "_read", flaky)
    refused(capsys, ["verify", str(baked), "-q"], "Input/output error", baked.parent)
    assert any(".layers.1." in k for k in calls)  # it failed mid-stream, not before reading anything


def test_a_truncated_read_is_one_sentence(baked, tmp_path):
    from bakesteer.engine import Model

    m = Model(baked)
    info = m.ckpt.tensors["model.layers.0.mlp.up_proj.weight"]
    with open(baked / info.shard, "r+b") as f:
        f.truncate(info.start + 8)
    with pytest.raises(Exception) as e:
        with m.part(0):
            pass
    assert "the file ended early" in str(e.value) and type(e.value).__name__ == "BakesteerError"


def test_verify_json_keeps_its_schema(baked):
    from bakesteer.schema import check_verification

    assert main(["verify", str(baked), "-q", "--new-tokens", "4"]) == 0
    doc = json.loads((baked / "bakesteer" / "verify.json").read_text())
    check_verification(doc)
    assert doc["parts"][0] == "bytes" and doc["bytes"]["passed"] and doc["blocks"][0]["block"] == 1


def test_no_tokenizer_is_refused_unless_random_prompts(baked, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (baked / name).unlink(missing_ok=True)
    refused(capsys, ["verify", str(baked), "-q"], "--random-prompts", baked.parent)
    assert main(["verify", str(baked), "-q", "--new-tokens", "4", "--random-prompts"]) == 0


def test_a_relabel_is_checked_block_by_block_over_the_whole_stack(tmp_path):
    make_model("qwen2").save_pretrained(tmp_path / "src")  # Qwen2 -> Llama for a resid bake
    save_char_tokenizer(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))
    assert main(["bake", "--model", str(tmp_path / "src"), "--vector", str(tmp_path / "v.npy"), "--layer", "2",
                 "--coef", "4", "-o", str(tmp_path / "out"), "-q"]) == 0
    recipe, report = verify(tmp_path / "out", new_tokens=4, progress=False)
    assert recipe["written"]["relabelled_from"] == "qwen2" and report.passed
    assert [c.block for c in report.blocks] == [0, 1, 2, 3]  # every block, as Llama against Qwen2
    assert [c.block for c in report.blocks if c.effect > 0] == [2]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bake_then_verify_passes_on_every_family(tmp_path, name, capsys):
    """The user's two commands on every family, at its last exact site (the block proof, the strength pass and
    the end-to-end comparison all run; OPT's MLP output is a (B*T, H) matrix, not (B, T, H))."""
    save_model(name, tmp_path / "src")
    save_char_tokenizer(tmp_path / "src")
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=HIDDEN))
    site = exact_sites(CONFIGS[name]().to_dict())[-1]
    assert main(["bake", "--model", str(tmp_path / "src"), "--vector", str(tmp_path / "v.npy"), "--layer", "1",
                 "--site", site, "--coef", "2", "-q", "-o", str(tmp_path / "out")]) == 0
    assert main(["verify", str(tmp_path / "out"), "-q", "--new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3 and "FAIL" not in out, out


def test_post_norm_resid_is_checked_over_its_block_and_the_next(tmp_path):
    """Post-norm OPT: resid of block 1 folds into block 2, so blocks 1-2 are one check; a bake that put it into
    block 1's fc2 bias (as for a pre-norm block) fails that check."""
    import dataclasses

    from bakesteer.arch import ARCHS, Site, variant
    from bakesteer.bake import Item, bake
    from bakesteer.hooks import Steer

    save_model("opt_post_norm", tmp_path / "src")
    save_char_tokenizer(tmp_path / "src")
    v = np.random.default_rng(0).normal(size=HIDDEN)
    bake(tmp_path / "src", [Item(Steer("resid", 1, v, 4.0), {})], tmp_path / "out", progress=False)
    _, report = verify(tmp_path / "out", new_tokens=4, progress=False)
    assert report.passed and [(c.block, c.last) for c in report.blocks] == [(1, 2)]
    assert report.blocks[0].effect > 100 * report.blocks[0].tolerance
    real = ARCHS["opt_post_norm"]
    wrong = dataclasses.replace(real, sites={**real.sites, "resid": Site("", ("fc2",), "direct")})
    with variant(wrong):
        bake(tmp_path / "src", [Item(Steer("resid", 1, v, 4.0), {})], tmp_path / "wrong", progress=False)
    _, report = verify(tmp_path / "wrong", new_tokens=4, progress=False)
    assert not report.passed and [(c.block, c.last, c.passed) for c in report.blocks] == [(1, 2, False)]
