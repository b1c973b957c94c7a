"""Approximate bakes: where a site has no exact fold, fit the nearest bias slots to the hooked model.

The architecture table names the slots (``Arch.approx``): the q, k and o biases of block L+1. The closed
form puts the residual displacement after block L (``coef * v`` for a residual vector) at the o bias of
block L+1, through that block's post-norm where it has one; what it misses is block L+1's attention
reading the residual before the vector arrives. The fit starts there and tunes every slot with Adam on a
local objective: the residual stream after block L+1
(``depth`` blocks past the last steered one), each dimension weighted by its spread, replaying only
those blocks on cached inputs, the model frozen. End-to-end KL on held-out text the fit never saw is the
measure: the better of closed form and fit is kept, and its figures are recorded. It all runs on the
block-streaming engine: only the blocks the fit replays are resident, never the whole model.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .arch import Approx, arch_for, approx_slots
from .errors import BakesteerError
from .lm import Batch, Gap, GapMeter, Model, Stream, batches, take_tokens
from .progress import bar
from .steer import Steer

Slot = tuple[int, str]  # (decoder block, linear module inside it)
MIN_FIT_TOKENS = 64
HELDOUT_TOKENS = 1024  # budget of the held-out measure
MIN_PASSAGES = 4  # at least 3 to fit on and 1 held out
HEAD_POSITIONS = 64  # positions whose float64 log-probabilities the held-out measure holds at once


@dataclass
class Calib:
    fit: list[str]
    heldout: list[str]
    source: str  # "built-in" or the file's path
    sha256: str  # of the whole text as read


def read_calib(path: str | Path | None, seed: int = 0) -> Calib:
    """Passages (one per line, '#' comments skipped), split by ``seed`` into 3/4 for the fit, 1/4 held out."""
    if path is None:
        raw, source = resources.files("bakesteer").joinpath("data/calib.txt").read_bytes(), "built-in"
    else:
        try:
            raw, source = Path(path).read_bytes(), str(path)
        except OSError as e:
            raise BakesteerError(f"cannot read calibration file {path} ({e.strerror}); pass a readable text "
                                 "file.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BakesteerError(f"calibration file {path} is not UTF-8 text; give one passage per line.") from None
    lines = [t.strip() for t in text.splitlines() if t.strip() and not t.lstrip().startswith("#")]
    if len(lines) < MIN_PASSAGES:
        raise BakesteerError(f"calibration text {source} has {len(lines)} passage(s); give at least "
                             f"{MIN_PASSAGES} lines of ordinary text (3/4 to fit on, 1/4 held out to measure).")
    random.Random(seed).shuffle(lines)
    n_held = max(1, len(lines) // 4)
    return Calib(lines[n_held:], lines[:n_held], source, hashlib.sha256(raw).hexdigest())


def tokenized(tok, calib: Calib, tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids to fit on and held-out token ids, or a refusal when there are too few."""
    fit_ids, held_ids = take_tokens(tok, calib.fit, tokens), take_tokens(tok, calib.heldout, HELDOUT_TOKENS)
    n_fit = sum(map(len, fit_ids))
    if n_fit < MIN_FIT_TOKENS or not held_ids:
        raise BakesteerError(f"calibration text {calib.source} gives {n_fit} tokens to fit on; give at least "
                             f"{MIN_FIT_TOKENS} (more lines, or a larger --calib-tokens).")
    return fit_ids, held_ids


def _adds(deltas: dict[Slot, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Slot deltas as the engine's per-block additions: block -> linear -> delta."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for (layer, module), d in deltas.items():
        out.setdefault(layer, {})[module] = d
    return out


def measure(model: Model, steers: list[Steer], approx: list[Steer], candidates: list[dict[Slot, torch.Tensor]],
            seqs: list[list[int]], size: int = 16) -> list[Gap]:
    """The gap of exact ``steers`` plus each candidate's slot deltas standing in for ``approx``, against all
    hooked: one streamed pass of the source, the hooked source and every candidate, the head run in chunks."""
    plain, hooked = Stream(batches(seqs, size)), Stream(batches(seqs, size), steers + approx)
    cands = [Stream(batches(seqs, size), list(steers), adds=_adds(d)) for d in candidates]
    meters = [GapMeter() for _ in candidates]
    with torch.no_grad():
        model.forward([plain, hooked, *cands], logits=False)
        with model.part("head"):
            for k, b in enumerate(plain.batches):
                for row in range(b.ids.shape[0]):
                    n = int(b.mask[row].sum())
                    for lo in range(0, n, HEAD_POSITIONS):
                        at = (slice(row, row + 1), slice(lo, min(n, lo + HEAD_POSITIONS)))
                        s_l, h_l = model.head(b.hidden[at]), model.head(hooked.batches[k].hidden[at])
                        ones = torch.ones(s_l.shape[:2])
                        for meter, c in zip(meters, cands):
                            meter.add(s_l, h_l, model.head(c.batches[k].hidden[at]), ones)
    return [m.gap() for m in meters]


class _Mean:
    """A capture that averages ``fn(hidden)`` over the real positions of the batches it sees."""

    def __init__(self, data: list[Batch], fn=lambda h: h):
        self.data, self.fn, self.acc, self.n = data, fn, 0.0, 0.0

    def __call__(self, k: int, h: torch.Tensor) -> None:
        w = self.data[k].mask.to(h.device).unsqueeze(-1).double()
        self.acc = self.acc + (self.fn(h.detach().double()) * w).sum((0, 1))
        self.n += float(self.data[k].mask.sum())

    @property
    def mean(self) -> torch.Tensor:
        return self.acc / self.n


def _both(a, b):
    def see(k: int, h: torch.Tensor) -> None:
        a(k, h)
        b(k, h)

    return see


@dataclass
class _Gathered:
    """What one streamed pass over blocks 0..hi of the fit text gives the fit."""

    inputs: list[torch.Tensor]  # per batch, block lo's input under the exact steers
    calls: list[dict]  # per batch, every block's arguments
    targets: list[torch.Tensor]  # per batch, the residual after block hi with every steer hooked
    apart: list[torch.Tensor]  # per batch, the same without the approximated steers
    moved: list[_Mean]  # per approximated steer: its block's mean output with all steers, and without it
    rms: _Mean  # mean RMS of the closed form's linear output (for a post-norm), exact steers
    scale: dict[Slot, _Mean]  # mean square of each slot's output, exact steers


def _gather(model: Model, data_ids: list[list[int]], size: int, steers: list[Steer], approx: list[Steer],
            spec: Approx, slots: list[Slot], lo: int, hi: int) -> _Gathered:
    exact, full = Stream(batches(data_ids, size), list(steers)), Stream(batches(data_ids, size), steers + approx)
    without = [Stream(batches(data_ids, size), steers + [a for a in approx if a is not s]) for s in approx]
    means = []
    for s, w in zip(approx, without):
        mf, mw = _Mean(full.batches), _Mean(w.batches)
        full.captures[("resid", s.layer)], w.captures[("resid", s.layer)] = mf, mw
        means.append((mf, mw))
    place = (approx[0].layer + spec.place[0], spec.place[1])
    rms = _Mean(exact.batches, lambda h: h.pow(2).mean(-1, keepdim=True).sqrt())
    scale = {slot: _Mean(exact.batches, lambda h: h.pow(2).mean(-1, keepdim=True)) for slot in slots}
    for (layer, module), fn in [(place, rms), *scale.items()]:
        had = exact.captures.get((module, layer))
        exact.captures[(module, layer)] = fn if had is None else _both(had, fn)
    streams = [exact, full, *without]
    inputs = []
    with torch.no_grad():
        model.embed(streams)
        for i in range(hi + 1):
            if i == lo:
                inputs = [b.hidden.clone() for b in exact.batches]
            with model.part(i) as block:
                model.step(block, i, streams)
    return _Gathered(inputs, [b.calls for b in exact.batches], [b.hidden for b in full.batches],
                     [b.hidden for b in exact.batches], means, rms, scale)


def closed_form(model: Model, approx: list[Steer], g: _Gathered, spec: Approx) -> dict[Slot, torch.Tensor]:
    """Each approximated steer's mean residual displacement after its block, placed at ``spec.place`` (the
    slot's block must be resident, for its post-norm)."""
    arch = arch_for(model.config.to_dict())
    out: dict[Slot, torch.Tensor] = {}
    for s, (with_s, without_s) in zip(approx, g.moved):
        moved = with_s.mean - without_s.mean
        slot = (s.layer + spec.place[0], spec.place[1])
        if spec.post_norm:  # post_norm(z + b) ≈ post_norm(z) + b * gamma / rms(z): invert with the mean rms
            norm = model.model.get_submodule(f"{arch.layers}.{slot[0]}.{spec.post_norm}")
            with torch.no_grad():
                gamma = norm(torch.ones(moved.shape[0], dtype=model.dtype, device=model.device)).double()
            moved = moved * g.rms.mean / torch.where(gamma.abs() > 1e-6, gamma, torch.full_like(gamma, 1e-6))
        out[slot] = out.get(slot, 0) + moved
    return out

@dataclass
class Fit:
    deltas: dict[Slot, np.ndarray]  # float64 bias deltas of the kept result
    chosen: str  # "fitted" or "closed_form"
    closed_form: Gap
    fitted: Gap | None
    fit_seconds: float
    steps: int
    fit_tokens: int
    heldout_tokens: int
    final_loss: float

    def record(self) -> dict:
        return {"chosen": self.chosen, "slots": [f"{b}.{m}" for b, m in sorted(self.deltas)],
                "closed_form": asdict(self.closed_form), "fitted": asdict(self.fitted) if self.fitted else None,
                "fit_seconds": round(self.fit_seconds, 2), "steps": self.steps, "fit_tokens": self.fit_tokens,
                "heldout_tokens": self.heldout_tokens, "final_local_loss": self.final_loss}


def _replay(model: Model, blocks: dict, g: _Gathered, k: int, lo: int, hi: int, steers: list[Steer],
            deltas: dict[Slot, torch.Tensor]) -> torch.Tensor:
    """Batch ``k`` from block lo's input through resident blocks lo..hi, exact steers hooked, slots added."""
    h, adds = g.inputs[k], _adds(deltas)
    for i in range(lo, hi + 1):
        h = model.run_block(blocks[i], i, h, g.calls[k][i], [s for s in steers if s.layer == i], adds=adds.get(i))
    return h


def fit(model: Model, tok, steers: list[Steer], approx: list[Steer], calib: Calib, tokens: int = 512,
        steps: int = 60, lr: float = 0.05, depth: int = 1, seed: int = 0, batch: int = 16,
        progress: bool = True) -> Fit:
    """Fit the table's slots so that ``model`` + exact ``steers`` + slots ≈ ``model`` with all steers hooked.

    ``model`` is a block-streaming ``engine.Model``: one pass over blocks 0..hi gathers the fit's inputs and
    targets, only the blocks the fit replays are resident while it runs, and the held-out measure streams."""
    torch.manual_seed(seed)
    cfg = model.config.to_dict()
    arch = arch_for(cfg)
    spec, slots = None, set()
    for s in approx:
        spec, mine = approx_slots(cfg, s.site, s.layer)
        slots |= set(mine)
    slots = sorted(slots)
    fit_ids, held_ids = tokenized(tok, calib, tokens)
    n_fit = sum(map(len, fit_ids))
    start = time.perf_counter()
    first = [s.layer + (1 if arch.sites[s.site].hook == "" else 0) for s in approx]  # first block that differs
    lo = min(first + [b for b, _ in slots])
    hi = max(s.layer for s in approx) + depth
    g = _gather(model, fit_ids, batch, steers, approx, spec, slots, lo, hi)
    masks = [b.mask.bool().to(model.device) for b in batches(fit_ids, batch)]
    with contextlib.ExitStack() as stack:
        blocks = {i: stack.enter_context(model.part(i)) for i in range(lo, hi + 1)}
        init = closed_form(model, approx, g, spec)
        init = {k: init.get(k, torch.zeros(0)) for k in slots}
        scale, theta = {}, {}
        for slot in init:  # fit in units of each slot's typical output size, so one lr suits every model
            lin = blocks[slot[0]].get_submodule(slot[1])
            scale[slot] = g.scale[slot].mean.sqrt()
            if init[slot].numel() == 0:
                init[slot] = torch.zeros(lin.out_features, dtype=torch.float64, device=model.device)
            theta[slot] = torch.zeros_like(init[slot], dtype=torch.float32, requires_grad=True)
        # each dimension's error in units of its spread over tokens: the few massive dimensions of the
        # residual stream would otherwise decide the fit alone
        flat = torch.cat([t[m] for t, m in zip(g.targets, masks)])
        wdim = 1 / (flat.var(0) + 1e-6 * flat.var(0).mean())
        wdim = wdim / wdim.mean()
        apart = [(t - a).pow(2).mul(wdim).sum(-1) for t, a in zip(g.targets, g.apart)]
        norm = sum(float(a[m].sum()) for a, m in zip(apart, masks)) / n_fit + 1e-30
        current = lambda: {k: (init[k] + scale[k] * theta[k].double()).float() for k in init}  # noqa: E731
        opt = torch.optim.Adam(list(theta.values()), lr=lr)
        loss_value = float("nan")
        with bar(total=steps, desc="fit", unit="step", disable=not progress) as pb:
            for step in range(steps):
                opt.zero_grad()
                total = 0.0
                for k, (t, m) in enumerate(zip(g.targets, masks)):  # gradients accumulate over the batches
                    out = _replay(model, blocks, g, k, lo, hi, steers, current())
                    loss = (out - t).pow(2).mul(wdim).sum(-1)[m].sum() / (n_fit * norm)
                    loss.backward()
                    total += float(loss.detach())
                if not np.isfinite(total) or not all(torch.isfinite(p.grad).all() for p in theta.values()):
                    raise BakesteerError(f"the fit diverged (its loss became {total} at step {step + 1}); nothing "
                                         "was written. Lower --fit-lr or use fewer --fit-steps.")
                opt.step()
                loss_value = total
                pb.update(1)
                pb.set_postfix(loss=f"{total:.4f}")
        fitted = {k: v.detach() for k, v in current().items()}
    seconds = time.perf_counter() - start
    gaps = measure(model, steers, approx, [{k: v.float() for k, v in init.items()}] + ([fitted] if steps else []),
                   held_ids)
    gap_closed, gap_fitted = gaps[0], (gaps[1] if steps else None)
    if gap_fitted is not None and not np.isfinite(gap_fitted.kl_hooked_baked):
        raise BakesteerError("the fit diverged (the fitted model gives non-finite outputs on held-out text); nothing "
                             "was written. Lower --fit-lr or use fewer --fit-steps.")
    better = gap_fitted is not None and gap_fitted.kl_hooked_baked <= gap_closed.kl_hooked_baked
    kept = fitted if better else init
    return Fit({k: v.detach().double().cpu().numpy() for k, v in kept.items()}, "fitted" if better else "closed_form",
               gap_closed, gap_fitted, seconds, steps, n_fit, sum(map(len, held_ids)), loss_value)
