"""Turner et al.'s wedding experiment on SmolLM2-135M-Instruct: does a weddings vector lower the perplexity
of wedding sentences while leaving unrelated sentences about unchanged?

Vector at every block L: mean over tokens of the residual stream after block L for
"I talk about weddings constantly" minus the same for "I do not talk about weddings constantly"
(the bakeable, position-free form of their ActAdd pair). Sweep layers × coefficients with hook
steering and measure the perplexity ratio (steered / source) on bakesteer/data/wedding.txt and
bakesteer/data/offtopic.txt, and KL over bakesteer/data/prompts.txt.

    python scripts/wedding.py                      # writes scripts/results/wedding/
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bakesteer import evaluate as ev
from bakesteer.hooks import site_module
from bakesteer.models import ensure_default_model
from bakesteer.numbers import parse_coefs, parse_layers
from bakesteer.plots import plot_sweep

POS, NEG = "I talk about weddings constantly", "I do not talk about weddings constantly"


@torch.inference_mode()
def resid_means(model, seqs: list[list[int]]) -> np.ndarray:
    """[n_layers, hidden]: per block, the residual stream after it averaged over tokens, then over sequences."""
    n = model.config.num_hidden_layers
    acc = [[] for _ in range(n)]
    hooks = [site_module(model, "resid", L).register_forward_hook(
        lambda m, i, o, L=L: acc[L].append((o[0] if isinstance(o, tuple) else o)[0].double().mean(0)))
        for L in range(n)]
    try:
        for s in seqs:
            model(torch.tensor([s]))
    finally:
        for h in hooks:
            h.remove()
    return np.stack([torch.stack(a).mean(0).numpy() for a in acc])


@torch.inference_mode()
def resid_tokens(model, ids: list[int], layer: int) -> torch.Tensor:
    """[len, hidden]: the residual stream after ``layer`` at every token."""
    got = []
    h = site_module(model, "resid", layer).register_forward_hook(
        lambda m, i, o: got.append((o[0] if isinstance(o, tuple) else o)[0].detach()))
    try:
        model(torch.tensor([ids]))
    finally:
        h.remove()
    return got[0]


def _adder(delta: torch.Tensor, first_n: bool):
    """Add ``delta`` [n, hidden] at positions < n (ActAdd), or a [hidden] vector at every position."""
    def hook(m, i, o):
        x = o[0] if isinstance(o, tuple) else o
        if first_n:
            n = min(delta.shape[0], x.shape[1])
            x = torch.cat([x[:, :n] + delta[:n], x[:, n:]], 1)
        else:
            x = x + delta
        return (x,) + tuple(o[1:]) if isinstance(o, tuple) else x
    return hook


@torch.inference_mode()
def positions_example(model, tok, prompts: list[str], layer: int, coef: float, new_tokens: int = 24) -> str:
    """ActAdd (per-token difference at the first n positions) against the bakeable every-position forms."""
    pos, neg = tok(POS)["input_ids"], tok(NEG)["input_ids"]
    space = tok(" ")["input_ids"]
    pos = pos + space * (len(neg) - len(pos))  # ActAdd pads the shorter prompt with spaces
    per_token = resid_tokens(model, pos, layer) - resid_tokens(model, neg, layer)
    forms = {"ActAdd: per-token diff at the first %d positions" % len(neg): (coef * per_token, True),
             "bakeable: mean over tokens, every position": (coef * per_token.mean(0), False),
             "bakeable: last token, every position": (coef * per_token[-1], False)}
    block = site_module(model, "resid", layer)

    def run(delta, first_n, ids):
        h = block.register_forward_hook(_adder(delta, first_n)) if delta is not None else None
        try:
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
            seq = list(ids)
            for _ in range(new_tokens):  # no KV cache: every step recomputes, so ActAdd stays on the prompt
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        finally:
            if h:
                h.remove()
        return lp, tok.decode(seq[len(ids):], skip_special_tokens=True)

    lines = [f"Layer {layer}, coefficient {coef:g}, resid; KL of the next-token distribution at the last prompt "
             "position, mean over prompts (nats).", "",
             "| form | KL(source ‖ form) | KL(ActAdd ‖ form) |", "|---|---:|---:|"]
    sample_rows = []
    res = {name: [] for name in ["source", *forms]}
    for text in prompts:
        ids = tok(text)["input_ids"]
        res["source"].append(run(None, False, ids))
        for name, (d, first) in forms.items():
            res[name].append(run(d, first, ids))
    act = next(iter(forms))
    kl = lambda a, b: float(np.mean([float((p.exp() * (p - q)).sum()) for (p, _), (q, _) in zip(res[a], res[b])]))
    for name in forms:
        lines.append(f"| {name} | {kl('source', name):.3f} | {kl(act, name):.3f} |")
    lines += ["", f"Greedy, {new_tokens} tokens, prompt {prompts[0]!r}:", ""]
    for name in res:
        sample_rows.append(f"- {name}: {res[name][0][1]!r}")
    return "\n".join(lines + sample_rows) + "\n"


def table(result: dict, sets: list[str]) -> str:
    coefs = result["coefs"]
    head = "| layer | |v|/|resid| | " + " | ".join(f"coef {c:g}: wedding / off-topic (KL)" for c in coefs) + " |"
    lines = [head, "|---:|---:|" + "---|" * len(coefs)]
    by = {(p["layer"], p["coef"]): p for p in result["points"]}
    for L in result["layers"]:
        cells = [f"{by[L, c]['ratio'][sets[0]]:.3f} / {by[L, c]['ratio'][sets[1]]:.3f} ({by[L, c]['kl']:.3f})"
                 for c in coefs]
        lines.append(f"| {L} | {result['relative_norm'][str(L)]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="0,2,4,6,8,10,12,14,16,20,24,28")
    ap.add_argument("--coefs", default="1,2,4,8")
    ap.add_argument("--pos-layer", type=int, default=6, help="layer of the position-semantics example")
    ap.add_argument("--pos-coefs", default="0.25,1", help="coefficients of the position-semantics example")
    ap.add_argument("--positions-only", action="store_true", help="write positions.md alone, skip the sweep")
    ap.add_argument("-o", "--output", default="scripts/results/wedding")
    a = ap.parse_args()
    t0 = time.perf_counter()
    src = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    layers, coefs = parse_layers(a.layers), parse_coefs(a.coefs)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    pos_md = "\n".join(positions_example(model, tok, ev.read_lines("prompts.txt")[:6], a.pos_layer, c)
                       for c in parse_coefs(a.pos_coefs))
    (out / "positions.md").write_text(f"Made by `{cmd}`.\n\n" + pos_md)
    print(pos_md)
    if a.positions_only:
        return
    ctx = ev.context_length(model)
    sets = {"wedding": ev.encode(tok, ev.read_lines("wedding.txt"), ctx),
            "off_topic": ev.encode(tok, ev.read_lines("offtopic.txt"), ctx)}
    prompts = ev.encode(tok, ev.read_lines("prompts.txt"), ctx)
    diff = resid_means(model, [tok(POS)["input_ids"]]) - resid_means(model, [tok(NEG)["input_ids"]])
    typical = resid_means(model, sets["off_topic"])  # mean resid over off-topic text: scale reference
    resid_norm = {L: float(np.linalg.norm(typical[L])) for L in layers}
    vecs = {L: diff[L] for L in layers}
    result = ev.sweep(model, vecs, "resid", coefs, sets, prompts, lambda i: tok.decode([i]), top=5)
    result["vector"] = {"positive": POS, "negative": NEG, "method": "mean over tokens of resid, positive − negative"}
    result["relative_norm"] = {str(L): float(np.linalg.norm(vecs[L])) / resid_norm[L] for L in layers}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "sweep.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md = table(result, list(sets))
    (out / "table.md").write_text(
        f"Made by `{cmd}` ({result['seconds']} s, {torch.get_num_threads()} CPU threads).\n\n"
        f"Source perplexity: wedding {result['source_perplexity']['wedding']:.2f}, "
        f"off-topic {result['source_perplexity']['off_topic']:.2f} ({len(sets['wedding'])} + "
        f"{len(sets['off_topic'])} sentences). Cells: perplexity ratio steered / source, and KL(source ‖ steered) "
        f"over {len(prompts)} prompts in nats/token. |v|/|resid|: the vector's norm over the norm of the mean "
        "residual stream on off-topic text at that block.\n\n" + md)
    plot_sweep(result, out, [4, 8, 12, 16], "SmolLM2 weddings vector (resid)")
    print(md)
    print(f"wrote {out}/sweep.json, table.md and PNGs in {result['seconds']} s")


if __name__ == "__main__":
    main()
