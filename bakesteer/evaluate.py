"""Does a steer keep the model capable? Turner et al.'s measures on text the user gives.

- perplexity of sentence sets (on-topic, off-topic), steered vs source, and their ratio;
- KL(source ‖ steered) of next-token distributions at every position of a prompt set, with the
  tokens that contribute most to it and those the steer promotes most;
- a sweep over layers × coefficients with hook steering (nothing is written per point).

A sentence's perplexity is exp(mean NLL) over its tokens after the first (the first token has no
context unless the tokenizer adds a BOS itself); a set's perplexity is exp of the mean NLL over
all scored tokens of the set (token-weighted).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .engine import Model, Stream, batches
from .errors import BakesteerError
from .paths import bundled_or
from .hooks import Steer, steering
from .progress import bar



def warn(msg: str) -> None:
    print(f"bakesteer: warning: {msg}", file=sys.stderr)


def read_lines(path: str | Path, what: str = "sentence file") -> list[str]:
    """Non-blank lines not starting with '#'; a bundled data file may be named by its file name."""
    p = bundled_or(path)
    if not p.is_file():
        raise BakesteerError(f"{what} {path} does not exist; give a text file with one sentence per line.")
    try:
        lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise BakesteerError(f"cannot read {what} {path} ({e}); give a UTF-8 text file with one sentence "
                             "per line.") from None
    lines = [s for s in lines if s and not s.startswith("#")]
    if not lines:
        raise BakesteerError(f"{what} {path} holds no sentences; put one sentence per line in it.")
    return lines


def context_length(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def encode(tok, texts: list[str], max_len: int | None, where: str = "input") -> list[list[int]]:
    """Token ids per text, truncated to ``max_len`` with one warning naming how many were cut."""
    seqs = [list(tok(t)["input_ids"]) for t in texts]
    if max_len:
        cut = sum(len(s) > max_len for s in seqs)
        if cut:
            warn(f"{cut} line(s) of {where} are longer than the model's context ({max_len} tokens) and were "
                 "truncated to it.")
            seqs = [s[:max_len] for s in seqs]
    return seqs


def _batches(seqs: list[list[int]], size: int) -> Iterable[tuple[int, torch.Tensor, torch.Tensor]]:
    """Right-padded batches (causal models: padding after a token cannot change it)."""
    for start in range(0, len(seqs), size):
        chunk = seqs[start:start + size]
        n = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), n, dtype=torch.long)
        mask = torch.zeros(len(chunk), n, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        yield start, ids, mask


def _device(model) -> torch.device:
    return next(model.parameters()).device


def network(model) -> torch.nn.Module:
    """The module tree hooks go on: a block-streaming ``engine.Model``'s skeleton, or the model itself."""
    return model.model if isinstance(model, Model) else model


@torch.inference_mode()
def _logprob_batches(model, seqs: list[list[int]], batch: int):
    """Right-padded batches with float64 next-token log-probabilities: (ids, mask, logp [b, len, vocab]).

    A block-streaming ``engine.Model`` runs every batch through one block at a time (hooks installed on
    its module tree with ``steering(network(model), ...)`` apply as they do on a loaded model)."""
    if isinstance(model, Model):
        data = batches(seqs, batch)
        for b, logits in zip(data, model.forward([Stream(data)])[0]):
            yield b.ids, b.mask, torch.log_softmax(logits.double(), -1).cpu()
        return
    dev = _device(model)
    for _, ids, mask in _batches(seqs, batch):
        logits = model(ids.to(dev), attention_mask=mask.to(dev)).logits
        yield ids, mask, torch.log_softmax(logits.double(), -1).cpu()


def token_nlls(model, seqs: list[list[int]], batch: int = 16) -> list[np.ndarray]:
    """Per sequence, the NLL (nats, float64) of each token after the first."""
    out: list[np.ndarray] = []
    for ids, mask, logp in _logprob_batches(model, seqs, batch):
        nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        out += [nll[i, :int(mask[i].sum()) - 1].numpy() for i in range(ids.shape[0])]
    return out


def set_perplexity(nlls: list[np.ndarray]) -> float:
    """exp(mean NLL) over every scored token of the set."""
    flat = np.concatenate(nlls) if nlls else np.zeros(0)
    if flat.size == 0:
        raise BakesteerError("every sentence is a single token, so there is nothing to score; give longer sentences.")
    return float(math.exp(flat.mean()))


def sentence_perplexities(nlls: list[np.ndarray]) -> list[float]:
    return [float(math.exp(n.mean())) if n.size else float("nan") for n in nlls]


def prompt_logprobs(model, seqs: list[list[int]], batch: int = 16) -> list[torch.Tensor]:
    """Per prompt, float64 log-probabilities of the next token at every position: [len, vocab]."""
    out: list[torch.Tensor] = []
    for ids, mask, logp in _logprob_batches(model, seqs, batch):
        out += [logp[i, :int(mask[i].sum())] for i in range(ids.shape[0])]
    return out


@dataclass
class Measure:
    """One model's (or one steer's) numbers on the sentence sets and prompts."""

    nlls: dict[str, list[np.ndarray]]  # set name -> per-sentence token NLLs
    logprobs: list[torch.Tensor]  # per prompt [len, vocab]

    def perplexity(self) -> dict[str, float]:
        return {k: set_perplexity(v) for k, v in self.nlls.items()}


def measure(model, sets: dict[str, list[list[int]]], prompts: list[list[int]], batch: int = 16) -> Measure:
    return Measure({k: token_nlls(model, v, batch) for k, v in sets.items()},
                   prompt_logprobs(model, prompts, batch) if prompts else [])


def kl_terms(p: list[torch.Tensor], q: list[torch.Tensor]) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(mean KL(p ‖ q) per position, per-token KL contribution summed over positions, Σ (q − p) per token)."""
    lp, lq = torch.cat(p), torch.cat(q)
    terms = lp.exp() * (lp - lq)
    return float(terms.sum(-1).mean()), terms.sum(0), (lq.exp() - lp.exp()).sum(0)


def _top(values: torch.Tensor, k: int, decode: Callable[[int], str] | None, n_pos: int) -> list[dict]:
    idx = torch.topk(values, k).indices.tolist()
    return [{"token_id": i, "token": decode(i) if decode else str(i), "value": float(values[i]) / n_pos}
            for i in idx]


def contrast(base: Measure, other: Measure, decode: Callable[[int], str] | None = None, top: int = 10) -> dict:
    """``other`` against ``base``: perplexity per set and ratio (other / base), KL and its top tokens."""
    pb, po = base.perplexity(), other.perplexity()
    out: dict = {"perplexity": po, "ratio": {k: po[k] / pb[k] for k in pb}}
    if base.logprobs:
        kl, contrib, gain = kl_terms(base.logprobs, other.logprobs)
        n = sum(x.shape[0] for x in base.logprobs)
        out["kl"] = kl
        out["kl_top_tokens"] = _top(contrib, top, decode, n)  # value: nats per position from that token
        out["promoted_tokens"] = _top(gain, top, decode, n)  # value: mean probability gained
    return out


def sweep(model, vectors: dict[int, np.ndarray], site: str, coefs: list[float], sets: dict[str, list[list[int]]],
          prompts: list[list[int]], decode: Callable[[int], str] | None = None, base: Measure | None = None,
          progress: bool = True, batch: int = 16, top: int = 5) -> dict:
    """Hook steering at every (layer, coefficient); each point contrasted with the unsteered model."""
    base = base or measure(model, sets, prompts, batch)
    points = []
    grid = [(layer, c) for layer in sorted(vectors) for c in coefs]
    for layer, c in bar(iterable=grid, desc="sweep", disable=not progress):
        with steering(network(model), [Steer(site, layer, vectors[layer], c)]):
            m = measure(model, sets, prompts, batch)
        points.append({"layer": layer, "coef": c, **contrast(base, m, decode, top)})
    return {"site": site, "layers": sorted(vectors), "coefs": list(coefs), "source_perplexity": base.perplexity(),
            "points": points, "proposed": propose(points)}


def propose(points: list[dict]) -> dict[str, list[float] | None]:
    """Per layer, the smallest and largest swept coefficient (by size, sign kept) whose steer is visible and not
    destructive by ``bakesteer.strength``'s thresholds: KL over the prompts >= NEGLIGIBLE_KL (when prompts were
    measured) and every set's perplexity ratio <= DESTRUCTIVE_PPL. None where no swept coefficient is."""
    from .strength import DESTRUCTIVE_PPL, NEGLIGIBLE_KL

    out: dict[str, list[float] | None] = {}
    for layer in sorted({p["layer"] for p in points}):
        good = sorted((p["coef"] for p in points if p["layer"] == layer
                       and p.get("kl", math.inf) >= NEGLIGIBLE_KL
                       and max(p["ratio"].values()) <= DESTRUCTIVE_PPL), key=abs)
        out[str(layer)] = [good[0], good[-1]] if good else None
    return out
