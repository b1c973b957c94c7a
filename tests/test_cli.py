"""The command line: bad input ends in one sentence, exit 2, no traceback, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, BloomConfig

from bakesteer.cli import main
from helpers import refused
from tiny import HIDDEN, LAYERS, save_model


@pytest.fixture
def llama_dir(tmp_path):
    save_model("llama", tmp_path / "llama")
    return tmp_path / "llama"


def _vec(path, values) -> str:
    np.save(path, np.asarray(values, dtype=np.float32))
    return str(path)


def test_hidden_size_mismatch(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN + 1))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(tmp_path / "o")],
             "hidden size is 64", tmp_path / "o", tmp_path)


def test_layer_out_of_range(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "4", "-o", str(tmp_path / "o")],
             "layer 4 is out of range; this model has blocks 0 to 3", tmp_path / "o", tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_the_vector(tmp_path, llama_dir, capsys, bad):
    v = _vec(tmp_path / "v.npy", [bad] + [0.0] * (HIDDEN - 1))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(tmp_path / "o")],
             "NaN or infinite", tmp_path / "o", tmp_path)


def test_nan_coefficient(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "--coef", "nan",
                      "-o", str(tmp_path / "o")], "not a finite number", tmp_path / "o", tmp_path)


def test_unsupported_architecture(tmp_path, capsys):
    cfg = BloomConfig(vocab_size=96, hidden_size=HIDDEN, n_layer=2, n_head=4)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "bloom")
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(tmp_path / "bloom"), "--vector", v, "--layer", "1",
                      "-o", str(tmp_path / "o")], "model_type 'bloom' is not supported", tmp_path / "o", tmp_path)


def test_post_norm_opt_resid_of_the_last_block_is_refused_and_the_block_before_bakes(tmp_path, capsys):
    """OPT-350m's post-norm blocks: resid of block L folds into block L+1, so the last block has no slot."""
    save_model("opt_post_norm", tmp_path / "opt")
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    last = LAYERS - 1
    refused(capsys, ["bake", "--model", str(tmp_path / "opt"), "--vector", v, "--layer", str(last),
                      "-o", str(tmp_path / "o")], f"choose a block below {last}", tmp_path / "o", tmp_path)
    assert main(["bake", "--model", str(tmp_path / "opt"), "--vector", v, "--layer", str(last - 1), "-o",
                 str(tmp_path / "o")]) == 0
    assert main(["verify", str(tmp_path / "o"), "--random-prompts"]) == 0


def test_non_exact_site_names_the_sites_that_work(tmp_path, capsys):
    save_model("qwen3", tmp_path / "qwen3")
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(tmp_path / "qwen3"), "--vector", v, "--layer", "1",
                      "-o", str(tmp_path / "o")], "sites that bake exactly here: attn_in, attn_out",
             tmp_path / "o", tmp_path)


def test_a_sliding_window_relabels_to_smollm3_and_says_so(tmp_path, capsys):
    """Mistral and Qwen2 with a window in play are written as SmolLM3 (exactness: tests/test_oracle.py); Qwen2's
    native attn_in keeps its own architecture."""
    save_model("qwen2_window", tmp_path / "m")
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    assert main(["bake", "--model", str(tmp_path / "m"), "--vector", v, "--layer", "1", "--site", "mlp_in",
                 "-o", str(tmp_path / "o")]) == 0
    assert "architecture changed: qwen2 -> SmolLM3ForCausalLM (exactly equivalent)" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 2 and cfg["no_rope_layers"] == [1] * 4
    assert main(["bake", "--model", str(tmp_path / "m"), "--vector", v, "--layer", "1", "--site", "attn_in", "-q",
                 "-o", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "config.json").read_text())["model_type"] == "qwen2"


@pytest.mark.parametrize("content", [b"\x00\x01garbage", b"{not json"])
def test_unreadable_vector_file(tmp_path, llama_dir, capsys, content):
    (tmp_path / "v.svec").write_bytes(content)
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", str(tmp_path / "v.svec"), "--layer", "1",
                      "-o", str(tmp_path / "o")], "not valid JSON", tmp_path / "o", tmp_path)


def test_missing_vector_file_and_model(tmp_path, llama_dir, capsys):
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", str(tmp_path / "nope.svec"), "--layer", "1",
                      "-o", str(tmp_path / "o")], "does not exist", tmp_path / "o", tmp_path)
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(tmp_path / "nomodel"), "--vector", v, "--layer", "1",
                      "-o", str(tmp_path / "o")], "does not exist", tmp_path / "o", tmp_path)


def test_corrupt_checkpoint(tmp_path, llama_dir, capsys):
    data = (llama_dir / "model.safetensors").read_bytes()
    (llama_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(tmp_path / "o")],
             "truncated or corrupt", tmp_path / "o", tmp_path)


def test_existing_output_is_refused_without_force_and_force_replaces_only_a_bake(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(out), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert main(argv + ["--force"]) == 2  # a folder bakesteer did not write is never replaced
    assert "not a bakesteer output" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(argv + ["--force"]) == 0  # an empty folder is
    first = (out / "bakesteer.json").read_text()
    assert main(argv[:-3] + ["--coef", "2", "-o", str(out), "-q", "--force"]) == 0  # and so is a bake
    assert (out / "bakesteer.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "o", "v.npy"]


def test_output_inside_the_model_folder_isrefused(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    assert main(["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(llama_dir / "x")]) == 2
    assert "is the input" in capsys.readouterr().err and not (llama_dir / "x").exists()


def test_input_is_never_modified(tmp_path, llama_dir):
    before = {p.name: p.read_bytes() for p in llama_dir.iterdir()}
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    assert main(["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    assert {p.name: p.read_bytes() for p in llama_dir.iterdir()} == before


def test_verify_on_a_folder_that_is_not_a_bake(tmp_path, llama_dir, capsys):
    assert main(["verify", str(llama_dir)]) == 2
    assert "has no bakesteer.json; give a folder written by `bakesteer bake`" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(tmp_path, llama_dir):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN + 3))
    r = subprocess.run([sys.executable, "-m", "bakesteer", "bake", "--model", str(llama_dir), "--vector", v,
                        "--layer", "1", "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "hidden size" in r.stderr
    assert not (tmp_path / "o").exists()


def test_bake_then_verify_on_a_tiny_model(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0)).numpy())
    out = tmp_path / "o"
    assert main(["bake", "--model", str(llama_dir), "--vector", v, "--layer", "0-2", "--site", "mlp_in",
                 "--coef", "3", "-o", str(out), "-q"]) == 0
    recipe = json.loads((out / "bakesteer.json").read_text())
    assert [(s["site"], s["layer"], s["coef"]) for s in recipe["steers"]] == [("mlp_in", L, 3.0) for L in (0, 1, 2)]
    capsys.readouterr()
    assert main(["verify", str(out), "-q", "--random-prompts"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "identical" in text
    # verify must fail when the baked biases do not match the recipe
    recipe["steers"][0]["coef"] = 2.0
    (out / "bakesteer.json").write_text(json.dumps(recipe))
    assert main(["verify", str(out), "-q", "--random-prompts"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_unknown_model_type_is_refused_before_transformers_reads_it(tmp_path, llama_dir, capsys):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["model_type"] = "my_custom_remote_code_model"
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(tmp_path / "o")],
             "'my_custom_remote_code_model' is not supported", tmp_path / "o", tmp_path)


def test_hub_id_is_resolved_from_the_local_cache_only(tmp_path, monkeypatch, capsys):
    snap = tmp_path / "hub" / "models--someone--tiny-llama" / "snapshots" / "0123abcd"
    save_model("llama", snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0123abcd")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    assert main(["bake", "--model", "someone/tiny-llama", "--vector", v, "--layer", "1", "-q"]) == 0
    recipe = json.loads((tmp_path / "exported" / "tiny-llama-v-resid-L1" / "bakesteer.json").read_text())
    assert recipe["source"]["hub_id"] == "someone/tiny-llama" and recipe["source"]["revision"] == "0123abcd"
    capsys.readouterr()
    assert main(["bake", "--model", "someone/not-cached", "--vector", v, "--layer", "1", "-q"]) == 2
    assert "neither a folder nor a model in the local Hub cache" in capsys.readouterr().err
    # an id without an owner ("gpt2") is a Hub id too: the advice is to download it, not to pass a Hub id
    assert main(["bake", "--model", "gpt2", "--vector", v, "--layer", "1", "-q"]) == 2
    assert "`hf download gpt2`" in capsys.readouterr().err
    assert main(["bake", "--model", "./gpt2", "--vector", v, "--layer", "1", "-q"]) == 2
    assert "model folder ./gpt2 does not exist" in capsys.readouterr().err


def test_quantized_checkpoint_isrefused(tmp_path, llama_dir, capsys):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    refused(capsys, ["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "-o", str(tmp_path / "o")],
             "is a gptq checkpoint; bake the unquantized model", tmp_path / "o", tmp_path)


def test_one_vocabulary_for_layers_and_coefficients():
    """bake, extract, compare and eval take --layer/--layers and --coef/--coefs alike, in one grammar."""
    from bakesteer.cli import _parser

    p = _parser()
    a = p.parse_args(["bake", "--vector", "v", "--layers", "4-5", "--layer", "7", "--coefs", "2,3"])
    assert a.layer == [[4, 5], [7]] and a.coef == [[2.0, 3.0]]
    assert p.parse_args(["bake", "--vector", "v", "--layer", "5", "--coef", "-4"]).coef == [[-4.0]]
    assert p.parse_args(["extract", "--layer", "3-4", "-o", "x.svec"]).layers == [[3, 4]]
    for cmd in ("compare", "eval"):
        for flags in (["--layer", "5", "--coef", "2"], ["--layers", "5", "--coefs", "2"]):
            a = p.parse_args([cmd, "--vector", "v", *flags])
            assert (a.layers, a.coefs) == ("5", "2")


def test_a_backwards_layer_range_names_itself(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    with pytest.raises(SystemExit) as e:
        main(["bake", "--model", str(llama_dir), "--vector", v, "--layer", "3-1", "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "runs backwards; write 1-3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_approx_on_an_exact_site_says_so(tmp_path, llama_dir, capsys):
    v = _vec(tmp_path / "v.npy", np.ones(HIDDEN))
    assert main(["bake", "--model", str(llama_dir), "--vector", v, "--layer", "1", "--approx", "-q",
                 "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "--approx had nothing to fit" in out
    assert json.loads((tmp_path / "o" / "bakesteer.json").read_text())["exact"] is True


def test_progress_bars_stay_off_captured_output(capsys):
    from bakesteer.progress import bar

    assert bar(total=3).disable is True  # stderr is captured here, not a terminal
    assert bar(total=3, disable=True).disable is True
