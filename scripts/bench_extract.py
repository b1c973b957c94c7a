"""Extraction throughput: bakesteer's extract vs repeng's ControlVector.train, same model, pairs and layers.

Both run in this process on the same loaded model (fp32, CPU unless --device), with the same batch size
(repeng's default, 32 texts), the same method (pca_diff, last token) and the same blocks; rounds are
interleaved and the median is reported. Needs repeng (`pip install --no-deps repeng==0.4.0 scikit-learn`).

    python scripts/bench_extract.py [--pairs 64] [--rounds 3] [--layers all] > scripts/results/bench_extract.txt
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bakesteer.extract import Pair, extract
from bakesteer.models import ensure_default_model

np.float_ = np.float64  # repeng 0.4.0 names np.float_ (removed in NumPy 2) at import
from repeng import ControlVector, DatasetEntry  # noqa: E402

del np.float_  # leave NumPy as it was

PERSONAS = [("happy", "sad"), ("honest", "deceptive"), ("calm", "furious"), ("generous", "greedy")]
SUFFIXES = [
    "I think", "The weather today", "When I look at the city skyline at night, I feel",
    "My favourite book is", "If you ask me about my job, I would say that", "Honestly,",
    "The best way to spend a Sunday afternoon with friends and family is", "Yesterday I",
    "People often tell me that", "Here is what I believe about the future of our small town:",
    "Cooking dinner", "The meeting went",
    "Whenever I hear that old song on the radio, it reminds me of the summer we spent by the lake and",
    "Right now", "In my opinion the hardest part of learning a language is", "Look at",
]


def make_pairs(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        pos, neg = PERSONAS[i % len(PERSONAS)]
        suffix = SUFFIXES[(i // len(PERSONAS)) % len(SUFFIXES)]
        out.append((f"Act as if you are extremely {pos}. {suffix}", f"Act as if you are extremely {neg}. {suffix}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", default="all", help="'all' or a comma list of blocks")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    path = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(a.device).eval()
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers)) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
    raw = make_pairs(a.pairs)
    ours_pairs = [Pair(p, n) for p, n in raw]
    theirs_pairs = [DatasetEntry(p, n) for p, n in raw]

    def run_ours():
        return extract(model, tok, ours_pairs, layers=layers, method="pca_diff", batch_size=a.batch_size).vectors

    def run_repeng():
        return ControlVector.train(model, tok, theirs_pairs, hidden_layers=layers, method="pca_diff",
                                   batch_size=a.batch_size).directions

    run_ours(), run_repeng()  # warm-up: pages the weights in, builds kernels
    times = {"bakesteer": [], "repeng": []}
    for _ in range(a.rounds):
        for name, fn in (("bakesteer", run_ours), ("repeng", run_repeng)):
            t = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t)
            if name == "bakesteer":
                ours = result
            else:
                theirs = result
    cos = min(abs(float(ours[L] @ theirs[L]) / float(np.linalg.norm(theirs[L]))) for L in layers if L < n_layers - 1)
    # the fastest of interleaved rounds: on a shared machine it is the round least disturbed by other work
    best = {k: min(v) for k, v in times.items()}
    print(f"model SmolLM2-135M-Instruct fp32 on {a.device}, {torch.get_num_threads()} threads; {a.pairs} pairs, "
          f"{len(layers)} blocks, batch {a.batch_size} texts, pca_diff, fastest of {a.rounds} interleaved rounds")
    for k in ("bakesteer", "repeng"):
        print(f"  {k:9s} {best[k]:7.3f} s  {a.pairs / best[k]:8.1f} pairs/s   (rounds: "
              f"{', '.join(f'{t:.3f}' for t in times[k])}; median {statistics.median(times[k]):.3f} s)")
    print(f"  speed-up bakesteer / repeng: {best['repeng'] / best['bakesteer']:.2f}x;  "
          f"min |cos| vs repeng (blocks below the last): {cos:.6f}")


if __name__ == "__main__":
    main()
