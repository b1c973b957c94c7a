"""The benchmark scripts run end to end at their smallest size on a tiny model, so they cannot rot unseen.

Their figures are not asserted (speed lives in the scripts' own output); what is asserted is what they
must get right whatever the machine: every row ran, the steer changed the tokens, and every hooked row
generated the baked model's tokens.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny import HIDDEN, save_char_tokenizer, save_model

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


@pytest.fixture
def tiny_llama(tmp_path) -> tuple[Path, Path]:
    save_model("llama", tmp_path / "m")
    save_char_tokenizer(tmp_path / "m")
    np.save(tmp_path / "v.npy", 4 * np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))
    return tmp_path / "m", tmp_path / "v.npy"


def test_bench_inference_runs_every_row_and_the_steered_rows_agree(tiny_llama):
    model, vec = tiny_llama
    out = run_script("bench_inference.py", "--model", str(model), "--vector", str(vec), "--layers", "1-2",
                     "--new-tokens", "4", "--repeats", "1", "--batches", "1,2")
    rows = ("source", "baked", "bias slots alone", "bakesteer hooks", "repeng ControlModel",
            "steering-vectors apply", "source, again")
    generate_part, paired_part = out.split("Paired decode steps")
    for part, names in ((generate_part, rows[:-1]), (paired_part, rows)):
        for name in names:
            line = next((x for x in part.splitlines() if x.startswith(f"| {name}")), None)
            assert line is not None and "n/a" not in line and "not installed" not in line, (name, line)
            if name in rows[3:6]:
                assert line.endswith("| b1 yes, b2 yes |"), line
    baked = next(x for x in generate_part.splitlines() if x.startswith("| baked"))
    assert baked.endswith("| b1 steered, b2 steered |"), baked  # so "same tokens as baked" is not the source's
    assert "NO" not in out
    assert "batch 1: baked" in paired_part and "batch 2: baked" in paired_part


def test_bench_inference_runtimes_measures_or_reports_every_row(tiny_llama):
    """``--measures runtimes`` on the tiny model: the PyTorch rows and every runtime that takes the model run and
    give the baked model's tokens (fp32 rows), the rest say why (llama.cpp's converter refuses the character
    tokenizer; no GGUF is given for the quantized row), and both goal lines are printed."""
    import json

    model, vec = tiny_llama
    cfg = model / "tokenizer_config.json"  # CTranslate2's converter writes bos/eos tokens: give it some
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "bos_token": "<unk>", "eos_token": "<unk>"}))
    out = run_script("bench_inference.py", "--model", str(model), "--vector", str(vec), "--layers", "1-2",
                     "--new-tokens", "4", "--repeats", "1", "--measures", "runtimes")
    assert "Paired decode steps" not in out and "`generate()`" not in out
    table = [x for x in out.split("Runtimes a bake unlocks")[1].splitlines() if x.startswith("| ")][1:]
    rows = {x.split(" | ")[0][2:]: x for x in table}
    assert len(rows) == 7, rows
    assert rows["bakesteer hooks (PyTorch, source)"].endswith("| yes | – |")
    assert "steered: leaves the source" in rows["baked (PyTorch)"]
    assert "skipped: no --gguf" in next(v for k, v in rows.items() if k.startswith("llama.cpp quantized"))
    for name, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        ran = cells[1].split(" (")[0].replace(".", "").isdigit()
        assert ran or cells[1].startswith(("skipped:", "failed:")), line
        if ran and any(k in name.split(" (")[0].split() for k in ("f32", "fp32", "float32")):  # not the int8 row
            assert cells[4] == "yes", line
    assert rows["CTranslate2 float32"].split(" | ")[1].split(" (")[0].replace(".", "").isdigit()
    assert out.count("goal: best ") == 2
