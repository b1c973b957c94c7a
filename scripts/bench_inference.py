"""Tokens/s of greedy generation: source, baked, and hook-based steering (bakesteer, repeng, steering-vectors).

Same vectors (love.svec, resid = output of each --layers block, every position), same coefficient, fixed
prompt, --new-tokens forced, batch 1 and batch 8 (identical prompts, no padding), fp32. Two measures:

1. ``generate()``: each row generates in turn, order rotated every repeat; median tokens/s over repeats and
   its ratio to the source. Whole calls seconds apart, so slow drifts of a shared machine show up here.
2. Paired decode steps: every row decodes the same number of tokens in lockstep; at each step every row
   runs one forward (order rotated each step), so all rows see the same machine state within
   milliseconds. The ratio is total source step time / total row step time, per repeat; a second source
   row ("source, again") is the control that shows this measure's resolution.

A third unsteered row is a bake at coefficient 0: the bias slots the bake writes, holding zeros, so it
costs what the slots cost (Llama's ``mlp_bias`` creates gate, up and down biases in every block).

Every steered row's greedy tokens are checked against the baked model's.

    python scripts/bench_inference.py                       # CPU, SmolLM2-135M-Instruct, block 5
    python scripts/bench_inference.py --layers 3-16         # 14 blocks, repeng's usual many-layer style
    python scripts/bench_inference.py --device cuda --compile   # CUDA graphs (reduce-overhead, static cache)
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from bakesteer.bake import Item, bake
from bakesteer.numbers import parse_layers
from bakesteer.hooks import Steer, steering
from bakesteer.models import ensure_default_model
from bakesteer.vectors import load_vector_file, pick

PROMPT = "Tell me a story about a dog who lives by the sea."
HOOK_ROWS = ("bakesteer hooks", "repeng ControlModel", "steering-vectors apply")
SLOTS_ROW = "bias slots alone (bake at coef 0)"


def repeng_row(source, vecs: dict[int, np.ndarray], coef: float, load):
    """repeng 0.4.0 ControlModel on its own load of the source (it replaces the blocks in place).

    A load, not a deep copy: a copy's weights sit in fresh aligned memory, which alone reads ~1.5 % faster
    than the memory-mapped checkpoint every other row runs on."""
    np.float_ = np.float64  # repeng 0.4.0 names np.float_, removed in NumPy 2
    from repeng import ControlModel, ControlVector

    cm = ControlModel(load(), sorted(vecs))
    cm.set_control(ControlVector(model_type=source.config.model_type,
                                 directions={b: v.astype(np.float32) for b, v in vecs.items()}), coeff=coef)
    return cm, contextlib.nullcontext


def steering_vectors_row(source, vecs: dict[int, np.ndarray], coef: float, load):
    from steering_vectors import SteeringVector

    sv = SteeringVector(layer_activations={b: torch.tensor(v, dtype=torch.float32, device=source.device)
                                           for b, v in vecs.items()}, layer_type="decoder_block")
    return source, lambda: sv.apply(source, multiplier=coef)


def build_rows(src_dir: Path, work: Path, vecs: dict[int, np.ndarray], coef: float, device: str, vector: str) -> dict:
    """name -> (model, context factory) or a string saying why the row is missing.

    Besides the bake, a bake at coefficient 0 writes the same bias slots holding zeros: its row is the cost
    of the slots alone (a config flag such as Llama's ``mlp_bias`` creates a bias in every block)."""
    for tag, c in (("baked", coef), ("slots", 0.0)):
        bake(src_dir, [Item(Steer("resid", b, v, c), {"file": vector}) for b, v in vecs.items()], work / tag,
             progress=False)
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval().to(device)  # noqa: E731
    source = load(src_dir)
    steers = [Steer("resid", b, v, coef) for b, v in vecs.items()]
    rows: dict = {"source": (source, contextlib.nullcontext), "baked": (load(work / "baked"), contextlib.nullcontext),
                  SLOTS_ROW: (load(work / "slots"), contextlib.nullcontext),
                  "bakesteer hooks": (source, lambda: steering(source, steers))}
    for name, make in zip(HOOK_ROWS[1:], (repeng_row, steering_vectors_row)):
        try:
            rows[name] = make(source, vecs, coef, lambda: load(src_dir))
        except ImportError as e:
            rows[name] = f"not installed ({e.name})"
    return rows


def compile_models(rows: dict) -> None:
    """CUDA graphs: compile each distinct model's forward once (hooks are traced into the graph)."""
    for m in {id(r[0]): r[0] for r in rows.values() if not isinstance(r, str)}.values():
        m.forward = torch.compile(m.forward, mode="reduce-overhead", fullgraph=False)


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize()


@torch.inference_mode()
def generate(model, ctx, ids: torch.Tensor, n: int, static: bool) -> tuple[float, torch.Tensor]:
    kw = dict(cache_implementation="static") if static else {}
    with ctx():
        _sync(ids)
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, **kw)
        _sync(ids)
        return time.perf_counter() - t, out[:, ids.shape[1]:]


@torch.inference_mode()
def paired_steps(rows: dict, names: list[str], ids: torch.Tensor, n: int) -> tuple[dict, dict]:
    """Greedy-decode ``n`` tokens with every row in lockstep; per row the summed step seconds and its tokens.

    Each step passes what ``generate`` passes (attention mask, position ids, the cache), so a hook that
    reads them (repeng's padding mask) does its usual work. Prefill is not timed."""
    first = rows[names[0]][0]
    cache_kw = "cache" if "cache" in inspect.signature(first.forward).parameters else "past_key_values"
    state, spent, out = {}, dict.fromkeys(names, 0.0), {k: [] for k in names}
    b, length = ids.shape
    positions = torch.arange(length, device=ids.device).expand(b, -1)
    for k in names:
        model, ctx = rows[k]
        cache = DynamicCache()
        with ctx():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                           use_cache=True, **{cache_kw: cache}).logits
        state[k] = (cache, logits[:, -1].argmax(-1, keepdim=True))
    for step in range(n):
        pos = torch.full((b, 1), length + step, device=ids.device)
        mask = torch.ones(b, length + step + 1, dtype=ids.dtype, device=ids.device)
        for k in names[step % len(names):] + names[:step % len(names)]:
            (model, ctx), (cache, token) = rows[k], state[k]
            out[k].append(token)
            with ctx():
                _sync(ids)
                t = time.perf_counter()
                logits = model(input_ids=token, attention_mask=mask, position_ids=pos, use_cache=True,
                               **{cache_kw: cache}).logits
                _sync(ids)
                spent[k] += time.perf_counter() - t
            state[k] = (cache, logits[:, -1].argmax(-1, keepdim=True))
    return spent, {k: torch.cat(v, 1).cpu() for k, v in out.items()}


def generate_table(rows: dict, live: list[str], batches: list[int], prompt: torch.Tensor, a) -> list[str]:
    times: dict = {(k, b): [] for k in live for b in batches}
    tokens, status = {}, {}
    for rep in range(a.repeats + 1):  # repeat 0 is warm-up
        for b in batches:
            for k in live[rep % len(live):] + live[:rep % len(live)]:
                if (k, b) in status:
                    continue
                model, ctx = rows[k]
                try:
                    dt, out = generate(model, ctx, prompt.expand(b, -1).contiguous(), a.new_tokens, a.compile)
                except Exception as e:  # a peer that cannot run this batch: reported, not fatal
                    status[(k, b)] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:70]}"
                    continue
                tokens[(k, b)] = out.cpu()
                if rep:
                    times[(k, b)].append(dt)
    lines = ["| row | " + " | ".join(f"batch {b} tok/s | × source" for b in batches) + " | same tokens as baked |",
             "|---|" + "---:|---:|" * len(batches) + "---|"]
    for k, r in rows.items():
        cells, same = [], []
        for b in batches:
            if isinstance(r, str) or (k, b) in status:
                cells.append(f"{r if isinstance(r, str) else status[(k, b)]} | –")
                continue
            t, t0 = statistics.median(times[(k, b)]), statistics.median(times[("source", b)])
            cells.append(f"{b * a.new_tokens / t:.1f} | {t0 / t:.3f}")
            if k == "baked":  # the check below means something only if the steer changed the tokens
                moved = not torch.equal(tokens[(k, b)], tokens[("source", b)])
                same.append(f"b{b} {'steered' if moved else 'SAME AS SOURCE'}")
            elif k not in ("source", SLOTS_ROW):
                same.append(f"b{b} {'yes' if torch.equal(tokens[(k, b)], tokens[('baked', b)]) else 'NO'}")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {', '.join(same) or '–'} |")
    return lines


def paired_table(rows: dict, live: list[str], batches: list[int], prompt: torch.Tensor, a) -> list[str]:
    names = live + ["source, again"]
    rows = {**rows, "source, again": rows["source"]}
    ratios = {(k, b): [] for k in names for b in batches}
    step_ms, same = {}, {}
    for rep in range(a.repeats + 1):  # repeat 0 is warm-up
        for b in batches:
            spent, toks = paired_steps(rows, names, prompt.expand(b, -1).contiguous(), a.new_tokens)
            if not rep:
                same.update({(k, b): torch.equal(toks[k], toks["baked"]) for k in names})
                continue
            for k in names:
                ratios[(k, b)].append(spent["source"] / spent[k])
                step_ms.setdefault((k, b), []).append(1e3 * spent[k] / a.new_tokens)
    lines = ["| row | " + " | ".join(f"batch {b} ms/step | × source (median) | range over repeats"
                                      for b in batches) + " | same tokens as baked |",
             "|---|" + "---:|---:|---|" * len(batches) + "---|"]
    for k in names:
        cells = [f"{statistics.median(step_ms[(k, b)]):.2f} | {statistics.median(ratios[(k, b)]):.4f} | "
                 f"{min(ratios[(k, b)]):.4f}–{max(ratios[(k, b)]):.4f}" for b in batches]
        flag = "–" if k in ("source", "source, again", "baked", SLOTS_ROW) else \
            ", ".join(f"b{b} {'yes' if same[(k, b)] else 'NO'}" for b in batches)
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {flag} |")
    for b in batches:
        med = {k: statistics.median(ratios[(k, b)]) for k in names}
        res = max(abs(1 - r) for r in ratios[("source, again", b)])  # the control's worst repeat
        verdict = {k: "ahead of" if med["baked"] - med[k] > res else "behind" if med[k] - med["baked"] > res
                   else "level with" for k in HOOK_ROWS if k in med}
        lines.append(f"\nbatch {b}: baked {med['baked']:.4f}× source (goal ≥ 0.99: "
                     f"{'met' if med['baked'] >= 0.99 else 'missed'}); with the control row's worst repeat "
                     f"(±{res:.4f}) as resolution, baked is " + ", ".join(f"{v} {k}" for k, v in verdict.items()) + ".")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--vector", default="love.svec")
    ap.add_argument("--layers", default="5", help="decoder blocks to steer: 5, 3,5,8 or 3-16")
    ap.add_argument("--coef", type=float, default=1.0)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--measures", default="generate,paired", help="generate, paired or both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile reduce-overhead + static KV cache")
    a = ap.parse_args()
    src = Path(a.model) if a.model else ensure_default_model()
    picked = pick(load_vector_file(a.vector), parse_layers(a.layers), "resid")
    vecs = {block: vec for _, block, vec in picked}
    tok = AutoTokenizer.from_pretrained(src)
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_rows(src, Path(tmp), vecs, a.coef, a.device, a.vector)
    if a.compile:
        compile_models(rows)
    live = [k for k, r in rows.items() if not isinstance(r, str)]
    batches = [int(b) for b in a.batches.split(",")]
    prompt = torch.tensor([tok(PROMPT)["input_ids"]], device=a.device)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or platform.machine()
    blocks = ", ".join(str(b) for b in vecs) if len(vecs) < 4 else f"{min(vecs)}–{max(vecs)}"
    print(f"{src.name}, {a.vector} resid of block{'s' * (len(vecs) > 1)} {blocks} × {a.coef:g}, {a.new_tokens} "
          f"new tokens greedy, fp32, {a.device} ({dev}, {torch.get_num_threads()} threads), torch "
          f"{torch.__version__}{', compiled reduce-overhead + static cache' if a.compile else ''}; "
          f"{a.repeats} repeats after a warm-up")
    if "generate" in a.measures:
        print("\n`generate()`, median over repeats:\n")
        print("\n".join(generate_table(rows, live, batches, prompt, a)))
    if "paired" in a.measures and not a.compile:  # compiled graphs are measured through generate() alone
        print("\nPaired decode steps (every row steps in lockstep, order rotated each step):\n")
        print("\n".join(paired_table(rows, live, batches, prompt, a)))


if __name__ == "__main__":
    main()
