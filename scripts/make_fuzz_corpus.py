"""Write the seed corpus of tests/test_fuzz.py: small valid files of every kind bakesteer reads.

    python scripts/make_fuzz_corpus.py          # rewrites tests/fuzz_corpus/ (deterministic)

The fuzz test mutates these seeds with a seeded mutator; the corpus is committed so that a run
is reproducible from its seed alone.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile_tools import HIDDEN, write_gguf_model, write_model  # noqa: E402

from bakesteer.cli import main  # noqa: E402
from bakesteer.vectors import write_vectors  # noqa: E402

OUT = ROOT / "tests" / "fuzz_corpus"


def build(out: Path = OUT) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_model(out / "model")
    write_model(out / "sharded", sharded=True)
    write_gguf_model(out / "model.gguf")
    g = np.random.default_rng(0)
    blocks = {b: g.normal(0, 1, HIDDEN) for b in (0, 1)}
    identity = {"model_type": "llama", "hidden_size": HIDDEN, "num_hidden_layers": 2}
    write_vectors(out / "vector.svec", "bakesteer", "resid", blocks, identity, coef=2.0, method="mean_diff")
    write_vectors(out / "ibm.svec", "ibm", "resid", {0: blocks[0]}, identity)
    write_vectors(out / "control.gguf", "gguf", "resid", {1: blocks[1]}, identity)
    np.save(out / "vector.npy", blocks[1].astype(np.float32))
    assert main(["bake", "--model", str(out / "model"), "--vector", str(out / "vector.npy"), "--layer", "1",
                 "--site", "attn_in", "-o", str(out / "bake"), "-q"]) == 0
    for noise in ("README.md",):  # the card holds dates; the fuzz reads only the recipe and tensors
        (out / "bake" / noise).unlink()
    recipe = json.loads((out / "bake" / "bakesteer.json").read_text())
    recipe["created"], recipe["source"]["path"] = "2026-01-01T00:00:00+00:00", "../model"
    (out / "bake" / "bakesteer.json").write_text(json.dumps(recipe, indent=2) + "\n")
    verified = {"kind": "exact", "passed": True, "dtype": "float32", "max_abs_diff": 1e-6, "tolerance": 1e-4,
                "steering_effect": 3.0, "kl_hooked_baked": 0.0, "kl_source_hooked": 0.5, "greedy_tokens": 64,
                "greedy_match": True, "prompts": [], "sample": None}  # so that push renders without verifying
    (out / "bake" / "bakesteer" / "verify.json").write_text(json.dumps(verified, indent=2) + "\n")


if __name__ == "__main__":
    build()
    print(f"wrote {sorted(p.name for p in OUT.iterdir())} to {OUT}")
