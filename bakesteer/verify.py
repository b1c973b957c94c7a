"""Baked vs hooked: rerun a bake's recipe with hooks on the source model and compare logits and tokens.

Equivalence (design §6): the bake may add no error beyond the dtype's own. In bf16/fp16,
max |baked - hooked_fp32| <= 2 * max |hooked_lowprec - hooked_fp32| + 1e-3. In float32 the same rule
holds against an fp64 reference, with max |baked - hooked| <= 1e-4 always enough, and greedy tokens
must match. The steering must move the logits by >= 100x the tolerance, or the comparison proves nothing.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import BakesteerError
from .hooks import Steer, steering
from .recipe import load_record
from .progress import bar

FP32_TOL = 1e-4
PROMPTS = ["I hate you because", "I think that you are", "The weather today is", "My favourite food is", "Tell me about your day."]


@dataclass
class Report:
    dtype: str
    max_abs_diff: float  # baked vs hooked logits in the model's dtype, every position of every prompt
    ref_diff: float  # baked vs hooked in higher precision (fp64 for fp32, fp32 for bf16/fp16)
    own_error: float  # hooked in the model's dtype vs hooked in higher precision: the dtype's own error
    steering_effect: float  # max |hooked - source| logits
    kl_hooked_baked: float  # mean over positions, nats
    kl_source_hooked: float
    greedy_tokens: int
    greedy_match: bool
    baked_tokens: list[int] = field(default_factory=list)  # greedy continuation of the first prompt
    samples: list[str] = field(default_factory=list)  # lines showing source vs baked text, when a tokenizer exists
    sample: dict | None = None  # the same as {"prompt", "source", "baked"} texts

    @property
    def tolerance(self) -> float:
        """The bake may add no error beyond the dtype's own (design §6); fp32 also passes at 1e-4."""
        rule = 2 * self.own_error + (1e-3 if self.dtype != "float32" else 1e-6)
        return max(rule, FP32_TOL) if self.dtype == "float32" else rule

    @property
    def passed(self) -> bool:
        close = min(self.max_abs_diff, self.ref_diff) <= self.tolerance
        matters = self.steering_effect >= 100 * self.tolerance
        return close and matters and (self.greedy_match or self.dtype != "float32")

    def lines(self) -> list[str]:
        mark = "PASS" if self.passed else "FAIL"
        return [
            f"{mark}  baked vs hooked ({self.dtype}): max |Δlogit| = {self.max_abs_diff:.3g}; against the "
            f"higher-precision hooked model {self.ref_diff:.3g} (the dtype's own error {self.own_error:.3g}; "
            f"tolerance {self.tolerance:.3g})",
            f"      steering effect: max |hooked − source| = {self.steering_effect:.3g}  "
            f"({self.steering_effect / self.tolerance:.3g}× the tolerance)",
            f"      KL(hooked ‖ baked) = {self.kl_hooked_baked:.3g} nats/token;  KL(source ‖ hooked) = {self.kl_source_hooked:.3g}",
            f"      greedy {self.greedy_tokens} tokens: {'identical' if self.greedy_match else 'DIFFERENT'}",
            *self.samples,
        ]


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p = torch.log_softmax(p_logits.double(), -1)
    q = torch.log_softmax(q_logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@torch.inference_mode()
def _logits(model, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model(ids[None]).logits[0].to(torch.float64 if model.dtype == torch.float64 else torch.float32)
            for ids in prompts]


@torch.inference_mode()
def _greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    out = model.generate(ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return out[0, ids.shape[0]:].tolist()


def compare(source, baked, steers: list[Steer], prompts: list[torch.Tensor], new_tokens: int = 32,
            reference=None, progress: bool = False) -> Report:
    """Compare ``baked`` with ``source`` under hooks, both in the same dtype.

    ``reference`` is the source in higher precision (fp64 for an fp32 model, fp32 for bf16/fp16); it
    measures the dtype's own error. Without it, the dtype's own error counts as zero.
    """
    dtype = next(baked.parameters()).dtype
    with steering(source, steers):
        hooked = _logits(source, prompts)
    plain = _logits(source, prompts)
    baked_l = _logits(baked, prompts)
    if reference is not None:
        with steering(reference, steers):
            hooked_ref = _logits(reference, prompts)
    else:
        hooked_ref = hooked
    diff = max(float((b - h).abs().max()) for b, h in zip(baked_l, hooked))
    ref_diff = max(float((b.double() - r.double()).abs().max()) for b, r in zip(baked_l, hooked_ref))
    own = max(float((h.double() - r.double()).abs().max()) for h, r in zip(hooked, hooked_ref))
    effect = max(float((h - p).abs().max()) for h, p in zip(hooked, plain))
    kl_hb = sum(_kl(h, b) for h, b in zip(hooked, baked_l)) / len(prompts)
    kl_sh = sum(_kl(p, h) for p, h in zip(plain, hooked)) / len(prompts)
    match, n_tok, first = True, 0, []
    for ids in bar(iterable=prompts[:2], desc="greedy generation", disable=not progress):
        with steering(source, steers):
            a = _greedy(source, ids, new_tokens)
        b = _greedy(baked, ids, new_tokens)
        match &= a == b
        n_tok += new_tokens
        first = first or b
    return Report(str(dtype).removeprefix("torch."), diff, ref_diff, own, effect, kl_hb, kl_sh, n_tok, match, first)


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception:  # a bare test model: no tokenizer files
        return None


def prompt_ids(tok, vocab: int, n: int = 4) -> list[torch.Tensor]:
    """Token ids of the fixed prompts; seeded random ids when there is no tokenizer."""
    if tok is not None:
        return [torch.tensor(tok(p)["input_ids"]) for p in PROMPTS[:n]]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (12,), generator=g) for _ in range(n)]


@dataclass
class ApproxReport:
    """An approximate bake re-measured on its recorded held-out text, against the figures it recorded."""

    recorded: dict
    measured: dict

    @property
    def passed(self) -> bool:
        r, m = self.recorded, self.measured
        close = lambda a, b: abs(a - b) <= 0.02 * abs(b) + 1e-6  # noqa: E731
        return (close(m["kl_hooked_baked"], r["kl_hooked_baked"]) and close(m["kl_source_hooked"], r["kl_source_hooked"])
                and abs(m["top1_agreement"] - r["top1_agreement"]) <= 2 / max(r["tokens"], 1))

    def lines(self) -> list[str]:
        m, r = self.measured, self.recorded
        return [
            f"{'PASS' if self.passed else 'FAIL'}  APPROXIMATE bake re-measured on its {m['tokens']} held-out tokens: "
            f"KL(hooked ‖ baked) = {m['kl_hooked_baked']:.4g} ({m['ratio']:.1%} of the steering's "
            f"KL(source ‖ hooked) = {m['kl_source_hooked']:.4g}), top-1 agreement {m['top1_agreement']:.1%}",
            f"      recorded at bake time: {r['kl_hooked_baked']:.4g} ({r['ratio']:.1%}), top-1 "
            f"{r['top1_agreement']:.1%} — {'reproduced' if self.passed else 'NOT reproduced'}",
        ]


def verify_approx(out_dir: Path, rec, src: Path) -> ApproxReport:
    """Re-measure an approximate bake: source with every recorded steer hooked vs the baked folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .approx import _logprobs, batches, encode, gap

    if not rec.heldout:
        raise BakesteerError(f"{out_dir} lacks its held-out text (bakesteer/heldout.txt); bake it again.")
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
    source, baked = load(src), load(out_dir)
    a = rec.recipe["approximation"]
    data = batches(encode(AutoTokenizer.from_pretrained(out_dir), rec.heldout, a["calibration"]["heldout_token_budget"]),
                   16, "cpu")
    plain = _logprobs(source, data)
    with steering(source, rec.steers):
        hooked = _logprobs(source, data)
    return ApproxReport(a["heldout"], asdict(gap(plain, hooked, _logprobs(baked, data), data)))


def verify(out_dir: str | Path, new_tokens: int = 32, progress: bool = True) -> tuple[dict, Report | ApproxReport]:
    """Load the source with hooks and the baked folder, and compare them on fixed prompts.

    An approximate bake is re-measured on its held-out text instead, against its recorded figures.
    """
    from transformers import AutoModelForCausalLM

    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    rec = load_record(out_dir)
    recipe, steers = rec.recipe, rec.steers
    src = Path(recipe["source"]["path"])
    if not (src / "config.json").is_file():
        raise BakesteerError(f"the source model {src} recorded in the bake is gone; verify needs it to compare.")
    if not recipe.get("exact", True):
        return recipe, verify_approx(Path(out_dir), rec, src)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(recipe.get("dtype"), torch.float32)
    load = lambda p, dt: AutoModelForCausalLM.from_pretrained(p, dtype=dt).eval()  # noqa: E731
    source = load(src, dtype)
    reference = load(src, torch.float64 if dtype == torch.float32 else torch.float32)
    tok = _tokenizer(Path(out_dir))
    prompts = prompt_ids(tok, source.config.vocab_size)
    report = compare(source, load(out_dir, dtype), steers, prompts, new_tokens, reference, progress=progress)
    if tok is not None:
        plain = _greedy(source, prompts[0], new_tokens)
        show = lambda ids: repr(tok.decode(ids, skip_special_tokens=True))  # noqa: E731
        report.samples = [f"      {PROMPTS[0]!r}", f"        source: {show(plain)}",
                          f"        baked:  {show(report.baked_tokens)}"]
        report.sample = {"prompt": PROMPTS[0], "source": tok.decode(plain, skip_special_tokens=True),
                         "baked": tok.decode(report.baked_tokens, skip_special_tokens=True)}
    return recipe, report


def verification_doc(report: Report | ApproxReport) -> dict:
    """The figures of a verification, as ``verify.json`` and the model card keep them."""
    if isinstance(report, ApproxReport):
        return {"kind": "approximate", "passed": report.passed, **report.measured}
    return {"kind": "exact", "passed": report.passed, "dtype": report.dtype,
            "max_abs_diff": report.max_abs_diff, "tolerance": report.tolerance,
            "steering_effect": report.steering_effect, "kl_hooked_baked": report.kl_hooked_baked,
            "kl_source_hooked": report.kl_source_hooked, "greedy_tokens": report.greedy_tokens,
            "greedy_match": report.greedy_match, "prompts": PROMPTS[:4], "sample": report.sample}


def record_verification(out_dir: str | Path, recipe: dict, report: Report | ApproxReport) -> None:
    """Keep the figures in ``bakesteer/verify.json`` and put them into the model card (README.md)."""
    from .card import render
    from .recipe import SIDE, VERIFIED

    out = Path(out_dir)
    doc = verification_doc(report)
    try:
        (out / SIDE / VERIFIED).write_text(json.dumps(doc, indent=2) + "\n")
        (out / "README.md").write_text(render(recipe, doc))
    except OSError:
        pass  # a read-only folder: the figures were printed, the card stays as it was
