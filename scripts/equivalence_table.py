"""Measure baked vs hooked for every family × exact site (tiny random fp32 models), plus the real SmolLM2.

Prints a Markdown table: max |Δlogit| baked vs hooked in fp32 over 4 prompts (1 and 3 layers), the same
against a hand-written hook keyed by transformers' own module paths (tests/oracle.py, which does not read
bakesteer's table), fp32's own error (hooked fp32 vs hooked fp64), the steering effect max |hooked −
unsteered|, and whether 2 × 32 greedy tokens matched. Run: python scripts/equivalence_table.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from bakesteer.arch import SITES, exact_sites
from bakesteer.bake import Item, bake
from bakesteer.hooks import Steer
from bakesteer.verify import compare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracle import steered  # noqa: E402  (tests/oracle.py: the independent hook)
from tiny import CONFIGS, HIDDEN, VOCAB, WRAPPED, make_wrapped, save_model, steerable  # noqa: E402  (tests/tiny.py)


def _measure(src: Path, source, steers: list[Steer], prompts, work: Path, tag: str, family: str | None = None):
    """verify's comparison, and (for a tiny family) the largest |Δ| against the independent hook."""
    bake(src, [Item(s, {}) for s in steers], work / tag, progress=False)
    auto = AutoModelForImageTextToText if family in WRAPPED else AutoModelForCausalLM
    baked = auto.from_pretrained(work / tag, dtype=torch.float32).eval()
    reference = auto.from_pretrained(src, dtype=torch.float64,
                                     experts_implementation="eager").eval()  # MoE: no fp64 grouped mm
    result = compare(source, baked, steers, prompts, new_tokens=32, reference=reference)
    if family is None:
        return result, None
    vectors = {s.layer: torch.as_tensor(s.vector, dtype=torch.float64) for s in steers}
    with torch.inference_mode(), steered(source, family, steers[0].site, vectors, steers[0].coef):
        hooked = [source(p[None]).logits.double() for p in prompts]
    with torch.inference_mode():
        oracle = max(float((baked(p[None]).logits.double() - h).abs().max()) for p, h in zip(prompts, hooked))
    return result, oracle


def main() -> None:
    t0 = time.time()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (16,), generator=g) for _ in range(4)]
    print("| family | site | max \\|Δ\\| 1 layer | max \\|Δ\\| 3 layers | vs independent hook | fp32's own error "
          "| steering effect | greedy tokens | verify |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in [*CONFIGS, *WRAPPED]:
            if name in WRAPPED:  # a multimodal wrapper: its text decoder baked in place
                source = make_wrapped(name)
                source.save_pretrained(work / name)
            else:
                source = save_model(name, work / name).eval()
            cfg = (WRAPPED.get(name) or CONFIGS[name])().to_dict()
            exact = exact_sites(cfg)
            for site in SITES:
                if site not in exact:
                    print(f"| {name} | {site} | refused (not exact) | | | | | | |")
                    continue
                vecs = [torch.randn(HIDDEN, generator=g, dtype=torch.float64) for _ in range(3)]
                one, o1 = _measure(work / name, source, [Steer(site, 1, vecs[0], 4.0)], prompts, work,
                                   f"{name}-{site}-1", name)
                spread = steerable(cfg, site, (0, 2, 3))  # post-norm OPT's resid: not the last block
                three, o3 = _measure(work / name, source, [Steer(site, L, v, 4.0) for L, v in zip(spread, vecs)],
                                     prompts, work, f"{name}-{site}-3", name)
                same = "identical" if one.greedy_match and three.greedy_match else "DIFFERENT"
                ok = "PASS" if one.passed and three.passed else "FAIL"
                print(f"| {name} | {site} | {one.max_abs_diff:.1e} | {three.max_abs_diff:.1e} | {max(o1, o3):.1e} | "
                      f"{max(one.own_error, three.own_error):.1e} | "
                      f"{min(one.steering_effect, three.steering_effect):.2f} | {same} | {ok} |", flush=True)
        from transformers import AutoTokenizer

        from bakesteer.models import ensure_default_model
        from bakesteer.vectors import load_vector_file

        path = ensure_default_model(quiet=True)
        tok = AutoTokenizer.from_pretrained(path)
        source = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        love = load_vector_file("love.svec").vectors
        real = [torch.tensor(tok(p)["input_ids"]) for p in ["I hate you because", "The weather today is",
                                                              "My favourite food is", "Tell me about your day."]]
        for site, steers in [("resid", [Steer("resid", 5, love[5], 1.0)]),
                             ("attn_in", [Steer("attn_in", 5, love[5] / np.linalg.norm(love[5]), 8.0)]),
                             ("resid ×3", [Steer("resid", L, love[L], 0.4) for L in (4, 5, 6)])]:
            r, _ = _measure(path, source, steers, real, work, f"smollm2-{site.split()[0]}-{len(steers)}")
            print(f"| SmolLM2-135M (real) | {site} | {r.max_abs_diff:.1e} | | | {r.own_error:.1e} | "
                  f"{r.steering_effect:.2f} | {'identical' if r.greedy_match else 'DIFFERENT'} | "
                  f"{'PASS' if r.passed else 'FAIL'} |")
    print(f"\n({time.time() - t0:.0f} s on {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
