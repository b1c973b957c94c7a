"""Turner et al.'s ActAdd example on SmolLM2, as a bake: "Love" − "Hate", then "I hate you because".

ActAdd adds the per-token activations of "Love" minus those of "Hate" at the first positions of the
prompt; a bias is added at every position, so the bakeable form is one vector: the residual stream
after block L at the last token of "Love" minus that of "Hate". Each word follows a newline: at
position 0 SmolLM2 parks its massive attention-sink activations, and the difference there has norm
~780 against ~70 one token later (GPT-2's ActAdd had BOS in that place). The script extracts the
vector, bakes it into a plain checkpoint, and prints the baked model's greedy completion beside the
unsteered one (and the baked-vs-hooked logit gap).

    python scripts/demo_love_hate.py [--layer 3] [--coef 1] [--tokens 40]
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bakesteer.bake import Item, bake
from bakesteer.extract import Pair, Prompting, extract
from bakesteer.vectors import write_vectors
from bakesteer.hooks import Steer, steering
from bakesteer.models import DEFAULT_NAME, ensure_default_model

PROMPT = "I hate you because"


@torch.inference_mode()
def complete(model, tok, prompt: str, n: int) -> str:
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", type=int, default=3, help="decoder block whose output is steered")
    ap.add_argument("--coef", type=float, default=1.0, help="multiple of the Love − Hate difference")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("-o", default="exported/demo-love-hate", help="folder for the vector and the baked model")
    a = ap.parse_args()
    src = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()

    res = extract(model, tok, [Pair("Love", "Hate")], "resid", [a.layer], "last", "mean_diff", Prompting("\n{text}"))
    out = Path(a.o)
    out.mkdir(parents=True, exist_ok=True)
    vec_path = write_vectors(out / "love-hate.svec", "bakesteer", "resid", res.vectors,
                             {"model_type": "llama", "name": DEFAULT_NAME}, coef=a.coef, method="mean_diff(last)",
                             extra={"pairs": 1, "positive": "Love", "negative": "Hate"}, force=True)
    v = res.vectors[a.layer]
    steer = Steer("resid", a.layer, v, a.coef)
    bake(src, [Item(steer, {"file": str(vec_path)})], out / "model", force=True, progress=False)
    baked = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()

    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode(), steering(model, [steer]):
        hooked = model(ids).logits
    with torch.inference_mode():
        gap = float((baked(ids).logits - hooked).abs().max())
    norm = float((v ** 2).sum()) ** 0.5
    print(f"SmolLM2-135M-Instruct, Love − Hate at the residual after block {a.layer}: |v| = {norm:.1f}, "
          f"coef {a.coef:g}; baked into {out / 'model'} (max |Δlogit| baked vs hooked: {gap:.1e})\n")
    for name, m in (("unsteered", model), ("baked", baked)):
        text = textwrap.fill(PROMPT + complete(m, tok, PROMPT, a.tokens), 100, subsequent_indent=" " * 12)
        print(f"{name:>10}: {text}")


if __name__ == "__main__":
    main()
