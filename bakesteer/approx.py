"""Approximate bakes: where a site has no exact fold, fit the nearest bias slots to the hooked model.

The architecture table names the slots (``Arch.approx``): the q, k and o biases of block L+1. The closed form puts the residual displacement after block L (``coef * v`` for
a residual vector) at the o bias of block L+1, through that block's post-norm where it has one; what
it misses is block L+1's attention reading the residual before the vector arrives. The fit starts
there and tunes every slot with Adam on a local objective: the residual stream after block L+1
(``depth`` blocks past the last steered one), each dimension weighted by its spread, replaying only
those blocks on cached inputs, the model frozen. End-to-end KL on held-out text the fit never saw is the measure: the better of
closed form and fit is kept, and its figures are recorded.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .arch import Approx, arch_for, approx_slots
from .errors import BakesteerError
from .hooks import add_at, steering
from .progress import bar
from .steer import Steer

Slot = tuple[int, str]  # (decoder block, linear module inside it)
MIN_FIT_TOKENS = 64
HELDOUT_TOKENS = 1024  # budget of the held-out measure
MIN_PASSAGES = 4  # at least 3 to fit on and 1 held out


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
            raise BakesteerError(f"cannot read calibration file {path} ({e.strerror}); pass a readable text file.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BakesteerError(f"calibration file {path} is not UTF-8 text; give one passage per line.")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if len(lines) < MIN_PASSAGES:
        raise BakesteerError(f"calibration text {source} has {len(lines)} passage(s); give at least "
                             f"{MIN_PASSAGES} lines of ordinary text (3/4 to fit on, 1/4 held out to measure).")
    random.Random(seed).shuffle(lines)
    n_held = max(1, len(lines) // 4)
    return Calib(lines[n_held:], lines[:n_held], source, hashlib.sha256(raw).hexdigest())


def encode(tok, texts: list[str], budget: int, max_len: int = 256) -> list[list[int]]:
    """Token ids of ``texts`` (each cut to ``max_len``) until ``budget`` tokens are reached."""
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


def tokenized(tok, calib: Calib, tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids to fit on and held-out token ids, or a refusal when there are too few."""
    fit_ids, held_ids = encode(tok, calib.fit, tokens), encode(tok, calib.heldout, HELDOUT_TOKENS)
    n_fit = sum(map(len, fit_ids))
    if n_fit < MIN_FIT_TOKENS or not held_ids:
        raise BakesteerError(f"calibration text {calib.source} gives {n_fit} tokens to fit on; give at least "
                             f"{MIN_FIT_TOKENS} (more lines, or a larger --calib-tokens).")
    return fit_ids, held_ids


def batches(seqs: list[list[int]], size: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, mask) batches."""
    out = []
    for i in range(0, len(seqs), size):
        chunk = seqs[i:i + size]
        n = max(map(len, chunk))
        ids = torch.tensor([s + [0] * (n - len(s)) for s in chunk], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in chunk], device=device)
        out.append((ids, mask))
    return out


@contextlib.contextmanager
def slots_added(model: torch.nn.Module, deltas: dict[Slot, torch.Tensor]) -> Iterator[None]:
    """Within the block, each slot's linear adds its delta to its output: what a changed bias does."""
    layers = arch_for(model.config.to_dict()).layers
    handles = [add_at(model.get_submodule(f"{layers}.{l}.{m}"), d) for (l, m), d in deltas.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Gap:
    """How far an approximation is from the hooked model, on held-out text."""

    kl_hooked_baked: float  # mean over next-token positions, nats
    kl_source_hooked: float  # the steering's own size, for scale
    ratio: float  # kl_hooked_baked / kl_source_hooked
    top1_agreement: float  # share of positions whose argmax equals the hooked model's
    tokens: int


def _logprobs(model, data) -> list[torch.Tensor]:
    with torch.no_grad():
        return [torch.log_softmax(model(input_ids=i, attention_mask=m, use_cache=False).logits.double(), -1)
                for i, m in data]


def gap(source: list[torch.Tensor], hooked: list[torch.Tensor], baked: list[torch.Tensor], data) -> Gap:
    """KL(hooked ‖ baked), KL(source ‖ hooked) and top-1 agreement over the real positions of ``data``."""
    kl_hb = kl_sh = agree = n = 0.0
    for s, h, b, (_, m) in zip(source, hooked, baked, data):
        w = m.double()
        kl_hb += float(((h.exp() * (h - b)).sum(-1) * w).sum())
        kl_sh += float(((s.exp() * (s - h)).sum(-1) * w).sum())
        agree += float(((h.argmax(-1) == b.argmax(-1)).double() * w).sum())
        n += float(w.sum())
    return Gap(kl_hb / n, kl_sh / n, kl_hb / max(kl_sh, 1e-30), agree / n, int(n))


def measure(model, steers: list[Steer], approx: list[Steer], candidates: list[dict[Slot, torch.Tensor]],
            data) -> list[Gap]:
    """The gap of exact ``steers`` plus each candidate's slot deltas standing in for ``approx``, against all hooked."""
    source = _logprobs(model, data)
    with steering(model, steers + approx):
        hooked = _logprobs(model, data)
    out = []
    for deltas in candidates:
        with steering(model, steers), slots_added(model, deltas):
            out.append(gap(source, hooked, _logprobs(model, data), data))
    return out


def _capture(model, data, lo: int, hi: int, steers: list[Steer]) -> list[tuple[torch.Tensor, dict]]:
    """Per batch: block ``lo``'s input hidden state and every block's keyword arguments (masks, rotary)."""
    blocks = model.get_submodule(arch_for(model.config.to_dict()).layers)
    out = []
    for ids, mask in data:
        got: dict = {}

        def pre(mod, args, kwargs, i):
            got.setdefault(i, ((args[0] if args else kwargs["hidden_states"]).detach(),
                               {k: v for k, v in kwargs.items() if k != "hidden_states"}))

        hs = [blocks[i].register_forward_pre_hook(lambda m, a, k, i=i: pre(m, a, k, i), with_kwargs=True)
              for i in range(lo, hi + 1)]
        try:
            with torch.no_grad(), steering(model, steers):
                model(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for h in hs:
                h.remove()
        out.append((got[lo][0], {i: got[i][1] for i in range(lo, hi + 1)}))
    return out


def _replay(blocks, cap: tuple[torch.Tensor, dict], lo: int, hi: int) -> torch.Tensor:
    h, kwargs = cap
    for i in range(lo, hi + 1):
        h = blocks[i](h, **kwargs[i])
        h = h[0] if isinstance(h, tuple) else h
    return h


def _mean_over(model, data, module: torch.nn.Module, fn, steers: list[Steer]) -> torch.Tensor:
    """Mean of ``fn(module output)`` over the real positions of ``data``."""
    acc, n = 0.0, 0.0
    for ids, mask in data:
        got = []
        with torch.no_grad(), steering(model, steers):  # hooked first, so the capture sees the steered output
            h = module.register_forward_hook(lambda m, i, o: got.append(o[0] if isinstance(o, tuple) else o))
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            finally:
                h.remove()
        w = mask.unsqueeze(-1).to(got[0].dtype)
        acc = acc + (fn(got[0].double()) * w).sum((0, 1))
        n += float(mask.sum())
    return acc / n


def closed_form(model, steers: list[Steer], approx: list[Steer], data, spec: Approx) -> dict[Slot, torch.Tensor]:
    """Each approximated steer's mean residual displacement after its block, placed at ``spec.place``."""
    arch = arch_for(model.config.to_dict())
    out: dict[Slot, torch.Tensor] = {}
    for s in approx:
        block = model.get_submodule(f"{arch.layers}.{s.layer}")
        others = steers + [a for a in approx if a is not s]
        moved = _mean_over(model, data, block, lambda h: h, others + [s]) - _mean_over(model, data, block,
                                                                                       lambda h: h, others)
        slot = (s.layer + spec.place[0], spec.place[1])
        if spec.post_norm:  # post_norm(z + b) ≈ post_norm(z) + b * gamma / rms(z): invert with the mean rms
            norm = model.get_submodule(f"{arch.layers}.{slot[0]}.{spec.post_norm}")
            z = model.get_submodule(f"{arch.layers}.{slot[0]}.{slot[1]}")
            rms = _mean_over(model, data, z, lambda h: h.pow(2).mean(-1, keepdim=True).sqrt(), steers)
            ones = torch.ones(moved.shape[0], dtype=next(model.parameters()).dtype,
                              device=moved.device)
            with torch.no_grad():
                gamma = norm(ones).double()
            moved = moved * rms / torch.where(gamma.abs() > 1e-6, gamma, torch.full_like(gamma, 1e-6))
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
        return {"chosen": self.chosen, "slots": [f"{l}.{m}" for l, m in sorted(self.deltas)],
                "closed_form": asdict(self.closed_form), "fitted": asdict(self.fitted) if self.fitted else None,
                "fit_seconds": round(self.fit_seconds, 2), "steps": self.steps, "fit_tokens": self.fit_tokens,
                "heldout_tokens": self.heldout_tokens, "final_local_loss": self.final_loss}


def fit(model, tok, steers: list[Steer], approx: list[Steer], calib: Calib, tokens: int = 512, steps: int = 60,
        lr: float = 0.05, depth: int = 1, seed: int = 0, batch: int = 16, progress: bool = True) -> Fit:
    """Fit the table's slots so that ``model`` + exact ``steers`` + slots ≈ ``model`` with all steers hooked."""
    torch.manual_seed(seed)
    cfg = model.config.to_dict()
    arch = arch_for(cfg)
    device = next(model.parameters()).device
    spec, slots = None, set()
    for s in approx:
        spec, mine = approx_slots(cfg, s.site, s.layer)
        slots |= set(mine)
    fit_ids, held_ids = tokenized(tok, calib, tokens)
    n_fit = sum(map(len, fit_ids))
    fit_data, held_data = batches(fit_ids, batch, device), batches(held_ids, batch, device)
    for p in model.parameters():
        p.requires_grad_(False)

    start = time.perf_counter()
    init = closed_form(model, steers, approx, fit_data, spec)
    init = {k: init.get(k, torch.zeros(0)) for k in sorted(slots)}
    blocks = model.get_submodule(arch.layers)
    scale, theta = {}, {}
    for (l, m) in init:  # fit in units of each slot's typical output size, so one lr suits every model
        lin = model.get_submodule(f"{arch.layers}.{l}.{m}")
        scale[(l, m)] = _mean_over(model, fit_data, lin, lambda h: h.pow(2).mean(-1, keepdim=True), steers).sqrt()
        if init[(l, m)].numel() == 0:
            init[(l, m)] = torch.zeros(lin.out_features, dtype=torch.float64, device=device)
        theta[(l, m)] = torch.zeros_like(init[(l, m)], dtype=torch.float32, requires_grad=True)
    first = [s.layer + (1 if arch.sites[s.site].hook == "" else 0) for s in approx]  # first block that differs
    lo = min(first + [l for l, _ in init])
    hi = max(s.layer for s in approx) + depth
    caps = _capture(model, fit_data, lo, hi, steers)
    steered = _capture(model, fit_data, lo, hi, steers + approx)  # block lo's input may already carry a steer
    with torch.no_grad(), steering(model, steers + approx):
        targets = [_replay(blocks, c, lo, hi) for c in steered]
    masks = [m.bool() for _, m in fit_data]
    # each dimension's error in units of its spread over tokens: the few massive dimensions of the
    # residual stream would otherwise decide the fit alone
    flat = torch.cat([t[m] for t, m in zip(targets, masks)])
    wdim = 1 / (flat.var(0) + 1e-6 * flat.var(0).mean())
    wdim = wdim / wdim.mean()
    with torch.no_grad(), steering(model, steers):
        apart = [(t - _replay(blocks, c, lo, hi)).pow(2).mul(wdim).sum(-1) for t, c in zip(targets, caps)]
    norm = sum(float(a[m].sum()) for a, m in zip(apart, masks)) / n_fit + 1e-30
    current = lambda: {k: (init[k] + scale[k] * theta[k].double()).float() for k in init}  # noqa: E731
    opt = torch.optim.Adam(list(theta.values()), lr=lr)
    loss_value = float("nan")
    with steering(model, steers), bar(total=steps, desc="fit", unit="step", disable=not progress) as pb:
        for step in range(steps):
            opt.zero_grad()
            total = 0.0
            for c, t, m in zip(caps, targets, masks):  # gradients accumulate over the batches
                with slots_added(model, current()):
                    loss = (_replay(blocks, c, lo, hi) - t).pow(2).mul(wdim).sum(-1)[m].sum() / (n_fit * norm)
                loss.backward()
                total += float(loss.detach())
            if not np.isfinite(total) or not all(torch.isfinite(p.grad).all() for p in theta.values()):
                raise BakesteerError(f"the fit diverged (its loss became {total} at step {step + 1}); nothing was "
                                     "written. Lower --fit-lr or use fewer --fit-steps.")
            opt.step()
            loss_value = total
            pb.update(1)
            pb.set_postfix(loss=f"{total:.4f}")
    seconds = time.perf_counter() - start
    fitted = {k: v.detach() for k, v in current().items()}
    gaps = measure(model, steers, approx, [{k: v.float() for k, v in init.items()}] + ([fitted] if steps else []),
                   held_data)
    gap_closed, gap_fitted = gaps[0], (gaps[1] if steps else None)
    if gap_fitted is not None and not np.isfinite(gap_fitted.kl_hooked_baked):
        raise BakesteerError("the fit diverged (the fitted model gives non-finite outputs on held-out text); nothing "
                             "was written. Lower --fit-lr or use fewer --fit-steps.")
    better = gap_fitted is not None and gap_fitted.kl_hooked_baked <= gap_closed.kl_hooked_baked
    kept = fitted if better else init
    return Fit({k: v.detach().double().cpu().numpy() for k, v in kept.items()}, "fitted" if better else "closed_form",
               gap_closed, gap_fitted, seconds, steps, n_fit, sum(map(len, held_ids)), loss_value)
