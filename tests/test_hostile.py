"""Hostile and careless inputs: never write outside the output, never delete what bakesteer did not create,
never bake a wrong number silently.

Every refusal here is checked the same way (``hostile_tools.refused``): exit 2, one line on stderr, no
exception escaping, and every file under the test's folder (inputs, victims, the working folder) unchanged.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile_tools import (HIDDEN, join_header, refused, snapshot, split_header, write_gguf_model, write_model,
                           write_vector)

from bakesteer import checkpoint
from bakesteer.cli import main


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """A watched folder: a victim file, a vector, and the working folder ``work/``."""
    (tmp_path / "victim.txt").write_text("precious")
    write_vector(tmp_path / "v.npy")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def bake_argv(world: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return ["bake", "--model", str(src), "--vector", str(world / "v.npy"), "--layer", "1", "-o", str(out), "-q",
            *extra]


def baked(world: Path, sharded: bool = False, name: str = "bake", **kw) -> Path:
    src = world / "m" if (world / "m").exists() else write_model(world / "m", sharded=sharded, **kw)
    assert main(bake_argv(world, src, world / name)) == 0
    return world / name


def edit_recipe(folder: Path, change) -> None:
    path = folder / "bakesteer.json"
    recipe = json.loads(path.read_text())
    change(recipe)
    path.write_text(json.dumps(recipe))


# ---- arbitrary file writes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ABS", "../victim.txt", "sub/x.safetensors", 5, "", ".."])
def test_a_crafted_recipe_cannot_make_unbake_write_outside_its_output(world, capsys, name):
    bake = baked(world)
    name = str(world / "victim.txt") if name == "ABS" else name

    def aim(recipe):
        recipe["shards"] = {k: name for k in recipe["shards"]}
    edit_recipe(bake, aim)
    refused(capsys, ["unbake", str(bake), "-o", str(world / "restored")], "not a plain file name", world)


def test_a_crafted_recipe_cannot_name_an_output_shard_outside_the_bake(world, capsys):
    bake = baked(world)
    edit_recipe(bake, lambda r: r.update(shards={"../../victim.txt": "model.safetensors"}))
    refused(capsys, ["unbake", str(bake), "-o", str(world / "restored")], "not a plain file name", world)


@pytest.mark.parametrize("name", ["ABS", "../outside.safetensors", 7, None, "a/b.safetensors"])
def test_index_names_must_stay_inside_the_model_folder(world, capsys, name):
    src = write_model(world / "m", sharded=True)
    outside = world / "outside.safetensors"
    outside.write_bytes((src / "model-00001-of-00003.safetensors").read_bytes())
    index = json.loads((src / "model.safetensors.index.json").read_text())
    key = next(k for k, v in index["weight_map"].items() if v == "model-00001-of-00003.safetensors")
    index["weight_map"][key] = str(outside) if name == "ABS" else name
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(capsys, bake_argv(world, src, world / "out"), "not a plain file name", world)


def test_a_shard_symlinked_out_of_the_model_folder_is_refused(world, capsys):
    src = write_model(world / "m")
    (src / "model.safetensors").rename(world / "elsewhere.safetensors")
    (src / "model.safetensors").symlink_to(world / "elsewhere.safetensors")
    refused(capsys, bake_argv(world, src, world / "out"), "symlink to a file outside", world)


def test_files_linked_out_of_the_model_folder_are_not_copied_into_the_bake(world, capsys):
    src = write_model(world / "m")
    (src / "tokenizer.json").symlink_to(world / "victim.txt")  # would carry a private file into a pushed bake
    assert main(bake_argv(world, src, world / "out")) == 0
    assert not (world / "out" / "tokenizer.json").exists()
    assert "tokenizer.json" in json.loads((world / "out" / "bakesteer.json").read_text())["files_left_out"]


def test_push_refuses_a_symlink_out_of_the_folder(world, capsys):
    bake = baked(world)
    (bake / "notes.txt").symlink_to(world / "victim.txt")
    refused(capsys, ["push", str(bake), "--repo", "user/name", "--dry-run"], "outside", world)


# ---- data loss ---------------------------------------------------------------------------------------------

def test_an_ancestor_of_the_source_is_never_an_output(world, capsys):
    src = write_model(world / "proj" / "models" / "m")
    for out in (world / "proj", world / "proj" / "models"):
        refused(capsys, bake_argv(world, src, out, "--force"), "holds the input", world)


def test_an_ancestor_of_the_bake_is_never_the_unbake_output(world, capsys):
    bake = baked(world, name="deep/bake")
    refused(capsys, ["unbake", str(bake), "-o", str(world / "deep"), "--force"], "holds the input", world)
    refused(capsys, ["unbake", str(bake), "-o", str(bake), "--force"], "is the input", world)


def test_a_composed_bake_may_not_replace_the_original_source(world, capsys):
    src = write_model(world / "proj" / "m")
    assert main(bake_argv(world, src, world / "once")) == 0
    refused(capsys, bake_argv(world, world / "once", world / "proj", "--force"), "holds the input", world)


@pytest.mark.parametrize("out,match", [(".", "current folder"), ("..", "current folder"), ("/", "root")])
def test_the_working_folder_and_the_root_are_never_outputs(world, capsys, out, match):
    src = write_model(world / "m")
    refused(capsys, bake_argv(world, src, Path(out), "--force"), match, world)


def test_force_replaces_only_a_bakesteer_output_or_an_empty_folder(world, capsys):
    src = write_model(world / "m")
    (world / "notes").mkdir()
    (world / "notes" / "thesis.tex").write_text("years of work")
    refused(capsys, bake_argv(world, src, world / "notes", "--force"), "not a bakesteer output", world)
    (world / "afile").write_text("x")
    refused(capsys, bake_argv(world, src, world / "afile", "--force"), "is not a folder", world)
    (world / "alink").symlink_to(world / "notes")
    refused(capsys, bake_argv(world, src, world / "alink", "--force"), "is a symlink", world)
    (world / "dangling").symlink_to(world / "nowhere")
    refused(capsys, bake_argv(world, src, world / "dangling"), "dangling symlink", world)
    assert not [p for p in world.iterdir() if ".bakesteer-" in p.name]


def test_a_vector_file_output_follows_the_path_policy(world, capsys):
    """convert/extract outputs: never the input, a symlink or a folder; --force replaces only a vector file."""
    svec = world / "love.svec"
    assert main(["convert", str(world / "v.npy"), str(svec), "--site", "resid", "--layers", "1"]) == 0
    (world / "notes.txt").write_text("years of work")
    (world / "link.svec").symlink_to(world / "notes.txt")
    refused(capsys, ["convert", str(svec), str(svec), "--force"], "is the input", world)
    refused(capsys, ["convert", str(svec), str(world / "notes.txt"), "--to", "bakesteer", "--force"],
            "not a file bakesteer wrote", world)
    refused(capsys, ["convert", str(svec), str(world / "link.svec"), "--force"], "is a symlink", world)
    (world / "dir.svec").mkdir()
    refused(capsys, ["convert", str(svec), str(world / "dir.svec"), "--force"], "not a file bakesteer wrote", world)
    refused(capsys, ["extract", "--model", str(world), "--pos", "a", "--neg", "b", "-o", str(world / "x.svec"),
                     "--ibm", str(world / "x.svec")], "same file", world)
    assert main(["convert", str(svec), str(world / "again.svec")]) == 0
    assert main(["convert", str(world / "v.npy"), str(world / "again.svec"), "--site", "resid", "--layers", "1",
                 "--force"]) == 0


# ---- quietly wrong numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,vector,coef,match", [
    (np.float32, [1e39] + [0.0] * (HIDDEN - 1), "1", "overflows float32"),
    (np.float32, None, "1e39", "overflows float32"),
    (np.float16, None, "1e5", "largest coefficient that fits is about 6.4"),
])
def test_a_bias_that_overflows_its_dtype_is_refused_with_the_largest_safe_coefficient(world, capsys, dtype, vector,
                                                                                       coef, match):
    src = write_model(world / "m", dtype=dtype)
    write_vector(world / "v.npy", None if vector is None else np.asarray(vector, dtype=np.float64))
    refused(capsys, bake_argv(world, src, world / "out", "--coef", coef), match, world)


def test_a_complex_vector_is_refused_not_truncated_to_its_real_part(world, capsys):
    src = write_model(world / "m")
    np.save(world / "v.npy", np.ones(HIDDEN, dtype=np.complex64) * (1 + 2j))
    refused(capsys, bake_argv(world, src, world / "out"), "complex numbers", world)


def test_two_keys_naming_one_layer_are_refused_not_one_dropped(world, capsys):
    from safetensors.numpy import save_file

    src = write_model(world / "m")
    save_file({"layer.1": np.ones(HIDDEN, np.float32), "layer.01": -np.ones(HIDDEN, np.float32)},
              str(world / "v.safetensors"))
    argv = bake_argv(world, src, world / "out")
    argv[argv.index("--vector") + 1] = str(world / "v.safetensors")
    refused(capsys, argv, "both name layer 1", world)
    (world / "v.svec").write_text(json.dumps({"directions": {"2": [1.0] * HIDDEN, "02": [2.0] * HIDDEN}}))
    argv[argv.index("--vector") + 1] = str(world / "v.svec")
    refused(capsys, argv[:argv.index("--layer") + 1] + ["2"] + argv[argv.index("--layer") + 2:], "both name layer 2",
            world)


def test_a_through_fold_that_overflows_fp16_is_refused(world, capsys):
    src = write_model(world / "m", dtype=np.float16)
    refused(capsys, bake_argv(world, src, world / "out", "--site", "attn_in", "--coef", "1e5"), "overflows float16",
            world)


# ---- tampering ---------------------------------------------------------------------------------------------

def _flip(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["untouched shard", "config"])
def test_a_bake_changed_after_baking_is_refused_by_unbake_and_composition(world, capsys, what):
    bake = baked(world, sharded=True)
    recipe = json.loads((bake / "bakesteer.json").read_text())
    untouched = next(n for n, o in recipe["shards"].items() if o is not None)
    if what == "config":
        (bake / "config.json").write_text((bake / "config.json").read_text().replace('"rms_norm_eps": 1e-06',
                                                                                     '"rms_norm_eps": 0.1'))
    else:
        _flip(bake / untouched, -2)
    refused(capsys, ["unbake", str(bake), "-o", str(world / "restored"), "-q"], "changed after the bake", world)
    refused(capsys, bake_argv(world, bake, world / "again"), "changed after the bake", world)


def test_a_tampered_record_of_original_values_is_caught_by_the_source_hashes(world, capsys):
    from safetensors.numpy import load_file, save_file

    src = write_model(world / "m", sharded=True, biases=True)
    assert main(bake_argv(world, src, world / "bake", "--site", "attn_in")) == 0
    side = world / "bake" / "bakesteer" / "original_biases.safetensors"
    orig = load_file(str(side))
    assert len(orig) == 3  # the q/k/v biases of block 1 existed and were changed
    save_file({k: v + 1 for k, v in orig.items()}, str(side))
    refused(capsys, ["unbake", str(world / "bake"), "-o", str(world / "restored"), "-q"],
            "does not hash as the source", world)


def test_unbake_reports_the_hash_check(world, capsys):
    bake = baked(world, sharded=True)
    capsys.readouterr()
    assert main(["unbake", str(bake), "-o", str(world / "restored"), "-q"]) == 0
    assert "every shard hashes as the source's did at bake time" in capsys.readouterr().out
    assert sorted(os.listdir(world / "restored")) == sorted(os.listdir(world / "m"))
    assert all((world / "restored" / n).read_bytes() == (world / "m" / n).read_bytes() for n in os.listdir(world / "m"))


# ---- one sentence, not a traceback -------------------------------------------------------------------------

def _edit_header(src: Path, change) -> None:
    path = src / "model.safetensors"
    header, body = split_header(path.read_bytes())
    change(header)
    path.write_bytes(join_header(header, body))


def _overlap(h):
    a, b = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])[:2]
    h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + (h[b]["data_offsets"][1]
                                                                               - h[b]["data_offsets"][0])]


@pytest.mark.parametrize("change,match", [
    (lambda h: h["model.norm.weight"].pop("dtype"), "unknown dtype None"),
    (lambda h: h["model.norm.weight"].update(shape=[HIDDEN, 4]), "holds"),
    (lambda h: h["model.norm.weight"].update(dtype="F16"), "holds"),
    (lambda h: h["model.norm.weight"].update(dtype="Q4"), "unknown dtype"),
    (lambda h: h["model.norm.weight"].update(shape="16"), "invalid shape"),
    (lambda h: h["model.norm.weight"].update(data_offsets=[0, 10 ** 12]), "outside the data section"),
    (_overlap, "overlaps"),
    (lambda h: h.update(__metadata__=[1]), "__metadata__"),
    (lambda h: h.update(extra=5), "not an object"),
], ids=["no-dtype", "shape-vs-bytes", "dtype-vs-bytes", "unknown-dtype", "shape-type", "offsets", "overlap",
        "metadata", "entry-type"])
def test_every_header_entry_is_validated_even_those_the_bake_does_not_read(world, capsys, change, match):
    src = write_model(world / "m")
    _edit_header(src, change)
    refused(capsys, bake_argv(world, src, world / "out"), match, world)


@pytest.mark.parametrize("config,match", [([1, 2], "holds a JSON list"), ("{", "is not valid JSON")])
def test_a_config_that_is_not_an_object(world, capsys, config, match):
    src = write_model(world / "m")
    (src / "config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    refused(capsys, bake_argv(world, src, world / "out"), match, world)


@pytest.mark.parametrize("site,key,shape,match", [
    ("attn_in", "model.layers.1.self_attn.q_proj.weight", (HIDDEN, 8), "does not fit the hidden size"),
    ("resid", "model.layers.1.mlp.down_proj.weight", (HIDDEN,), "not a matrix"),
    ("attn_in", "model.layers.1.self_attn.k_proj.bias", (HIDDEN + 3,), "does not fit its weight's 16 outputs"),
])
def test_a_weight_or_bias_whose_shape_does_not_fit_the_config(world, capsys, site, key, shape, match):
    from safetensors.numpy import load_file, save_file

    src = write_model(world / "m", biases=True)
    ts = load_file(str(src / "model.safetensors"))
    ts[key] = np.zeros(shape, dtype=np.float32)
    save_file(ts, str(src / "model.safetensors"))
    refused(capsys, bake_argv(world, src, world / "out", "--site", site), match, world)


def test_a_fifo_and_a_symlink_loop_in_the_model_folder_are_left_out(world, capsys):
    src = write_model(world / "m")
    os.mkfifo(src / "pipe")
    (src / "loop").symlink_to(src / "loop")
    assert main(bake_argv(world, src, world / "out")) == 0  # no hang on the FIFO, no ELOOP traceback
    left = json.loads((world / "out" / "bakesteer.json").read_text())["files_left_out"]
    assert {"pipe", "loop"} <= set(left)


@pytest.mark.parametrize("err,match", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only"),
                                       (errno.EFBIG, "size limit"), (errno.ENOSPC, "no space left")])
def test_write_failures_are_one_sentence_and_leave_nothing(world, capsys, monkeypatch, err, match):
    src = write_model(world / "m")

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(checkpoint, "stream_copy", fail)
    monkeypatch.setattr(checkpoint, "copy_hashed", fail)
    refused(capsys, bake_argv(world, src, world / "out"), match, world)


def test_an_unwritable_parent_is_one_sentence(world, capsys, monkeypatch):
    src = write_model(world / "m")
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if "locked" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    refused(capsys, bake_argv(world, src, world / "locked" / "out"), "permission denied", world)


def test_permission_denied_is_not_called_corrupt(world, capsys, monkeypatch):
    src = write_model(world / "m")

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(checkpoint, "open", denied, raising=False)
    err = refused(capsys, bake_argv(world, src, world / "out"), "Permission denied", world)
    assert "corrupt" not in err


@pytest.mark.parametrize("damage,match", [
    (lambda b: (b / "bakesteer" / "vectors.safetensors").write_bytes(b"\x00" * 20), "damaged"),
    (lambda b: (b / "bakesteer.json").write_text("[1]"), "damaged"),
    (lambda b: edit_recipe(b, lambda r: r["steers"][0].update(layer="1")), "damaged"),
    (lambda b: edit_recipe(b, lambda r: r.pop("steers")), "damaged"),
    (lambda b: edit_recipe(b, lambda r: r["steers"][0].update(vector="steer.9")), "damaged"),
    (lambda b: edit_recipe(b, lambda r: r.update(sha256={"model.safetensors": "zz"})), "malformed hash"),
    (lambda b: (b / "bakesteer" / "original_config.json").unlink(), "damaged"),
], ids=["vectors-garbage", "recipe-list", "layer-string", "no-steers", "vector-name", "bad-hash", "no-config"])
def test_a_damaged_record_is_one_sentence(world, capsys, damage, match):
    bake = baked(world)
    damage(bake)
    refused(capsys, ["unbake", str(bake), "-o", str(world / "restored")], match, world)


def test_gguf_output_that_is_a_folder_or_foreign_file(world, capsys):
    pytest.importorskip("gguf")
    src = write_gguf_model(world / "m.gguf")
    (world / "dir.gguf").mkdir()
    base = ["bake", "--model", str(src), "--vector", str(world / "v.npy"), "--layer", "1", "-q"]
    refused(capsys, base + ["-o", str(world / "dir.gguf"), "--force"], "not a file bakesteer wrote", world)
    (world / "other.gguf").write_bytes(src.read_bytes())
    refused(capsys, base + ["-o", str(world / "other.gguf"), "--force"], "not a file bakesteer wrote", world)
    refused(capsys, base + ["-o", str(src), "--force"], "is the input", world)


def test_a_killed_gguf_bake_leaves_nothing_the_next_run_keeps(world, capsys):
    pytest.importorskip("gguf")
    src = write_gguf_model(world / "m.gguf")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = world / f".out.gguf.bakesteer-tmp-{int(dead.stdout)}.gguf"
    leftover.write_bytes(b"\0" * 1000)
    base = ["bake", "--model", str(src), "--vector", str(world / "v.npy"), "--layer", "1", "-q", "-o",
            str(world / "out.gguf")]
    assert main(base) == 0
    assert not leftover.exists()
    assert main(base + ["--coef", "2", "--force"]) == 0  # a GGUF bakesteer wrote may be replaced
    assert not [p for p in world.iterdir() if ".bakesteer-" in p.name]


@pytest.mark.parametrize("repo", ["a/b/c", "../x", "-bad/name", "user/na me"])
def test_push_refuses_an_invalid_repo_id(world, capsys, repo):
    bake = baked(world)
    refused(capsys, ["push", str(bake), f"--repo={repo}", "--dry-run"], "not a Hub id", world)


def _verified(bake: Path) -> None:
    (bake / "bakesteer" / "verify.json").write_text(json.dumps({"kind": "exact", "passed": True, "dtype": "float32",
                                                                "max_abs_diff": 1e-6, "tolerance": 1e-4,
                                                                "steering_effect": 3.0, "kl_hooked_baked": 0.0,
                                                                "kl_source_hooked": 0.5, "greedy_tokens": 64,
                                                                "greedy_match": True, "prompts": [], "sample": None}))


def test_push_without_a_network_is_one_sentence(world, capsys, monkeypatch):
    from huggingface_hub import constants

    bake = baked(world)
    _verified(bake)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    before = snapshot(world)
    capsys.readouterr()
    assert main(["push", str(bake), "--repo", "user/name", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bakesteer: error: the Hub could not be reached") and err.count("\n") == 1, err
    changed = {k for k in snapshot(world) if snapshot(world)[k] != before.get(k)}
    assert changed <= {str(bake / "README.md")}  # the card is written before the upload, nothing else


def test_push_dry_run_writes_nothing(world, capsys):
    bake = baked(world)
    _verified(bake)
    before = snapshot(world)
    assert main(["push", str(bake), "--repo", "user/name", "--dry-run", "-q"]) == 0
    assert "would upload" in capsys.readouterr().out
    assert snapshot(world) == before


def test_a_new_bias_shard_gets_the_mode_of_the_copied_shards(world):
    bake = baked(world)
    recipe = json.loads((bake / "bakesteer.json").read_text())
    modes = {o is None: (bake / n).stat().st_mode & 0o777 for n, o in recipe["shards"].items()}
    assert modes[True] == modes[False]


# ---- races and resources -----------------------------------------------------------------------------------

def test_concurrent_bakes_to_one_output_leave_exactly_one_winner(world):
    src = write_model(world / "m", sharded=True)
    argv = [sys.executable, "-m", "bakesteer", *bake_argv(world, src, world / "out")]
    procs = []
    for _ in range(6):
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}))
        time.sleep(0.05)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    winners = [r for r in results if r[0] == 0]
    assert len(winners) == 1, results
    assert all(code == 2 and err.count("\n") == 1 and "Traceback" not in err for code, err in results if code), results
    recipe = json.loads((world / "out" / "bakesteer.json").read_text())
    assert all((world / "out" / n).is_file() for n in recipe["sha256"])
    assert not [p for p in world.iterdir() if ".bakesteer-" in p.name]


def test_a_huge_layer_range_is_refused_before_it_is_expanded(world, capsys):
    src = write_model(world / "m")
    with pytest.raises(SystemExit) as e:  # argparse's own usage error: one line, exit 2
        main(["bake", "--model", str(src), "--vector", str(world / "v.npy"), "--layer", "0-100000000", "-o",
              str(world / "out")])
    assert e.value.code == 2 and "more than any model has" in capsys.readouterr().err


def test_a_hub_cache_snapshot_is_read_through_its_blob_links_and_its_blob_names_are_its_hashes(world, capsys):
    import hashlib

    src = write_model(world / "m", sharded=True)
    repo = world / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        f.rename(repo / "blobs" / sha)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / sha)
    assert main(bake_argv(world, snap, world / "out", "--link")) == 0
    recipe = json.loads((world / "out" / "bakesteer.json").read_text())
    for name, orig in recipe["shards"].items():
        if orig is not None:
            assert recipe["sha256"][name] == recipe["source"]["sha256"][orig] == (snap / orig).resolve().name
            assert hashlib.sha256((world / "out" / name).read_bytes()).hexdigest() == recipe["sha256"][name]
    assert main(["unbake", str(world / "out"), "-o", str(world / "restored"), "-q"]) == 0


@pytest.mark.parametrize("case", ["dotdot-name", "not-a-state-dict"])
def test_a_pytorch_bin_checkpoint_cannot_name_files_outside_or_hold_other_objects(world, capsys, case):
    import torch

    src = world / "bin"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(json.loads((write_model(world / "m") / "config.json").read_text())))
    torch.save({"model.norm.weight": torch.ones(HIDDEN)}, world / "outside.bin")
    if case == "dotdot-name":
        (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "../outside.bin"}}))
        match = "not a plain file name"
    else:
        torch.save([torch.ones(HIDDEN)], src / "pytorch_model.bin")
        match = "state dict of named tensors"
    refused(capsys, bake_argv(world, src, world / "out"), match, world)
