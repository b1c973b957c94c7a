"""Steering vectors from contrast pairs: one site captured at many blocks in one forward pass per batch.

A text is rendered (template, optional chat template, shared suffix), tokenized once, and run in
length-sorted batches padded on the right whatever the tokenizer's padding side: with causal attention
no real token sees a pad, so every activation equals that of the text run alone (left padding would
leave fully masked pad rows, which some kernels fill with NaN that then reaches real tokens).
Forward hooks on ``site_at(model, site, L)`` reduce each block's output to one vector per text
(last token, mean over tokens, or mean over the suffix); the pass stops after the deepest requested
block, so the final norm and LM head never run. Directions (float64, numpy):

    mean_diff   mean over pairs of (positive - negative)                      Turner / CAA scale
    pca_diff    first principal component of the differences (centred)        repeng's default
    pca_center  first principal component of each pair centred on its middle  repeng's pca_center

PCA directions are unit length, signed so that the positive side projects higher in most pairs.
Explained variance: the PCA's explained-variance ratio; for mean_diff, the share of the differences'
(uncentred) energy along the direction.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .arch import arch_for, check_site
from .errors import BakesteerError
from .paths import bundled_or
from .hooks import site_at, watch
from .engine import Batch, Model, Stream, pick_device
from .progress import bar

AGGREGATIONS = ("last", "mean", "suffix")
METHODS = ("mean_diff", "pca_diff", "pca_center")
PLACEHOLDER = "{text}"
STREAM_TEXTS = 1024  # texts whose hidden states one streamed pass holds


@dataclass(frozen=True)
class Pair:
    positive: str
    negative: str


def _pair(obj, where: str) -> Pair:
    if not isinstance(obj, dict) or not {"positive", "negative"} <= set(obj):
        raise BakesteerError(f"{where} is not an object with 'positive' and 'negative'; write one pair per line.")
    pos, neg = obj["positive"], obj["negative"]
    if not isinstance(pos, str) or not isinstance(neg, str):
        raise BakesteerError(f"{where}: 'positive' and 'negative' must be strings.")
    if not pos.strip() or not neg.strip():
        side = "positive" if not pos.strip() else "negative"
        raise BakesteerError(f"{where} has an empty {side} side; give text on both sides of every pair.")
    return Pair(pos, neg)


def parse_pairs(text: str, name: str, csv_format: bool = False) -> list[Pair]:
    """Pairs from JSONL (or one JSON array) or CSV with columns positive,negative."""
    if csv_format:
        rows = csv.DictReader(io.StringIO(text))
        pairs = [_pair(row, f"{name} line {rows.line_num}") for row in rows]
    elif text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise BakesteerError(f"{name} is not valid JSON ({e}); write a JSON array or one JSON object "
                                 "per line.") from None
        pairs = [_pair(obj, f"{name} item {i}") for i, obj in enumerate(doc)]
    else:
        pairs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                why = e.args[0].split(':')[0]
                raise BakesteerError(f"{name} line {n} is not valid JSON ({why}); fix that line.") from None
            pairs.append(_pair(obj, f"{name} line {n}"))
    if not pairs:
        raise BakesteerError(f"{name} holds no pairs; give at least one {{\"positive\": ..., \"negative\": ...}} pair.")
    return pairs


def load_pairs(path: str | Path) -> list[Pair]:
    """Pairs from a JSONL/JSON/CSV file (a bare name may be a bundled one: ``love_hate.jsonl``)."""
    p = bundled_or(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BakesteerError(f"cannot read pair file {p} ({e.strerror}); check the path given to --pairs.") from None
    except UnicodeDecodeError:
        raise BakesteerError(f"{p} is not UTF-8 text; give a JSONL or CSV file of pairs.") from None
    return parse_pairs(text, str(p), csv_format=p.suffix.lower() == ".csv")


def cli_pairs(pos: list[str], neg: list[str]) -> list[Pair]:
    """Pairs given as --pos/--neg on the command line, in order."""
    if len(pos) != len(neg):
        raise BakesteerError(f"give as many --neg as --pos ({len(pos)} --pos, {len(neg)} --neg).")
    return [_pair({"positive": p, "negative": n}, f"--pos/--neg pair {i + 1}")
            for i, (p, n) in enumerate(zip(pos, neg))]


@dataclass(frozen=True)
class Prompting:
    """How each side becomes a model input: ``template`` around it, an optional chat turn, a shared suffix."""

    template: str = PLACEHOLDER  # each side replaces {text}
    suffix: str = ""  # appended after (after the assistant header in chat mode)
    chat: bool = False  # render the templated side as a user turn with the tokenizer's chat template

    def check(self) -> None:
        if PLACEHOLDER not in self.template:
            raise BakesteerError(f"--template must contain {PLACEHOLDER} where each side of a pair goes.")

    def render(self, tok, text: str) -> tuple[str, int]:
        """(model input text, character index where the suffix starts)."""
        self.check()
        body = self.template.replace(PLACEHOLDER, text)
        if self.chat:
            if not getattr(tok, "chat_template", None):
                raise BakesteerError("this tokenizer has no chat template; drop --chat or use an instruct model.")
            body = tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                           add_generation_prompt=True)
        return body + self.suffix, len(body)

    def describe(self) -> dict:
        return {"template": self.template, "suffix": self.suffix, "chat": self.chat}


@dataclass
class Extracted:
    vectors: dict[int, np.ndarray]  # decoder block -> (hidden,) float64
    explained: dict[int, float]  # block -> share of variance the direction explains
    site: str
    method: str
    aggregation: str
    n_pairs: int
    prompting: dict = field(default_factory=dict)
    spread: dict[int, float] = field(default_factory=dict)  # block -> mean (positive − negative) along v / |v|

    def suggested_coef(self) -> float | None:
        """For unit-length directions (the PCA methods): the median over blocks of the mean projection of
        (positive − negative) onto the direction, so that coef·v moves the hidden state as far along v as the
        pairs differ on average (what mean_diff's coef 1 does). None for mean_diff, whose vectors carry it."""
        if self.method == "mean_diff" or not self.spread:
            return None
        return float(np.median(list(self.spread.values())))


class _Done(Exception):
    """Raised by the deepest hook: nothing after it is needed."""


def _tokenize(tok, texts: list[str], starts: list[int], add_special: bool) -> tuple[list[list[int]], list[list[bool]]]:
    """Token ids per text and, per token, whether it lies in the suffix (starts at char ``starts[i]``)."""
    try:
        enc = tok(texts, add_special_tokens=add_special, return_offsets_mapping=True)
        in_suffix = [[end > s for _, end in offs] for offs, s in zip(enc["offset_mapping"], starts)]
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers: count the suffix's own tokens
        enc = tok(texts, add_special_tokens=add_special)
        in_suffix = []
        for ids, text, s in zip(enc["input_ids"], texts, starts):
            n = len(tok(text[s:], add_special_tokens=False)["input_ids"]) if s < len(text) else 0
            in_suffix.append([i >= len(ids) - n for i in range(len(ids))])
    return [list(ids) for ids in enc["input_ids"]], in_suffix


def _batch(tok, ids: list[list[int]], sel: list[list[bool]], aggregation: str):
    """Padded (input_ids, attention_mask, position_ids, weights) on the CPU; weights (B, T) sum to 1 per row."""
    B, T = len(ids), max(len(x) for x in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    weights = torch.zeros((B, T), dtype=torch.float64)
    for b, (x, s) in enumerate(zip(ids, sel)):  # right padding: causal attention keeps real tokens exact
        input_ids[b, :len(x)] = torch.tensor(x)
        mask[b, :len(x)] = 1
        if aggregation == "last":
            w = [0.0] * (len(x) - 1) + [1.0]
        elif aggregation == "mean":
            w = [1.0 / len(x)] * len(x)
        else:
            n = sum(s)
            w = [1.0 / n if k else 0.0 for k in s]
        weights[b, :len(x)] = torch.tensor(w)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..n-1
    return input_ids, mask, positions, weights


def _reduce(h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden state -> (B, H) float64 on the CPU, weighted over tokens."""
    acc = torch.float32 if h.device.type == "mps" else torch.float64  # exact for "last", any dtype
    if h.dim() == 2:  # OPT's fc1/fc2 run on the flattened (B*T, H) rows
        h = h.view(*weights.shape, h.shape[-1])
    w = weights.to(h.device, acc)
    keep = (w > 0).unsqueeze(-1)  # padded rows may hold NaN in some attention kernels
    return torch.einsum("bt,bth->bh", w, torch.where(keep, h.to(acc), 0.0)).to("cpu", torch.float64)


def _run_loaded(model, site: str, layers: list[int], prepared: list[tuple], out: dict[int, list], pb) -> None:
    """A model in memory: one forward pass per batch that stops after the deepest block."""
    device = model.get_input_embeddings().weight.device  # with device_map="auto": where the inputs go
    deepest, current = max(layers), {}

    def hook_for(layer: int):
        def hook(h: torch.Tensor):  # (B, T, H)
            out[layer].append(_reduce(h, current["weights"]))
            if layer == deepest:
                raise _Done

        return hook

    handles = [watch(*site_at(model, site, L), hook_for(L)) for L in layers]
    try:
        for input_ids, mask, positions, weights in prepared:
            current["weights"] = weights
            try:
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                      position_ids=positions.to(device), use_cache=False)
            except _Done:
                pass
            pb.update(input_ids.shape[0])
    finally:
        for h in handles:
            h.remove()


def _run_streamed(model: Model, site: str, layers: list[int], prepared: list[tuple], out: dict[int, list],
                  pb, group: int = STREAM_TEXTS) -> None:
    """Block streaming: blocks 0 to the deepest requested one, every batch of a group of texts per block."""
    for g in range(0, len(prepared), max(1, group // max(1, prepared[0][0].shape[0]))):
        part = prepared[g:g + max(1, group // max(1, prepared[0][0].shape[0]))]
        caps = {(site, L): (lambda k, h, L=L, part=part: out[L].append(_reduce(h, part[k][3]))) for L in layers}
        stream = Stream([Batch(i, m, p) for i, m, p, _ in part], captures=caps)
        model.forward([stream], upto=max(layers), logits=False)
        pb.update(sum(x[0].shape[0] for x in part))


@torch.inference_mode()
def capture(model, tok, texts: list[str], starts: list[int], site: str, layers: list[int], aggregation: str = "last",
            batch_size: int = 32, add_special_tokens: bool = True, progress: bool = False) -> dict[int, np.ndarray]:
    """Block -> (len(texts), hidden) float64: ``site`` of each block, reduced over each text's tokens.

    ``model`` is a block-streaming ``engine.Model`` (blocks 0 to the deepest requested one are read once per
    group of texts) or a model in memory."""
    check_site(site)
    if aggregation not in AGGREGATIONS:
        raise BakesteerError(f"unknown aggregation {aggregation!r}; choose one of: {', '.join(AGGREGATIONS)}.")
    ids, sel = _tokenize(tok, texts, starts, add_special_tokens)
    for i, (x, s) in enumerate(zip(ids, sel)):
        if not x:
            raise BakesteerError(f"text {i} tokenizes to nothing; give non-empty text on both sides of every pair.")
        if aggregation == "suffix" and not any(s):
            raise BakesteerError("--aggregate suffix averages over the shared suffix; give one with --suffix.")
    out: dict[int, list] = {L: [] for L in layers}
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # similar lengths together: less padding
    prepared = [_batch(tok, [ids[i] for i in order[k:k + batch_size]], [sel[i] for i in order[k:k + batch_size]],
                       aggregation) for k in range(0, len(order), batch_size)]
    run = _run_streamed if isinstance(model, Model) else _run_loaded
    with bar(total=len(texts), desc="extract", unit="text", disable=not progress) as pb:
        run(model, site, layers, prepared, out, pb)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {L: torch.cat(out[L])[inverse].numpy() for L in layers}


def direction(pos: np.ndarray, neg: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    """One layer's direction from (n, hidden) positive and negative activations, and its explained variance."""
    diffs = pos - neg  # (n, hidden)
    if method == "mean_diff":
        v = diffs.mean(0)
        energy = float((diffs ** 2).sum())
        return v, float(((diffs @ v) ** 2).sum() / (v @ v) / energy) if energy > 0 and v @ v > 0 else 0.0
    if method == "pca_diff":
        if len(diffs) < 2:
            raise BakesteerError("pca_diff needs at least 2 pairs (it centres the differences); "
                                 "use --method mean_diff.")
        train = diffs - diffs.mean(0)
    elif method == "pca_center":
        train = np.concatenate([diffs / 2, -diffs / 2])  # each pair centred on its middle (mean zero already)
    else:
        raise BakesteerError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}.")
    v, ratio = _top_component(train)
    proj = diffs @ v  # positive minus negative projection, per pair
    higher, lower = (proj > 0).mean(), (proj < 0).mean()
    if lower > higher or (lower == higher and proj.sum() < 0):
        v = -v
    return v, ratio


def _top_component(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit first right singular vector of (m, hidden) ``x`` and its share of the variance, from the smaller
    Gram matrix (m x m or hidden x hidden): an eigh there is far cheaper than an SVD of ``x`` (torch's LAPACK,
    float64: numpy's threaded OpenBLAS eigh was 100x slower on a busy machine)."""
    t = torch.from_numpy(x)
    wide = t.shape[0] <= t.shape[1]
    gram = t @ t.T if wide else t.T @ t
    total = float(gram.trace())
    if total <= 0:
        raise BakesteerError("the positive and negative sides give identical activations; use pairs that differ.")
    w, u = torch.linalg.eigh(gram)
    v = (t.T @ u[:, -1] if wide else u[:, -1]).numpy()
    return v / np.linalg.norm(v), float(w[-1]) / total


def extract(model, tok, pairs: list[Pair], site: str = "resid", layers: list[int] | None = None,
            aggregation: str = "last", method: str = "mean_diff", prompting: Prompting = Prompting(),
            batch_size: int = 32, progress: bool = False) -> Extracted:
    """Directions for ``site`` at each block of ``layers`` (default: all) from contrast ``pairs``."""
    check_site(site)
    if method not in METHODS:
        raise BakesteerError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}.")
    if not pairs:
        raise BakesteerError("no pairs given; give --pairs FILE or --pos/--neg.")
    cfg = model.config.to_dict()
    _, n_layers = arch_for(cfg).hidden_and_layers(arch_for(cfg).config(cfg))
    layers = sorted(set(range(n_layers) if layers is None else layers))
    bad = [L for L in layers if not 0 <= L < n_layers]
    if bad:
        raise BakesteerError(f"layer {bad[0]} is out of range; this model has blocks 0 to {n_layers - 1}.")
    if batch_size < 1:
        raise BakesteerError("--batch-size must be at least 1.")
    rendered = [prompting.render(tok, t) for p in pairs for t in (p.positive, p.negative)]  # pos, neg, pos, ...
    acts = capture(model, tok, [r[0] for r in rendered], [r[1] for r in rendered], site, layers, aggregation,
                   batch_size, add_special_tokens=not prompting.chat, progress=progress)
    vectors, explained, spread = {}, {}, {}
    for L in layers:
        pos, neg = acts[L][0::2], acts[L][1::2]
        vectors[L], explained[L] = direction(pos, neg, method)
        norm = float(np.linalg.norm(vectors[L]))
        spread[L] = float(((pos - neg) @ vectors[L]).mean() / norm) if norm > 0 else 0.0
    return Extracted(vectors, explained, site, method, aggregation, len(pairs), prompting.describe(), spread)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(ref: str | None, device: str = "cpu", dtype: str = "float32", quiet: bool = False):
    """(model, tokenizer, identity) for extraction: a block-streaming ``engine.Model`` ('auto': CUDA if any)."""
    from .lm import load_tokenizer
    from .models import resolve_model

    if dtype not in DTYPES:
        raise BakesteerError(f"unknown --dtype {dtype}; choose one of: {', '.join(DTYPES)}.")
    path, name, source = resolve_model(ref)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise BakesteerError(f"{path} has no readable config.json; pass a Hugging Face model folder with "
                             "--model.") from None
    arch = arch_for(cfg)
    hidden, n_layers = arch.hidden_and_layers(arch.config(cfg))
    tok = load_tokenizer(path, "extraction needs one")
    model = Model(path, DTYPES[dtype], pick_device(device))
    identity = {"model_type": cfg.get("model_type"), "name": name, "hidden_size": hidden,
                "num_hidden_layers": n_layers, "architectures": cfg.get("architectures"), **source}
    if ref is not None and Path(ref).is_dir():
        identity["path"] = str(Path(ref).resolve())
    return model, tok, identity
