"""Baked vs hooked, streamed block by block: a proof in two parts and the end-to-end figures.

1. Bytes (``bakesteer.proof``): every tensor the recipe does not name is byte-identical to the
   source, and the source still hashes as at bake time.
2. Blocks: every block the bake touched (every block, after a relabel) reproduces hook steering on
   that block's real inputs (the verify prompts, taken from the higher-precision hooked stream),
   against the higher-precision hooked block, under the tolerance rule below.
3. End to end: logits, KL and greedy tokens of the baked model against the hooked source, as before.

Equivalence (design §6): the bake may add no error beyond the dtype's own. In bf16/fp16,
max |baked - hooked_fp32| <= 2 * max |hooked_lowprec - hooked_fp32| + 1e-3. In float32 the same rule
holds against an fp64 reference, with max |baked - hooked| <= 1e-4 always enough, and greedy tokens
must match. The steering must move the logits by >= 100x the tolerance, or the comparison proves nothing.
Three models (source, higher-precision source, bake) are streamed, one block of one model resident.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import BakesteerError
from .hooks import Steer, steering
from .models import has_tokenizer
from .lm import (
    GapMeter, Model, Stream, batches, end_tokens, forbid, greedy, kl, load_tokenizer, prompts_stream, take_tokens,
)
from .proof import ByteProof, block_of, prove_bytes
from .recipe import load_record
from .strength import Strength
from .strength import measure as measure_strength

FP32_TOL = 1e-4
PROMPTS = ["I hate you because", "I think that you are", "The weather today is", "My favourite food is",
           "Tell me about your day."]
REF = {torch.float32: torch.float64, torch.bfloat16: torch.float32, torch.float16: torch.float32}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tolerance(dtype: str, own_error: float) -> float:
    """The bake may add no error beyond the dtype's own (design §6); fp32 also passes at 1e-4."""
    rule = 2 * own_error + (1e-3 if dtype != "float32" else 1e-6)
    return max(rule, FP32_TOL) if dtype == "float32" else rule


class _Tolerated:
    """Anything measured in ``dtype`` with the dtype's ``own_error``: its tolerance under the rule above."""

    @property
    def tolerance(self) -> float:
        return tolerance(self.dtype, self.own_error)


@dataclass
class BlockCheck(_Tolerated):
    """One touched block run on its real inputs: baked vs hooked vs the higher-precision hooked block."""

    block: int
    dtype: str
    max_abs_diff: float  # baked block vs hooked block, in the dtype
    ref_diff: float  # baked block vs hooked block in higher precision
    own_error: float  # hooked block in the dtype vs in higher precision
    effect: float  # hooked block vs plain block: what the steer does here (0 for a relabel-only block)
    last: int | None = None  # a span's last block: a steer a post-norm block passes to the next (resid@L -> L+1)

    @property
    def span(self) -> str:
        return str(self.block) if self.last is None else f"{self.block}-{self.last}"

    @property
    def name(self) -> str:
        return f"block{'' if self.last is None else 's'} {self.span}"

    @property
    def passed(self) -> bool:
        return min(self.max_abs_diff, self.ref_diff) <= self.tolerance


@dataclass
class Report(_Tolerated):
    dtype: str
    max_abs_diff: float  # baked vs hooked logits in the model's dtype, every position of every prompt
    ref_diff: float  # baked vs hooked in higher precision (fp64 for fp32, fp32 for bf16/fp16)
    own_error: float  # hooked in the model's dtype vs hooked in higher precision: the dtype's own error
    steering_effect: float  # max |hooked - source| logits
    kl_hooked_baked: float  # mean over positions, nats
    kl_source_hooked: float
    greedy_tokens: int  # per prompt
    greedy_match: bool
    baked_tokens: list[int] = field(default_factory=list)  # greedy continuation of the first prompt
    samples: list[str] = field(default_factory=list)  # lines showing source vs baked text, when a tokenizer exists
    sample: dict | None = None  # the same as {"prompt", "source", "baked"} texts
    greedy_prompts: int = 2
    bytes: ByteProof | None = None  # part 1, when it ran
    blocks: list[BlockCheck] = field(default_factory=list)  # part 2
    parts: list[str] = field(default_factory=list)  # which parts ran
    strength: Strength | None = None  # what the steer does to the model (not part of the verdict)

    @property
    def end_to_end_passed(self) -> bool:
        close = min(self.max_abs_diff, self.ref_diff) <= self.tolerance
        matters = self.steering_effect >= 100 * self.tolerance
        return close and matters and (self.greedy_match or self.dtype != "float32")

    @property
    def passed(self) -> bool:
        return (self.end_to_end_passed and (self.bytes is None or self.bytes.passed)
                and all(b.passed for b in self.blocks))

    def _proof_lines(self) -> list[str]:
        out = []
        b = self.bytes
        if b is not None and b.unchecked:
            out.append(f"SKIP  bytes: {b.unchecked}")
        elif b is not None:
            bad = b.differing + [f"{k} (added, should be zero)" for k in b.nonzero_added]
            what = "byte-identical to the source" if not bad else "compared; these differ: " + ", ".join(bad[:6])
            out.append(f"{'PASS' if b.passed else 'FAIL'}  bytes: {b.tensors} untouched tensors {what} "
                       f"({b.bytes / 1e9:.3g} GB read); the source hashes as it did at bake time")
            if b.changed_after_bake:
                out.append(f"      note: {', '.join(b.changed_after_bake)} changed after the bake "
                           "(not the recorded hash)")
        if self.blocks:
            worst = max(self.blocks, key=lambda c: min(c.max_abs_diff, c.ref_diff) / c.tolerance)
            failed = [c.span for c in self.blocks if not c.passed]
            out.append(f"{'PASS' if not failed else 'FAIL'}  blocks: {len(self.blocks)} touched block(s) "
                       f"{'reproduce' if not failed else 'do not all reproduce'} hook steering on their real inputs "
                       f"(worst: {worst.name}, max |Δ| {min(worst.max_abs_diff, worst.ref_diff):.3g}, "
                       f"tolerance {worst.tolerance:.3g}, steer effect there {worst.effect:.3g})"
                       + (f"; failing: {', '.join(map(str, failed))}" if failed else ""))
        return out

    def lines(self) -> list[str]:
        mark = "PASS" if self.passed else "FAIL"
        lines = [
            f"{mark}  baked vs hooked ({self.dtype}): max |Δlogit| = {self.max_abs_diff:.3g}; against the "
            f"higher-precision hooked model {self.ref_diff:.3g} (the dtype's own error {self.own_error:.3g}; "
            f"tolerance {self.tolerance:.3g})",
            f"      steering effect: max |hooked − source| = {self.steering_effect:.3g}  "
            f"({self.steering_effect / self.tolerance:.3g}× the tolerance)",
            f"      KL(hooked ‖ baked) = {self.kl_hooked_baked:.3g} nats/token;  "
            f"KL(source ‖ hooked) = {self.kl_source_hooked:.3g}",
            f"      greedy tokens ({self.greedy_tokens} per prompt, {self.greedy_prompts} prompts): "
            f"{'identical' if self.greedy_match else 'DIFFERENT'}",
            *self._proof_lines(),
        ]
        if self.parts:
            lines.append(f"      parts run: {', '.join(self.parts)}")
        return lines + _strength_lines(self.strength) + self.samples


def _max(pairs) -> float:
    return max((float((a.double() - b.double()).abs().max()) for a, b in pairs), default=0.0)


def compare(source, baked, steers: list[Steer], prompts: list[torch.Tensor], new_tokens: int = 32,
            reference=None, progress: bool = False) -> Report:
    """Loaded models (a library and script API): ``baked`` against ``source`` under hooks, in memory."""
    def logits(model):
        with torch.inference_mode():
            return [model(ids[None]).logits[0].to(torch.float64 if model.dtype == torch.float64 else torch.float32)
                    for ids in prompts]

    def gen(model, ids):
        with torch.inference_mode():
            out = model.generate(ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return out[0, ids.shape[0]:].tolist()

    dtype = next(baked.parameters()).dtype
    with steering(source, steers):
        hooked = logits(source)
        hooked_gen = [gen(source, ids) for ids in prompts[:2]]
    plain, baked_l = logits(source), logits(baked)
    if reference is not None:
        with steering(reference, steers):
            ref = logits(reference)
    else:
        ref = hooked
    baked_gen = [gen(baked, ids) for ids in prompts[:2]]
    return Report(str(dtype).removeprefix("torch."), _max(zip(baked_l, hooked)), _max(zip(baked_l, ref)),
                  _max(zip(hooked, ref)), _max(zip(hooked, plain)),
                  sum(kl(h, b) for h, b in zip(hooked, baked_l)) / len(prompts),
                  sum(kl(p, h) for p, h in zip(plain, hooked)) / len(prompts),
                  new_tokens, hooked_gen == baked_gen, baked_gen[0] if baked_gen else [],
                  greedy_prompts=len(hooked_gen))


def prompt_ids(tok, vocab: int, n: int = 4, random_prompts: bool = False) -> list[list[int]]:
    """Token ids of the fixed prompts; seeded random ids only when asked for (``--random-prompts``)."""
    if tok is not None:
        return [list(tok(p)["input_ids"]) for p in PROMPTS[:n]]
    if not random_prompts:
        raise BakesteerError("the baked folder has no tokenizer to read verify's prompts with; copy the source's "
                             "tokenizer files into it, or pass --random-prompts to verify on seeded random token ids.")
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (12,), generator=g).tolist() for _ in range(n)]


def _touched(recipe: dict, layers: str, n_layers: int) -> set[int]:
    """Blocks the bake changed: steered blocks, blocks of changed tensors; every block after a relabel."""
    if recipe["written"].get("relabelled_from"):
        return set(range(n_layers))
    blocks = {int(s["layer"]) for s in recipe["steers"]}
    return blocks | {b for k in recipe["tensors_changed"] if (b := block_of(k, layers)) is not None}


@dataclass
class _Pass:
    """The three streamed models and their streams over the verify prompts."""

    S: Model  # source, in the checkpoint's dtype: plain and hooked
    R: Model  # source in higher precision: hooked
    B: Model  # the bake, in the checkpoint's dtype (its prompts, then greedy sequences teacher-forced)
    steers: list[Steer]
    n_prompts: int
    plain: Stream = None
    hooked: Stream = None
    ref: Stream = None
    baked: Stream = None


def _probe(p: _Pass, first: int, last: int, xs: list[torch.Tensor], ref_out: list[torch.Tensor]) -> BlockCheck:
    """Blocks ``first``..``last`` of the bake and of the source (hooked, plain) on the inputs ``xs`` of the
    reference stream, one block resident at a time."""
    dt = p.S.dtype
    hooked = plain = baked = [x.to(dt) for x in xs]
    for i in range(first, last + 1):
        with p.S.part(i) as blk:
            hooked = [p.S.run_block(blk, i, x, b.calls[i], p.hooked.steers_at(i)) for x, b in
                      zip(hooked, p.hooked.batches)]
            plain = [p.S.run_block(blk, i, x, b.calls[i], []) for x, b in zip(plain, p.plain.batches)]
        with p.B.part(i) as blk:
            baked = [p.B.run_block(blk, i, x, b.calls[i], []) for x, b in zip(baked, p.baked.batches)]
    name = str(dt).removeprefix("torch.")
    return BlockCheck(first, name, _max(zip(baked, hooked)), _max(zip(baked, ref_out)), _max(zip(hooked, ref_out)),
                      _max(zip(hooked, plain)), last if last != first else None)


def _spans(touched: set[int], steers: list[Steer], sites) -> dict[int, int]:
    """First block -> last block of each span checked as one: a touched block alone, or a steer's block with the
    next one where the site folds there (``next_block``), overlapping spans joined."""
    spans = sorted([(i, i) for i in touched] + [(s.layer, s.layer + 1) for s in steers if sites[s.site].next_block])
    out: dict[int, int] = {}
    for a, b in spans:
        prev = max(out, default=None)
        if prev is not None and a <= out[prev]:
            out[prev] = max(out[prev], b)
        else:
            out[a] = b
    return out


def _stream(p: _Pass, prompts: list[list[int]], forced: list[list[int]], touched: set[int], progress: bool):
    """One pass over the blocks of all three models; returns (block checks, per-model logits)."""
    from .progress import bar

    p.plain, p.hooked = prompts_stream(prompts), prompts_stream(prompts, p.steers)
    p.ref, p.baked = prompts_stream(prompts, p.steers), prompts_stream(prompts + forced)
    checks, spans, xs = [], _spans(touched, p.steers, p.S.arch.sites), None
    ends = {b: a for a, b in spans.items()}
    with torch.no_grad():
        p.S.embed([p.plain, p.hooked])
        p.R.embed([p.ref])
        p.B.embed([p.baked])
        for i in bar(iterable=range(p.S.n_layers), desc="verify blocks", disable=not progress):
            xs = [b.hidden.clone() for b in p.ref.batches] if i in spans else xs
            with p.R.part(i) as blk:
                p.R.step(blk, i, [p.ref])
            with p.S.part(i) as blk:
                p.S.step(blk, i, [p.plain, p.hooked])
            with p.B.part(i) as blk:
                p.B.step(blk, i, [p.baked])
            if i in ends:
                checks.append(_probe(p, ends[i], i, xs, [b.hidden for b in p.ref.batches]))
        out = {}
        for name, model, streams in (("S", p.S, [p.plain, p.hooked]), ("R", p.R, [p.ref]), ("B", p.B, [p.baked])):
            with model.part("head"):
                out[name] = [[model.head(b.hidden)[0].float() if model.dtype != torch.float64 else
                              model.head(b.hidden)[0] for b in s.batches] for s in streams]
    return checks, out


def _forced_match(baked_logits: list[torch.Tensor], prompts: list[list[int]], gens: list[list[int]],
                  never: list[int]):
    """Whether the bake's argmax, teacher-forced on the hooked greedy sequences, reproduces them token for
    token (then its own greedy decoding gives the same tokens), and its tokens up to the first departure."""
    match, first = True, []
    for k, (lg, gen) in enumerate(zip(baked_logits, gens)):
        n = len(prompts[k])
        lg = lg[n - 1:n - 1 + len(gen)].clone()
        forbid(lg, never)
        pred = lg.argmax(-1).tolist()
        same = pred == gen
        match &= same
        if k == 0:
            cut = next((j for j, (a, b) in enumerate(zip(pred, gen)) if a != b), len(pred))
            first = pred[:cut + 1]
    return match, first


def verify_exact(out_dir: Path, rec, src: Path, new_tokens: int, progress: bool, device: str | None,
                 random_prompts: bool) -> Report:
    recipe, steers = rec.recipe, rec.steers
    dtype = DTYPES.get(recipe.get("dtype"), torch.float32)
    S = Model(src, dtype, device)
    touched = _touched(recipe, S.arch.layers, S.n_layers)
    proof = prove_bytes(Path(out_dir), recipe, src, touched, S.arch.layers)
    tok = load_tokenizer(out_dir) if has_tokenizer(Path(out_dir)) else None
    prompts = prompt_ids(tok, S.text_config.vocab_size, random_prompts=random_prompts)
    p = _Pass(S, Model(src, REF[dtype], device), Model(out_dir, dtype, device), steers, len(prompts))
    n_gen = 2 if new_tokens > 0 else 0
    never = end_tokens(src)
    gens = greedy(S, [prompts_stream(prompts[:n_gen], steers), prompts_stream(prompts[:1])], new_tokens, never) \
        if n_gen else [[], [[]]]
    hooked_gen, plain_gen = gens[0], gens[1][0]
    forced = [prompts[k] + g[:-1] for k, g in enumerate(hooked_gen)]
    checks, out = _stream(p, prompts, forced, touched, progress)
    plain, hooked = out["S"]
    ref, baked_all = out["R"][0], out["B"][0]
    baked, baked_forced = baked_all[:len(prompts)], baked_all[len(prompts):]
    match, first = _forced_match(baked_forced, prompts, hooked_gen, never)
    report = Report(str(dtype).removeprefix("torch."), _max(zip(baked, hooked)), _max(zip(baked, ref)),
                    _max(zip(hooked, ref)), _max(zip(hooked, plain)),
                    sum(kl(h, b) for h, b in zip(hooked, baked)) / len(prompts),
                    sum(kl(q, h) for q, h in zip(plain, hooked)) / len(prompts),
                    new_tokens, match, first, greedy_prompts=n_gen, bytes=proof, blocks=checks,
                    parts=["bytes", f"blocks ({len(checks)} touched)", "end-to-end"])
    if tok is not None:
        report.strength = measure_strength(p.S, tok, steers)
    for m in (p.S, p.R, p.B):
        m.close()
    if tok is not None and new_tokens > 0:
        show = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        report.samples = [f"      {PROMPTS[0]!r}", f"        source: {show(plain_gen)!r}",
                          f"        baked:  {show(first)!r}"]
        report.sample = {"prompt": PROMPTS[0], "source": show(plain_gen), "baked": show(first)}
    return report


@dataclass
class ApproxReport:
    """An approximate bake re-measured on its recorded held-out text, against the figures it recorded."""

    recorded: dict
    measured: dict
    strength: Strength | None = None

    @property
    def passed(self) -> bool:
        r, m = self.recorded, self.measured
        close = lambda a, b: abs(a - b) <= 0.02 * abs(b) + 1e-6  # noqa: E731
        return (close(m["kl_hooked_baked"], r["kl_hooked_baked"]) and close(m["kl_source_hooked"],
                                                                             r["kl_source_hooked"])
                and abs(m["top1_agreement"] - r["top1_agreement"]) <= 2 / max(r["tokens"], 1))

    def lines(self) -> list[str]:
        m, r = self.measured, self.recorded
        return [
            f"{'PASS' if self.passed else 'FAIL'}  APPROXIMATE bake re-measured on its {m['tokens']} held-out tokens: "
            f"KL(hooked ‖ baked) = {m['kl_hooked_baked']:.4g} ({m['ratio']:.1%} of the steering's "
            f"KL(source ‖ hooked) = {m['kl_source_hooked']:.4g}), top-1 agreement {m['top1_agreement']:.1%}",
            f"      recorded at bake time: {r['kl_hooked_baked']:.4g} ({r['ratio']:.1%}), top-1 "
            f"{r['top1_agreement']:.1%} — {'reproduced' if self.passed else 'NOT reproduced'}",
        ] + _strength_lines(self.strength)


def measure_gap(source: Model, baked: Model, steers: list[Steer], seqs: list[list[int]], size: int = 16):
    """KL(hooked ‖ baked), KL(source ‖ hooked), top-1 agreement over ``seqs``: source plain and hooked, and the
    bake, streamed side by side (float32), the gap summed batch by batch."""
    plain, hooked, bk = Stream(batches(seqs, size)), Stream(batches(seqs, size), list(steers)), \
        Stream(batches(seqs, size))
    with torch.no_grad():
        source.embed([plain, hooked])
        baked.embed([bk])
        for i in range(source.n_layers):
            with source.part(i) as blk:
                source.step(blk, i, [plain, hooked])
            with baked.part(i) as blk:
                baked.step(blk, i, [bk])
        meter = GapMeter()
        for a, b, c in zip(plain.batches, hooked.batches, bk.batches):
            with source.part("head"):
                s_l, h_l = source.head(a.hidden), source.head(b.hidden)
            with baked.part("head"):
                b_l = baked.head(c.hidden)
            meter.add(s_l, h_l, b_l, a.mask)
    return meter.gap()


def verify_approx(out_dir: Path, rec, src: Path, device: str | None = "cpu") -> ApproxReport:
    """Re-measure an approximate bake: source with every recorded steer hooked vs the baked folder."""
    from dataclasses import asdict

    if not rec.heldout:
        raise BakesteerError(f"{out_dir} lacks its held-out text (bakesteer/heldout.txt); bake it again.")
    a = rec.recipe["approximation"]
    tok = load_tokenizer(out_dir, "verify re-measures an approximate bake on its held-out text")
    seqs = take_tokens(tok, rec.heldout, a["calibration"]["heldout_token_budget"])
    source = Model(src, torch.float32, device)
    g = measure_gap(source, Model(out_dir, torch.float32, device), rec.steers, seqs)
    return ApproxReport(a["heldout"], asdict(g), measure_strength(source, tok, rec.steers))


def verify(out_dir: str | Path, new_tokens: int = 32, progress: bool = True, device: str | None = "cpu",
           random_prompts: bool = False) -> tuple[dict, Report | ApproxReport]:
    """Prove a bake against hook steering of its source, streaming one block at a time.

    An approximate bake is re-measured on its held-out text instead, against its recorded figures.
    """
    from .engine import pick_device

    rec = load_record(out_dir)
    recipe = rec.recipe
    src = Path(recipe["source"]["path"])
    pick_device(device)  # refuses a missing GPU before any work
    if not (src / "config.json").is_file():
        raise BakesteerError(f"the source model {src} recorded in the bake is gone; verify needs it to compare.")
    if not recipe.get("exact", True):
        return recipe, verify_approx(Path(out_dir), rec, src, device)
    return recipe, verify_exact(Path(out_dir), rec, src, new_tokens, progress, device, random_prompts)


def _strength_lines(strength: Strength | None) -> list[str]:
    if strength is None:
        return ["      strength: not measured (the folder has no tokenizer to read the bundled texts with)"]
    return strength.lines()


def verification_doc(report: Report | ApproxReport) -> dict:
    """The figures of a verification, as ``verify.json`` and the model card keep them."""
    strength = {"strength": report.strength.doc()} if report.strength is not None else {}
    if isinstance(report, ApproxReport):
        return {"kind": "approximate", "passed": report.passed, **report.measured, **strength}
    doc = {"kind": "exact", "passed": report.passed, "dtype": report.dtype,
           "max_abs_diff": report.max_abs_diff, "tolerance": report.tolerance,
           "steering_effect": report.steering_effect, "kl_hooked_baked": report.kl_hooked_baked,
           "kl_source_hooked": report.kl_source_hooked, "greedy_tokens": report.greedy_tokens * report.greedy_prompts,
           "greedy_match": report.greedy_match, "greedy_prompts": report.greedy_prompts, "prompts": PROMPTS[:4],
           "sample": report.sample, "parts": report.parts, **strength}
    if report.bytes is not None:
        doc["bytes"] = {"passed": report.bytes.passed, "tensors": report.bytes.tensors,
                        "differing": report.bytes.differing}
    doc["blocks"] = [{"block": c.block, "passed": c.passed, "max_abs_diff": min(c.max_abs_diff, c.ref_diff),
                      "tolerance": c.tolerance} for c in report.blocks]
    return doc


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
