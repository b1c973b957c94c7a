"""Tokens/s of greedy generation: source, baked, and hook-based steering (bakesteer, repeng, steering-vectors).

Same vector (love.svec, block --layer, resid = output of that block, every position), same coefficient,
fixed prompt, --new-tokens forced, batch 1 and batch 8 (identical prompts, no padding), fp32. Rows are
interleaved and their order rotated every repeat; the median of the repeats is reported with its ratio
to the source. Every steered row's greedy tokens are checked against the baked model's.

    python scripts/bench_inference.py                       # CPU, SmolLM2-135M-Instruct
    python scripts/bench_inference.py --device cuda --compile   # CUDA graphs: torch.compile reduce-overhead + static cache
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bakesteer.bake import Item, bake
from bakesteer.hooks import Steer, steering
from bakesteer.models import ensure_default_model
from bakesteer.vectors import load_vector_file, pick

PROMPT = "Tell me a story about a dog who lives by the sea."


def repeng_row(source, layer: int, vec: np.ndarray, coef: float):
    """repeng 0.4.0 ControlModel on a copy of the source (it replaces the block in place)."""
    np.float_ = np.float64  # repeng 0.4.0 names np.float_, removed in NumPy 2
    from repeng import ControlModel, ControlVector

    cm = ControlModel(copy.deepcopy(source), [layer])
    cm.set_control(ControlVector(model_type=source.config.model_type, directions={layer: vec.astype(np.float32)}),
                   coeff=coef)
    return cm, contextlib.nullcontext


def steering_vectors_row(source, layer: int, vec: np.ndarray, coef: float):
    from steering_vectors import SteeringVector

    sv = SteeringVector(layer_activations={layer: torch.tensor(vec, dtype=torch.float32, device=source.device)},
                        layer_type="decoder_block")
    return source, lambda: sv.apply(source, multiplier=coef)


def build_rows(src_dir: Path, baked_dir: Path, layer: int, vec: np.ndarray, coef: float, device: str) -> dict:
    """name -> (model, context factory) or a string saying why the row is missing."""
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval().to(device)  # noqa: E731
    source, baked = load(src_dir), load(baked_dir)
    steers = [Steer("resid", layer, vec, coef)]
    rows: dict = {"source": (source, contextlib.nullcontext), "baked": (baked, contextlib.nullcontext),
                  "bakesteer hooks": (source, lambda: steering(source, steers))}
    for name, make in (("repeng ControlModel", repeng_row), ("steering-vectors apply", steering_vectors_row)):
        try:
            rows[name] = make(source, layer, vec, coef)
        except ImportError as e:
            rows[name] = f"not installed ({e.name})"
    return rows


def compile_models(rows: dict) -> None:
    """CUDA graphs: compile each distinct model's forward once (hooks are traced into the graph)."""
    for m in {id(r[0]): r[0] for r in rows.values() if not isinstance(r, str)}.values():
        m.forward = torch.compile(m.forward, mode="reduce-overhead", fullgraph=False)


@torch.inference_mode()
def generate(model, ctx, ids: torch.Tensor, n: int, static: bool) -> tuple[float, torch.Tensor]:
    kw = dict(cache_implementation="static") if static else {}
    with ctx():
        if ids.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, **kw)
        if ids.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t, out[:, ids.shape[1]:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--vector", default="love.svec")
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--coef", type=float, default=1.0)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile reduce-overhead + static KV cache")
    a = ap.parse_args()
    src = Path(a.model) if a.model else ensure_default_model()
    site, block, vec = pick(load_vector_file(a.vector), [a.layer], "resid")[0]
    tok = AutoTokenizer.from_pretrained(src)
    with tempfile.TemporaryDirectory() as tmp:
        bake(src, [Item(Steer(site, block, vec, a.coef), {"file": a.vector})], Path(tmp) / "baked", progress=False)
        rows = build_rows(src, Path(tmp) / "baked", block, vec, a.coef, a.device)
    if a.compile:
        compile_models(rows)
    live = [k for k, r in rows.items() if not isinstance(r, str)]
    batches = [int(b) for b in a.batches.split(",")]
    prompt = torch.tensor([tok(PROMPT)["input_ids"]], device=a.device)
    times: dict = {(k, b): [] for k in live for b in batches}
    tokens: dict = {}
    status: dict = {}
    for rep in range(a.repeats + 1):  # repeat 0 is warm-up
        for b in batches:
            order = live[rep % len(live):] + live[:rep % len(live)]
            for k in order:
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
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"{platform.processor() or platform.machine()}"
    print(f"{src.name}, {a.vector} resid of block {block} × {a.coef:g}, {a.new_tokens} new tokens greedy, fp32, "
          f"{a.device} ({dev}, {torch.get_num_threads()} threads), torch {torch.__version__}"
          f"{', compiled reduce-overhead + static cache' if a.compile else ''}; median of {a.repeats} interleaved repeats (best: fastest run of each row)")
    print("| row | " + " | ".join(f"batch {b} tok/s | × source | × source (best)" for b in batches)
          + " | same tokens as baked |")
    print("|---|" + "---:|---:|---:|" * len(batches) + "---|")
    for k, r in rows.items():
        cells, same = [], []
        for b in batches:
            if isinstance(r, str) or (k, b) in status:
                cells.append(f"{r if isinstance(r, str) else status[(k, b)]} | – | –")
                continue
            t, t0 = times[(k, b)], times[("source", b)]
            tps = b * a.new_tokens / statistics.median(t)
            cells.append(f"{tps:.1f} | {statistics.median(t0) / statistics.median(t):.3f} | {min(t0) / min(t):.3f}")
            if k != "source":
                same.append(f"b{b} {'yes' if torch.equal(tokens[(k, b)], tokens[('baked', b)]) else 'NO'}")
        print(f"| {k} | " + " | ".join(cells) + f" | {', '.join(same) or '–'} |")


if __name__ == "__main__":
    main()
