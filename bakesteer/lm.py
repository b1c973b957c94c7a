"""What every command that runs a model shares: tokenizer loading with a refusal, token budgets,
log-probabilities, KL and top-1 agreement over real positions, and greedy decoding, all on the
block-streaming engine (``bakesteer.engine``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .engine import Batch, Model, Stream, batch_of, batches
from .errors import BakesteerError

__all__ = ["Batch", "Gap", "GapMeter", "Model", "Stream", "argmax", "batch_of", "batches", "decode", "greedy", "kl",
           "load_tokenizer", "logprobs", "sampler", "take_tokens"]


def load_tokenizer(folder: str | Path, why: str = "this command reads text with it"):
    """The folder's tokenizer, or one sentence saying it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # missing or broken tokenizer files
        raise BakesteerError(f"{folder} has no usable tokenizer ({type(e).__name__}); {why}.") from None


def take_tokens(tok, texts: list[str], budget: int, max_len: int = 256) -> list[list[int]]:
    """Token ids of ``texts`` (each cut to ``max_len``), in order, until ``budget`` tokens are reached."""
    out, total = [], 0
    for t in texts:
        ids = tok(t)["input_ids"][:max_len]
        if len(ids) < 2:
            continue
        out.append(ids[: max(2, budget - total)])
        total += len(out[-1])
        if total >= budget:
            break
    return out


def logprobs(logits: torch.Tensor) -> torch.Tensor:
    """float64 next-token log-probabilities."""
    return torch.log_softmax(logits.double(), -1)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over positions of KL(p ‖ q), nats; (T, V) logits of one unpadded sequence."""
    p, q = logprobs(p_logits), logprobs(q_logits)
    return float((p.exp() * (p - q)).sum(-1).mean())


@dataclass
class Gap:
    """How far an approximation is from the hooked model, on held-out text."""

    kl_hooked_baked: float  # mean over next-token positions, nats
    kl_source_hooked: float  # the steering's own size, for scale
    ratio: float  # kl_hooked_baked / kl_source_hooked
    top1_agreement: float  # share of positions whose argmax equals the hooked model's
    tokens: int


class GapMeter:
    """KL(hooked ‖ baked), KL(source ‖ hooked) and top-1 agreement, summed batch by batch."""

    def __init__(self):
        self.kl_hb = self.kl_sh = self.agree = self.n = 0.0

    def add(self, source: torch.Tensor, hooked: torch.Tensor, baked: torch.Tensor, mask: torch.Tensor) -> None:
        """(B, T, V) logits of one batch and its (B, T) mask."""
        s, h, b = logprobs(source), logprobs(hooked), logprobs(baked)
        w = mask.to(h.device).double()
        self.kl_hb += float(((h.exp() * (h - b)).sum(-1) * w).sum())
        self.kl_sh += float(((s.exp() * (s - h)).sum(-1) * w).sum())
        self.agree += float(((h.argmax(-1) == b.argmax(-1)).double() * w).sum())
        self.n += float(w.sum())

    def gap(self) -> Gap:
        n = max(self.n, 1.0)
        return Gap(self.kl_hb / n, self.kl_sh / n, self.kl_hb / max(self.kl_sh, 1e-30), self.agree / n, int(self.n))


def _advance(model: Model, streams: list[Stream], step: int) -> None:
    """One decoding step: every single-sequence batch of ``streams`` through every block, with its cache."""
    model.embed(streams, use_cache=True)
    for i in range(model.n_layers):
        with model.part(i) as block:
            model.step(block, i, streams)


def end_tokens(folder: str | Path) -> list[int]:
    """The ids that end a generation (generation_config.json, else config.json), which greedy never picks:
    exactly ``n`` new tokens, as ``generate(min_new_tokens=n)`` gives."""
    import json

    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        try:
            eos = json.loads((Path(folder) / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        ids += [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
    return sorted(set(ids))


def forbid(logits: torch.Tensor, ids: list[int]) -> None:
    """Make ``ids`` unpickable in ``logits`` (..., V), in place; ids past the vocabulary are ignored (a tiny
    model's config may name the eos of its full-size family)."""
    logits[..., [t for t in ids if 0 <= t < logits.shape[-1]]] = -torch.inf


Pick = Callable[[torch.Tensor], int]  # (V,) float logits of the next token -> its id


def argmax(logits: torch.Tensor) -> int:
    return int(logits.argmax(-1))


def sampler(temperature: float, top_p: float, generator: torch.Generator) -> Pick:
    """Nucleus sampling: softmax(logits / temperature), the smallest set of tokens holding ``top_p``."""
    def pick(logits: torch.Tensor) -> int:
        probs = torch.softmax(logits.double() / temperature, -1).cpu()
        order = probs.argsort(descending=True)
        keep = probs[order].cumsum(0) - probs[order] < top_p  # always keeps the most likely token
        p = torch.zeros_like(probs)
        p[order[keep]] = probs[order[keep]]
        return int(torch.multinomial(p / p.sum(), 1, generator=generator))

    return pick


@torch.no_grad()
def decode(model: Model, streams: list[Stream], n: int, never: list[int] = (), pick: Pick = argmax,
           stop: int | None = None) -> list[list[list[int]]]:
    """``n`` new tokens after each single-sequence batch of each stream (steers hooked), one pass over the
    weights per token with a KV cache per sequence: per stream, per batch, the new token ids. Tokens in
    ``never`` are not picked (see ``end_tokens``); a sequence that picks ``stop`` ends there."""
    from transformers import DynamicCache

    for s in streams:
        for b in s.batches:
            if b.ids.shape[0] != 1:
                raise ValueError("decode takes single-sequence batches")
            b.cache = DynamicCache(config=model.config)
    out: list[list[list[int]]] = [[[] for _ in s.batches] for s in streams]
    live = list(streams)
    for step in range(n):
        _advance(model, live, step)
        with model.part("head"):
            for s, got in zip(streams, out, strict=True):
                for b, ids in zip(s.batches, got, strict=True):
                    if stop is not None and ids and ids[-1] == stop:
                        continue
                    logits = model.head(b.hidden[:, -1:])[0, 0].float()
                    forbid(logits, never)
                    ids.append(pick(logits))
                    b.ids = torch.tensor([[ids[-1]]])
                    b.mask = torch.cat([b.mask, torch.ones(1, 1, dtype=b.mask.dtype)], 1)
        if stop is not None:
            live = [Stream([b for b, ids in zip(s.batches, got, strict=True) if ids[-1] != stop], s.steers,
                           s.captures, s.adds) for s, got in zip(streams, out, strict=True)]
            live = [s for s in live if s.batches]
            if not live:
                break
    for s in streams:
        for b in s.batches:
            b.cache = None
    return out


def greedy(model: Model, streams: list[Stream], n: int, never: list[int] = ()) -> list[list[list[int]]]:
    """``decode`` with the most likely token at every step."""
    return decode(model, streams, n, never)


def prompts_stream(seqs: list[list[int]], steers=()) -> Stream:
    """One single-sequence batch per sequence (no padding), under ``steers``."""
    return Stream([batch_of([s]) for s in seqs], list(steers))


def logits_of(model: Model, seqs: list[list[int]], steers=(), size: int = 1) -> list[torch.Tensor]:
    """(T, V) logits of each sequence, unpadded."""
    got = model.forward([Stream(batches(seqs, size), list(steers))])[0]
    return [g[k, :len(s)] for g, start in zip(got, range(0, len(seqs), size), strict=True)
            for k, s in enumerate(seqs[start:start + size])]
