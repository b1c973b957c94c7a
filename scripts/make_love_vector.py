"""Make bakesteer/data/love.svec: Love − Hate mean-difference vectors of SmolLM2, every block, site resid.

Turner et al.'s ActAdd pair ("Love" − "Hate") plus a few paraphrases (bakesteer/data/love_hate.jsonl); the
residual stream after each block is read at the last token of each text and averaged over pairs (CAA-style
mean difference). The vectors are stored as they are, so --coef multiplies the natural difference (coef 1 = one full
mean difference). Run: python scripts/make_love_vector.py [--check]
"""
from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bakesteer.extract import load_pairs
from bakesteer.hooks import Steer, steering
from bakesteer.models import DEFAULT_NAME, ensure_default_model
from bakesteer.vectors import BUNDLED, save_bakesteer_vector

PAIRS = [(p.positive, p.negative) for p in load_pairs(BUNDLED / "love_hate.jsonl")]  # bundled: extract reads it too


@torch.inference_mode()
def last_token_resid(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt")["input_ids"]
    hs = model(ids, output_hidden_states=True).hidden_states  # (n_layers + 1) x (1, seq, hidden)
    return torch.stack([h[0, -1] for h in hs[1:]]).double()  # row L = residual after block L


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="print steered completions at a few coefficients")
    ap.add_argument("-o", default=str(BUNDLED / "love.svec"))
    args = ap.parse_args()
    path = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    diffs = torch.stack([last_token_resid(model, tok, p) - last_token_resid(model, tok, n) for p, n in PAIRS])
    mean = diffs.mean(0)  # (n_layers, hidden)
    vectors = {L: mean[L].float() for L in range(mean.shape[0])}
    info = {"model_type": "llama", "name": DEFAULT_NAME, "hidden_size": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers}
    save_bakesteer_vector(args.o, vectors, "resid", info, coef=1.0, method="mean_diff(last token)",
                          extra={"pairs": len(PAIRS), "positive": "love", "negative": "hate"})
    print(f"wrote {args.o}: {len(vectors)} layers, |v| at block 5 = {vectors[5].norm():.2f}")
    if args.check:
        ids = tok("I hate you because", return_tensors="pt")
        for coef in (0, 0.5, 1, 1.5):
            with steering(model, [Steer("resid", 5, vectors[5], coef)]):
                out = model.generate(**ids, max_new_tokens=24, do_sample=False)
            print(f"coef {coef}: {tok.decode(out[0][ids['input_ids'].shape[1]:])!r}")


if __name__ == "__main__":
    main()
