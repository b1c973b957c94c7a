"""Prompts × {source, steered}: n completions each, as a table (rich), JSON and Markdown.

The steered column is a baked folder or the source under hook steering; both go through
``Variant``, a model plus the steers hooked onto it while it runs (none for a baked model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .engine import Model, Stream
from .hooks import Steer, steering


@dataclass
class Variant:
    name: str
    model: torch.nn.Module | Model  # a loaded model or a block-streaming engine.Model
    steers: list[Steer] = field(default_factory=list)


def _complete_streamed(v: Variant, ids: list[int], n: int, new_tokens: int, greedy: bool, temperature: float,
                       top_p: float, seed: int, eos: int | None) -> list[list[int]]:
    """``complete`` on a block-streaming ``engine.Model``: one pass over the weights per new token."""
    from .lm import argmax, batch_of, decode, sampler

    pick = argmax if greedy else sampler(temperature, top_p, torch.Generator().manual_seed(seed))
    rows = decode(v.model, [Stream([batch_of([ids]) for _ in range(1 if greedy else n)], list(v.steers))],
                  new_tokens, pick=pick, stop=eos)[0]
    rows = [r[:r.index(eos)] if eos is not None and eos in r else r for r in rows]
    return rows * n if greedy else rows


@torch.inference_mode()
def complete(v: Variant, ids: list[int], n: int, new_tokens: int, greedy: bool, temperature: float, top_p: float,
             seed: int, eos: int | None) -> list[list[int]]:
    """``n`` continuations of one prompt (greedy: one, repeated), as new token ids; seeded per prompt. A
    block-streaming ``engine.Model`` decodes with a KV cache, one block resident."""
    if isinstance(v.model, Model):
        return _complete_streamed(v, ids, n, new_tokens, greedy, temperature, top_p, seed, eos)
    torch.manual_seed(seed)
    dev = next(v.model.parameters()).device
    x = torch.tensor([ids] * (1 if greedy else n), device=dev)
    kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    with steering(v.model, v.steers):
        out = v.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, pad_token_id=eos or 0,
                               eos_token_id=eos, **kw)
    rows = [r[len(ids):].tolist() for r in out]
    rows = [r[:r.index(eos)] if eos is not None and eos in r else r for r in rows]
    return rows * n if greedy else rows


def run(variants: list[Variant], tok, prompts: list[str], n: int = 3, new_tokens: int = 40, greedy: bool = False,
        temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, chat: bool = False, progress: bool = True) -> dict:
    """Every prompt through every variant with the same seed; returns the JSON-ready result."""
    from .progress import bar

    rows = []
    for i, p in enumerate(bar(iterable=prompts, desc="compare", disable=not progress)):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True) if chat else p
        ids = list(tok(text, add_special_tokens=not chat)["input_ids"])
        outs = {v.name: [tok.decode(t, skip_special_tokens=True)
                         for t in complete(v, ids, n, new_tokens, greedy, temperature, top_p, seed + i,
                                           tok.eos_token_id)]
                for v in variants}
        rows.append({"prompt": p, "completions": outs})
    return {"settings": {"n": n, "new_tokens": new_tokens, "greedy": greedy, "temperature": temperature,
                         "top_p": top_p, "seed": seed, "chat": chat},
            "variants": [v.name for v in variants], "rows": rows}


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ⏎ ").strip()


def to_markdown(result: dict) -> str:
    names = result["variants"]
    s = result["settings"]
    how = "greedy" if s["greedy"] else f"sampled (T={s['temperature']}, top-p {s['top_p']}, seed {s['seed']})"
    lines = [f"{s['new_tokens']} new tokens, {how}, {s['n']} per prompt.", "",
             "| prompt | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in result["rows"]:
        for k in range(s["n"]):
            cells = [_cell(r["completions"][v][k]) for v in names]
            lines.append(f"| {_cell(r['prompt']) if k == 0 else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=True)
    table.add_column("prompt", style="bold", max_width=24)
    for v in result["variants"]:
        table.add_column(v, overflow="fold")
    for r in result["rows"]:
        n = result["settings"]["n"]
        for k in range(n):
            table.add_row(r["prompt"] if k == 0 else "", *[r["completions"][v][k] for v in result["variants"]])
    Console().print(table)
