"""The figures of tests/test_llamacpp.py, printed: bakesteer bakes run in llama.cpp itself.

    python scripts/llamacpp_figures.py > scripts/results/llamacpp.txt

Needs the llamacpp extra (scripts/get_llamacpp.py). SmolLM2-135M-Instruct, love.svec block 5: resid at
coefficient 1, attn_in as the unit direction × 8. llama.cpp runs with an F32 KV cache.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llamacpp_tools import convert, cvec_logits, greedy, load, logits, rewrite  # noqa: E402

from bakesteer.bake import Item, bake  # noqa: E402
from bakesteer.gguf_bake import bake_gguf  # noqa: E402
from bakesteer.hooks import Steer, steering  # noqa: E402
from bakesteer.models import ensure_default_model, smollm2_gguf  # noqa: E402
from bakesteer.vectors import load_vector_file  # noqa: E402

PROMPTS = ["I hate you because", "The weather today is", "Write a short note to a colleague."]
L = 5


def hf_logits(model, ids, steers=()):
    with torch.no_grad(), steering(model, list(steers)):
        return model(torch.tensor([ids])).logits[0].double().numpy()


def main() -> None:
    src = ensure_default_model(quiet=True)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    v = load_vector_file("love.svec").vectors[L]
    steers = {"resid": Steer("resid", L, v, 1.0), "attn_in": Steer("attn_in", L, v / np.linalg.norm(v), 8.0)}
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        print("# 1. baked checkpoint -> llama.cpp's convert_hf_to_gguf.py (f32) -> llama-cpp-python, vs transformers")
        for site, s in steers.items():
            bake(src, [Item(s, {})], d / site, progress=False)
            convert(d / site, d / f"{site}.gguf")
            baked = AutoModelForCausalLM.from_pretrained(d / site, dtype=torch.float32).eval()
            llm = load(d / f"{site}.gguf")
            diff = max(np.abs(logits(llm, i) - hf_logits(baked, i)).max() for i in ids)
            effect = max(np.abs(hf_logits(baked, i) - hf_logits(model, i)).max() for i in ids)
            g = baked.generate(torch.tensor([ids[0]]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                               pad_token_id=0, eos_token_id=None)[0, len(ids[0]):].tolist()
            print(f"{site:8s} max |Δlogit| llama.cpp vs transformers {diff:.2e}; steering effect {effect:.3f}; "
                  f"32 greedy tokens {'identical' if greedy(llm, ids[0]) == g else 'DIFFERENT'}")
        print("# 2. bake straight into the Q4_1 GGUF vs llama.cpp's own control vector on the unbaked GGUF (resid)")
        s = steers["resid"]
        bake_gguf(smollm2_gguf(), [Item(s, {})], d / "q.gguf")
        baked, plain = load(d / "q.gguf"), load(smollm2_gguf())
        for p, i in zip(PROMPTS, ids):
            want = cvec_logits(smollm2_gguf(), (s.coef * s.vector).astype(np.float32), L, i)
            got = logits(baked, i)
            err = np.abs(got - want).max()
            print(f"{p!r:40s} max |Δ| {err:.2e} = {err / np.abs(want).max():.1e}"
                  f" relative; baked vs unbaked {np.abs(got - logits(plain, i)).max():.3f}")
        print("# 3. attn_in into an F32 GGUF from llama.cpp's converter (q/k stored permuted) vs transformers hooked")
        s = steers["attn_in"]
        convert(src, d / "f32.gguf")
        bake_gguf(d / "f32.gguf", [Item(s, {})], d / "right.gguf")
        attn, vv = model.model.layers[L].self_attn, torch.from_numpy(s.coef * s.vector).float()
        rewrite(d / "right.gguf", d / "wrong.gguf", {f"blk.{L}.attn_{n}.bias": (lin.weight.detach() @ vv).numpy()
                                                     for n, lin in (("q", attn.q_proj), ("k", attn.k_proj))})
        right, wrong = load(d / "right.gguf"), load(d / "wrong.gguf")
        r = max(np.abs(logits(right, i) - hf_logits(model, i, [s])).max() for i in ids)
        w = max(np.abs(logits(wrong, i) - hf_logits(model, i, [s])).max() for i in ids)
        print(f"bias from the stored weight: max |Δ| {r:.2e}; from transformers' unpermuted weight: {w:.3f}")


if __name__ == "__main__":
    main()
