"""How strongly a steer moves the model, kept apart from whether a bake reproduces it.

Three figures, measured on the source with the steers hooked (streamed, one block resident):

    KL(source ‖ steered)   mean nats per next-token position over the bundled prompts (data/prompts.txt)
    perplexity             of the bundled general text (data/calib.txt, first STRENGTH_TOKENS tokens),
                           source → steered, and their ratio
    |coef·v| / norm        each vector's size against the median per-token norm of the hidden state at the
                           place it is added (the source's, first position of each text left out: that is
                           where most decoders park an outsized attention-sink activation)

Verdicts, with their thresholds (SmolLM2's love vector at block 5: coef 0.25 gives KL 0.04 and perplexity
×1.03, coef 1 gives KL 0.40 and ×1.6, coef 2 gives ×32 and broken text; scripts/results/eval_love):

    negligible    KL < NEGLIGIBLE_KL: the steered model says what the source says
    destructive   perplexity ratio > DESTRUCTIVE_PPL: the steer breaks the model's language
    visible       everything between
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine import Model, Stream, batches
from .evaluate import read_lines
from .hooks import Steer
from .lm import GapMeter, logprobs, take_tokens
from .paths import BUNDLED
from .steer import as_f64

NEGLIGIBLE_KL = 0.01  # nats/token
DESTRUCTIVE_PPL = 5.0  # steered perplexity over the source's, on general text
STRENGTH_TOKENS = 256  # tokens of general text


@dataclass
class VectorSize:
    site: str
    layer: int
    norm: float  # |coef · v|
    typical: float  # median per-token norm of the hidden state there, unsteered

    @property
    def ratio(self) -> float:
        return self.norm / self.typical if self.typical > 0 else math.inf


@dataclass
class Strength:
    kl: float  # KL(source ‖ steered), nats/token, on the bundled prompts
    ppl_source: float
    ppl_steered: float
    sizes: list[VectorSize] = field(default_factory=list)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_steered / self.ppl_source

    @property
    def verdict(self) -> str:
        if not math.isfinite(self.ppl_ratio) or self.ppl_ratio > DESTRUCTIVE_PPL:
            return "destructive"
        return "negligible" if self.kl < NEGLIGIBLE_KL else "visible"

    def warning(self) -> str | None:
        """One sentence for a negligible or destructive steer, else None."""
        if self.verdict == "negligible":
            return (f"this steer changes almost nothing (KL {self.kl:.2g} < {NEGLIGIBLE_KL} nats/token); raise "
                    "--coef, or pick one with `bakesteer eval --vector FILE --layers N`, which proposes a range")
        if self.verdict == "destructive":
            return (f"this steer breaks the model's language (perplexity ×{self.ppl_ratio:.3g} > "
                    f"×{DESTRUCTIVE_PPL:g} on general text); lower --coef or steer fewer blocks")
        return None

    def lines(self, indent: str = "      ") -> list[str]:
        sizes = "; ".join(f"{s.site}@{s.layer} |coef·v| {s.norm:.3g} = {s.ratio:.2g}× the typical norm "
                          f"{s.typical:.3g}" for s in self.sizes)
        out = [f"{indent}strength ({self.verdict}): KL(source ‖ steered) = {self.kl:.3g} nats/token on the "
               f"bundled prompts; perplexity of general text {self.ppl_source:.3g} → {self.ppl_steered:.3g} "
               f"(×{self.ppl_ratio:.3g})", f"{indent}  {sizes}"]
        w = self.warning()
        return out + ([f"{indent}warning: {w}."] if w else [])

    def doc(self) -> dict:
        return {**asdict(self), "ppl_ratio": self.ppl_ratio, "verdict": self.verdict,
                "thresholds": {"negligible_kl": NEGLIGIBLE_KL, "destructive_ppl_ratio": DESTRUCTIVE_PPL}}


def _norms(store: list[torch.Tensor], masks: list[torch.Tensor]):
    """A capture that keeps the per-token norms (B, T) of batch ``k``'s real positions after the first."""
    def see(k: int, h: torch.Tensor) -> None:  # h: (B, T, H), or OPT's fc2 rows (B*T, H)
        keep = masks[k].bool().clone()
        keep[:, 0] = False
        store.append(h.double().norm(dim=-1).cpu().view(keep.shape)[keep])

    return see


def measure(model: Model, tok, steers: list[Steer], size: int = 4) -> Strength:
    """The three figures for ``steers`` on the source ``model`` (plain and hooked streams, side by side)."""
    prompts = [tok(p)["input_ids"] for p in read_lines(BUNDLED / "prompts.txt")]
    text = take_tokens(tok, read_lines(BUNDLED / "calib.txt"), STRENGTH_TOKENS)
    plain = Stream(batches(prompts, size) + batches(text, size))
    hooked = Stream(batches(prompts, size) + batches(text, size), list(steers))
    n_prompt_batches = len(batches(prompts, size))
    seen: dict[tuple[str, int], list[torch.Tensor]] = {(s.site, s.layer): [] for s in steers}
    plain.captures = {key: _norms(store, [b.mask for b in plain.batches]) for key, store in seen.items()}
    meter, nll = GapMeter(), {"plain": [0.0, 0], "hooked": [0.0, 0]}
    with torch.no_grad():
        model.forward([plain, hooked], logits=False)
        with model.part("head"):  # one batch's logits at a time: (B, T, vocab) is the largest tensor here
            for k, (a, b) in enumerate(zip(plain.batches, hooked.batches, strict=True)):
                p, h = model.head(a.hidden), model.head(b.hidden)
                if k < n_prompt_batches:
                    meter.add(p, h, h, a.mask)
                    continue
                for name, lg in (("plain", p), ("hooked", h)):
                    lp = logprobs(lg[:, :-1])
                    w = (a.mask[:, 1:] * a.mask[:, :-1]).to(lp.device).double()
                    nll[name][0] -= float((lp.gather(-1, a.ids[:, 1:, None].to(lp.device))[..., 0] * w).sum())
                    nll[name][1] += float(w.sum())
    ppl = {k: math.exp(min(v / max(n, 1), 700.0)) for k, (v, n) in nll.items()}  # capped: finite in JSON
    sizes = []
    for s in steers:
        norms = torch.cat(seen[(s.site, s.layer)])
        sizes.append(VectorSize(s.site, s.layer, abs(s.coef) * float(np.linalg.norm(as_f64(s.vector))),
                                float(norms.median())))
    return Strength(meter.gap().kl_source_hooked, ppl["plain"], ppl["hooked"], sizes)


def of_bake(folder: str | Path, device: str | None = "cpu") -> Strength | None:
    """The strength of everything baked into ``folder`` (its source, hooked with its recorded steers), or None
    when there is no tokenizer to read the bundled texts with."""
    from .lm import load_tokenizer
    from .models import has_tokenizer
    from .recipe import load_record

    rec = load_record(folder)
    if not has_tokenizer(Path(folder)):
        return None
    model = Model(rec.recipe["source"]["path"], torch.float32, device)
    try:
        return measure(model, load_tokenizer(folder), rec.steers)
    finally:
        model.close()
