"""Bake at any size: streamed output equals the in-memory bake, unbake is bit-exact, failures leave nothing."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bakesteer.arch import ALWAYS, NEVER, exact_sites, find_arch
from bakesteer.bake import Item, bake
from bakesteer import checkpoint
from bakesteer.checkpoint import Checkpoint
from bakesteer.cli import main
from bakesteer.hooks import Steer
from bakesteer.inmemory import bake_model, to_numpy
from bakesteer.recipe import unbake
from helpers import refused
from tiny import CONFIGS, HIDDEN, make_model, save_model


def _items(site: str, layers=(0, 2), seed: int = 0) -> list[Item]:
    g = torch.Generator().manual_seed(seed)
    return [Item(Steer(site, L, torch.randn(HIDDEN, generator=g, dtype=torch.float64), 3.0), {}) for L in layers]


def _tensor_hashes(folder) -> dict[str, str]:
    ck = Checkpoint(folder)
    return {k: hashlib.sha256(ck.read(k).tobytes()).hexdigest() for k in ck.tensors}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit: same dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _file_hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


CASES = [(n, s) for n in CONFIGS for s in exact_sites(CONFIGS[n]().to_dict())]


@pytest.mark.parametrize("name,site", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_streamed_equals_in_memory_bit_for_bit(tmp_path, name, site):
    save_model(name, tmp_path / "src")
    items = _items(site)
    bake(tmp_path / "src", items, tmp_path / "streamed", progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    bake_model(model, items).save_pretrained(tmp_path / "memory")
    a, b = Checkpoint(tmp_path / "streamed"), Checkpoint(tmp_path / "memory")
    assert set(a.tensors) == set(b.tensors)
    assert all(_same(a.read(k), b.read(k)) for k in a.tensors)
    cfg_a = json.loads((tmp_path / "streamed" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "memory" / "config.json").read_text())
    slots = {s for s in find_arch(cfg_a).linears.values() if s not in (ALWAYS, NEVER)}  # the family's bias flags
    flags = lambda c: (c["model_type"], {f: bool(c.get(f)) for f in slots})  # noqa: E731
    assert flags(cfg_a) == flags(cfg_b)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unbake_is_bit_exact_for_every_family(tmp_path, name):
    """Two sites of every family (each exact one where there are fewer), unbaked: every file byte for byte."""
    save_model(name, tmp_path / "src")
    sites = exact_sites(CONFIGS[name]().to_dict())
    bake(tmp_path / "src", _items(sites[0], (1,)) + _items(sites[-1], (2,), seed=1), tmp_path / "baked",
         progress=False)
    assert _file_hashes(tmp_path / "baked") != _file_hashes(tmp_path / "src")
    unbake(tmp_path / "baked", tmp_path / "un")
    assert _file_hashes(tmp_path / "un") == _file_hashes(tmp_path / "src")


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("link", [False, True])
def test_unbake_restores_every_byte_after_one_and_two_bakes(tmp_path, sharded, link):
    model = make_model("qwen2")  # q/k/v biases exist (changed in place); o/MLP biases do not (added)
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB" if sharded else "5GB")
    assert (tmp_path / "src" / "model.safetensors.index.json").exists() == sharded
    src_files, src_tensors = _file_hashes(tmp_path / "src"), _tensor_hashes(tmp_path / "src")
    opt = {"progress": False, "link": link}
    bake(tmp_path / "src", _items("attn_in", (1,)) + _items("resid", (2,)), tmp_path / "once", **opt)
    bake(tmp_path / "once", _items("attn_in", (1, 3), seed=1) + _items("mlp_out", (0,)), tmp_path / "twice", **opt)
    rec = json.loads((tmp_path / "twice" / "bakesteer.json").read_text())
    assert rec["bakes"] == 2 and len(rec["steers"]) == 5 and rec["source"]["path"] == str((tmp_path / "src"))
    assert _tensor_hashes(tmp_path / "src") == src_tensors and _file_hashes(tmp_path / "src") == src_files
    for baked in ("once", "twice"):
        unbake(tmp_path / baked, tmp_path / f"un-{baked}", link=link)
        assert _tensor_hashes(tmp_path / f"un-{baked}") == src_tensors
        assert _file_hashes(tmp_path / f"un-{baked}") == src_files  # config, index and shards byte for byte
    assert main(["verify", str(tmp_path / "twice"), "-q", "--new-tokens", "8", "--random-prompts"]) == 0


def test_link_mode_hard_links_untouched_shards_only(tmp_path):
    make_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    bake(tmp_path / "src", _items("resid", (3,)), tmp_path / "out", progress=False, link=True)
    rec = json.loads((tmp_path / "out" / "bakesteer.json").read_text())
    for new, old in rec["shards"].items():
        same = os.stat(tmp_path / "out" / new).st_ino == (old and os.stat(tmp_path / "src" / old).st_ino)
        assert same == (old is not None), (new, old)  # every source shard linked; only the bias shard is new


def test_a_copy_without_the_kernel_copy_falls_back_mid_file_and_records_the_same_hashes(tmp_path, monkeypatch):
    make_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    bake(tmp_path / "src", _items("resid", (3,)), tmp_path / "kernel", progress=False)
    real, calls = os.copy_file_range, []

    def once_then_fail(src, dst, count, *a):  # the first chunk in the kernel, then EXDEV (another file system)
        calls.append(count)
        if len(calls) % 2 == 0:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst, min(count, 1000), *a)
    monkeypatch.setattr(os, "copy_file_range", once_then_fail)
    bake(tmp_path / "src", _items("resid", (3,)), tmp_path / "fallback", progress=False)
    assert calls  # the kernel copy was tried, and failed part-way through each file
    recs = [json.loads((tmp_path / d / "bakesteer.json").read_text()) for d in ("kernel", "fallback")]
    assert recs[0]["sha256"] == recs[1]["sha256"] and recs[0]["source"]["sha256"] == recs[1]["source"]["sha256"]
    weights = lambda d: {n: h for n, h in _file_hashes(tmp_path / d).items() if n != "bakesteer.json"}  # noqa: E731
    assert weights("fallback") == weights("kernel")  # (the recipes differ in their output path)
    shards = {n: hashlib.sha256((tmp_path / "fallback" / n).read_bytes()).hexdigest() for n in recs[1]["shards"]}
    assert all(recs[1]["sha256"][n] == h for n, h in shards.items())  # the recorded hashes are the files'


def test_a_killed_bake_leaves_no_output_and_the_next_run_cleans_up(tmp_path):
    from safetensors.torch import save_file

    save_model("llama", tmp_path / "src")
    np.save(tmp_path / "v.npy", np.ones(HIDDEN, dtype=np.float32))
    # make the copy slow enough to interrupt: a second, 1 GiB shard that the bake copies byte for byte
    save_file({"padding.weight": torch.zeros(256, 1024, 1024)}, str(tmp_path / "src" / "model-pad.safetensors"))
    weight_map = {k: "model.safetensors" for k in Checkpoint(tmp_path / "src").tensors}
    weight_map["padding.weight"] = "model-pad.safetensors"
    (tmp_path / "src" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cmd = [sys.executable, "-m", "bakesteer", "bake", "--model", str(tmp_path / "src"), "--vector",
           str(tmp_path / "v.npy"), "--layer", "1", "-o", str(tmp_path / "out"), "-q"]
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the copy is under way
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".out.bakesteer-tmp-")]
        if tmp and any(p.stat().st_size > 0 for p in tmp[0].iterdir()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if ".bakesteer-tmp-" in p.name]
    assert leftovers, "the kill came too late to test anything"
    assert subprocess.run(cmd).returncode == 0
    assert (tmp_path / "out" / "bakesteer.json").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".bakesteer-" in p.name]


@pytest.fixture
def sharded(tmp_path):
    make_model("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    np.save(tmp_path / "v.npy", np.ones(HIDDEN, dtype=np.float32))
    return tmp_path / "src", ["--vector", str(tmp_path / "v.npy"), "--layer", "1", "-o", str(tmp_path / "out"), "-q"]


def test_missing_shard(sharded, capsys):
    src, rest = sharded
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    refused(capsys, ["bake", "--model", str(src), *rest], f"names {shard.name} but the file is missing",
            src.parent)


def test_index_that_names_a_missing_file(sharded, capsys):
    src, rest = sharded
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-99999-of-99999.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(capsys, ["bake", "--model", str(src), *rest], "model-99999-of-99999.safetensors", src.parent)


@pytest.mark.parametrize("damage", ["truncated-header", "truncated-data", "garbage-header"])
def test_corrupt_shard(sharded, capsys, damage):
    src, rest = sharded
    shard = sorted(src.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    shard.write_bytes({"truncated-header": data[: 8 + n // 2], "truncated-data": data[: 8 + n + 10],
                       "garbage-header": data[:8] + b"\xff" * n + data[8 + n:]}[damage])
    refused(capsys, ["bake", "--model", str(src), *rest], "is truncated or corrupt", src.parent)


def test_weights_the_fold_cannot_handle(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    save_model("llama", tmp_path / "src")
    path = tmp_path / "src" / "model.safetensors"
    t = load_file(str(path))
    t["model.layers.1.self_attn.q_proj.weight"] = t["model.layers.1.self_attn.q_proj.weight"].to(torch.float8_e4m3fn)
    save_file(t, str(path))
    np.save(tmp_path / "v.npy", np.ones(HIDDEN, dtype=np.float32))
    refused(capsys, ["bake", "--model", str(tmp_path / "src"), "--vector", str(tmp_path / "v.npy"), "--layer", "1",
                     "--site", "attn_in", "-o", str(tmp_path / "out")], "is stored as F8_E4M3", tmp_path)


def test_disk_full_is_one_sentence_and_leaves_nothing(sharded, capsys, monkeypatch):
    src, rest = sharded
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_patched", full)  # the first chunk of the first shard fails to be written
    monkeypatch.setattr(checkpoint.os, "copy_file_range", full)  # and so does an untouched shard's kernel copy
    refused(capsys, ["bake", "--model", str(src), *rest], "no space left on the device", src.parent)


def test_unbake_refuses_a_folder_that_is_not_a_bake(sharded, capsys):
    src, _ = sharded
    refused(capsys, ["unbake", str(src), "-o", str(src.parent / "out")], "has no bakesteer.json", src.parent)


@pytest.mark.parametrize("shard_size", ["5GB", "40KB"])
def test_pytorch_bin_checkpoint_is_read_safely_and_written_as_safetensors(tmp_path, shard_size):
    model = make_model("llama")
    model.config.tie_word_embeddings = True  # tied tensors share storage in a .bin file
    model.tie_weights()
    model.save_pretrained(tmp_path / "st", max_shard_size=shard_size)
    state = Checkpoint(tmp_path / "st")
    if shard_size == "5GB":  # write the .bin files by hand: one pickle, tied weights sharing storage
        (tmp_path / "bin").mkdir()
        torch.save(dict(model.state_dict()), tmp_path / "bin" / "pytorch_model.bin")
    else:
        (tmp_path / "bin").mkdir()
        index = {"metadata": {}, "weight_map": {}}
        for i, shard in enumerate(sorted(state.shard_meta)):
            name = f"pytorch_model-{i + 1:05d}-of-{len(state.shard_meta):05d}.bin"
            keys = [k for k, info in state.tensors.items() if info.shard == shard]
            torch.save({k: model.state_dict()[k].clone() for k in keys}, tmp_path / "bin" / name)
            index["weight_map"].update({k: name for k in keys})
        (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (tmp_path / "bin" / "config.json").write_bytes((tmp_path / "st" / "config.json").read_bytes())
    items = _items("resid", (1, 2))
    bake(tmp_path / "st", items, tmp_path / "from-st", progress=False)
    rec = bake(tmp_path / "bin", items, tmp_path / "from-bin", progress=False)
    assert "pytorch .bin" in rec["source"]["format"] and "pytorch_model" not in " ".join(rec["shards"])
    a, b = Checkpoint(tmp_path / "from-st"), Checkpoint(tmp_path / "from-bin")
    shared = set(a.tensors) & set(b.tensors)
    assert set(a.tensors) - shared <= {"lm_head.weight"} and set(b.tensors) - shared <= {"lm_head.weight"}
    assert all(_same(a.read(k), b.read(k)) for k in shared)
    baked, info = AutoModelForCausalLM.from_pretrained(tmp_path / "from-bin", output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert not [p for p in tmp_path.iterdir() if ".bakesteer-" in p.name]  # the conversion folder is gone
    unbake(tmp_path / "from-bin", tmp_path / "restored")
    r = Checkpoint(tmp_path / "restored")
    assert all(_same(r.read(k), to_numpy(model.state_dict()[k])) for k in r.tensors)


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    save_model("llama", tmp_path / "st")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_bytes((tmp_path / "st" / "config.json").read_bytes())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(pickle.dumps({"model.norm.weight": Boom()}))
    np.save(tmp_path / "v.npy", np.ones(HIDDEN, dtype=np.float32))
    monkey_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        refused(capsys, ["bake", "--model", str(tmp_path / "bin"), "--vector", str(tmp_path / "v.npy"), "--layer",
                         "1", "-o", str(tmp_path / "out"), "-q"], "could not be read safely", tmp_path)
    finally:
        os.chdir(monkey_cwd)
    assert not (tmp_path / "PWNED").exists()
