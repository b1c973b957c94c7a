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

A third measure, ``--measures runtimes`` (a separate invocation: it converts the bake for each runtime), is
what a bake unlocks: steered tokens/s of the fastest PyTorch hook path (bakesteer hooks on the source; the
paired table's fastest hook row) against the baked model in PyTorch, llama.cpp (the baked folder through
llama.cpp's convert_hf_to_gguf.py at f32; the bake straight into a Q4_1 GGUF), CTranslate2 (float32, int8) and
ONNX Runtime (onnxruntime-genai, fp32). Batch 1, greedy, ``--threads`` threads each, the same prompt and the
same number of new tokens in every runtime (end-of-sequence held back, as ``min_new_tokens`` does); timed from
the prompt's ids to the last new token (prefill included), after one short warm-up; rounds interleaved, order
rotated each round, medians. Conversions happen once, into a temporary folder, timed on their own.

    python scripts/bench_inference.py                       # CPU, SmolLM2-135M-Instruct, block 5
    python scripts/bench_inference.py --measures runtimes   # llama.cpp, CTranslate2, ONNX Runtime (~5 min)
    python scripts/bench_inference.py --layers 3-16         # 14 blocks, repeng's usual many-layer style
    python scripts/bench_inference.py --device cuda --compile   # CUDA graphs (reduce-overhead, static cache)
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from bakesteer.bake import Item, bake
from bakesteer.gguf_bake import bake_gguf
from bakesteer.numbers import parse_layers
from bakesteer.hooks import Steer, steering
from bakesteer.models import ensure_default_model, smollm2_gguf
from bakesteer.vectors import load_vector_file, pick

PROMPT = "Tell me a story about a dog who lives by the sea."
HOOK_ROWS = ("bakesteer hooks", "repeng ControlModel", "steering-vectors apply")
SLOTS_ROW = "bias slots alone (bake at coef 0)"
TESTS = Path(__file__).resolve().parents[1] / "tests"  # llamacpp_tools (convert) and onnx_tools (export)
PAUSE_S = 0.3  # between runs: a runtime's spinning thread pool (OpenMP, ggml, ORT) goes idle before the next


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


@dataclass
class Runtime:
    """One row of the runtimes table: ``run(n)`` generates ``n`` greedy tokens after the prompt (None: skipped,
    ``why`` says so); ``kind`` is "hook", "baked", "f32" or "quantized"."""
    name: str
    kind: str
    run: Callable[[int], list[int]] | None = None
    why: str = ""
    convert_s: float | None = None
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)


def _torch_run(model, ctx, ids: list[int]) -> Callable[[int], list[int]]:
    prompt = torch.tensor([ids], device=model.device)
    return lambda n: generate(model, ctx, prompt, n, False)[1][0].tolist()


def _llamacpp_run(path: Path, ids: list[int], n_max: int, threads: int, eos: list[int], f32_kv: bool):
    """llama-cpp-python: ``Llama.eval`` of the prompt, then per token the argmax of the last logits with the
    end-of-sequence ids masked, and one ``eval`` of it. (Its completion API has no minimum length and no
    ignore-EOS switch, only ``logit_bias``; this loop skips its sampler chain.)"""
    import llama_cpp

    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if f32_kv else {}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + n_max + 8, n_batch=len(ids) + 8, verbose=False,
                          n_threads=threads, n_threads_batch=threads, **kv)
    n_vocab = llm.n_vocab()

    def run(n: int) -> list[int]:
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        while True:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
            logits[eos] = -np.inf
            out.append(int(logits.argmax()))
            if len(out) == n:
                return out
            llm.eval(out[-1:])
    return run


def _ct2_run(folder: Path, start: list[str], threads: int, compute_type: str, eos: list[int]):
    """CTranslate2's greedy ``generate_batch``; ``min_length`` holds the end token back."""
    import ctranslate2

    gen = ctranslate2.Generator(str(folder), device="cpu", compute_type=compute_type, intra_threads=threads,
                                inter_threads=1)
    return lambda n: list(gen.generate_batch([start], max_length=n, min_length=n, beam_size=1, sampling_topk=1,
                                             include_prompt_in_result=False, end_token=eos or None)[0].sequences_ids[0])


def _ort_run(folder: Path, ids: list[int], threads: int, eos: list[int]):
    """onnxruntime-genai's Generator, greedy; ``min_length`` (prompt included) holds the end token back; the
    decoder session's intra-op threads set through ``Config.overlay``."""
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    cfg.overlay(json.dumps({"model": {**({"eos_token_id": eos} if eos else {}), "decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model, prompt = og.Model(cfg), np.array([ids], dtype=np.int32)

    def run(n: int) -> list[int]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        while not gen.is_done():
            gen.generate_next_token()
        return [int(t) for t in gen.get_sequence(0)[len(ids):]]
    return run


def _prepare(row: Runtime, convert: Callable[[], object] | None, make: Callable[[], Callable]) -> Runtime:
    """``convert`` (timed into ``row.convert_s``) then ``make`` the runner; a missing package or tool skips the
    row, any other failure is reported in the row."""
    sys.path.insert(0, str(TESTS))
    try:
        if convert is not None:
            t = time.perf_counter()
            convert()
            row.convert_s = time.perf_counter() - t
        row.run = make()
    except ImportError as e:
        row.why = f"skipped: {e.name or e} not installed"
    except Exception as e:  # noqa: BLE001 - a runtime that cannot take this model is a finding, not a crash
        row.why = f"{'skipped' if type(e).__name__ == 'MissingConverter' else 'failed'}: {_why(e)}"
    finally:
        sys.path.remove(str(TESTS))
    return row


def _why(e: Exception) -> str:
    """The exception in one short line; a failed subprocess (llama.cpp's converter) by its last stderr line."""
    err = getattr(e, "stderr", None)
    text = err.decode(errors="replace") if isinstance(err, bytes) else str(err or "")
    lines = text.strip().splitlines() or str(e).strip().splitlines() or [""]
    return f"{type(e).__name__}: {lines[-1 if text.strip() else 0][:90]}"


def _gguf_convert(baked: Path, out: Path) -> None:
    from llamacpp_tools import convert

    convert(baked, out)


def _ct2_convert(baked: Path, out: Path) -> None:
    from ctranslate2.converters import TransformersConverter

    gc.freeze()  # the converter's gc.collect() after every layer walks every object of this process otherwise
    try:
        TransformersConverter(str(baked)).convert(str(out), quantization="float32", force=True)
    finally:
        gc.unfreeze()


def _ort_export(baked: Path, out: Path) -> None:
    from onnx_tools import export

    export(baked, out)


def _quant_name(gguf: Path) -> str:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> Q4_1 (else the file's name)."""
    m = re.search(r"[.-]((?:I?Q\d|F16|BF16|F32)[\w]*)$", gguf.stem, re.I)
    return m.group(1) if m else gguf.name


def runtime_rows(src: Path, work: Path, items: list, steers: list, ids: list[int], tok, a) -> tuple[list, Callable]:
    """The bake (timed), its conversions and a runner per runtime; and a runner of the unsteered source."""
    t = time.perf_counter()
    bake(src, items, work / "baked", progress=False)
    bake_s = time.perf_counter() - t
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval().to(a.device)  # noqa: E731
    source, baked = load(src), load(work / "baked")
    eos = baked.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    gguf = Path(a.gguf) if a.gguf else None if a.model else smollm2_gguf()
    n, th = a.new_tokens, a.threads
    rows = [Runtime("bakesteer hooks (PyTorch, source)", "hook",
                    _torch_run(source, lambda: steering(source, steers), ids)),
            Runtime("baked (PyTorch)", "baked", _torch_run(baked, contextlib.nullcontext, ids), convert_s=bake_s)]
    rows.append(_prepare(Runtime("llama.cpp f32 (convert_hf_to_gguf.py; f32 KV cache)", "f32"),
                         lambda: _gguf_convert(work / "baked", work / "baked.f32.gguf"),
                         lambda: _llamacpp_run(work / "baked.f32.gguf", ids, n, th, eos, True)))
    q = Runtime(f"llama.cpp {_quant_name(gguf) if gguf else 'quantized'} (bake_gguf into the GGUF; f16 KV cache)",
                "quantized", why="skipped: no --gguf of --model given")
    rows.append(_prepare(q, lambda: bake_gguf(gguf, items, work / "baked.q.gguf"),
                         lambda: _llamacpp_run(work / "baked.q.gguf", ids, n, th, eos, False)) if gguf else q)
    start = tok.convert_ids_to_tokens(ids)
    ct2 = _prepare(Runtime("CTranslate2 float32", "f32"), lambda: _ct2_convert(work / "baked", work / "ct2"),
                   lambda: _ct2_run(work / "ct2", start, th, "float32", eos))
    int8 = Runtime("CTranslate2 int8 (the float32 conversion, quantized on load)", "quantized", why=ct2.why)
    rows += [ct2, _prepare(int8, None, lambda: _ct2_run(work / "ct2", start, th, "int8", eos)) if ct2.run else int8]
    rows.append(_prepare(Runtime("ONNX Runtime fp32 (onnxruntime-genai)", "f32"),
                         lambda: _ort_export(work / "baked", work / "onnx"),
                         lambda: _ort_run(work / "onnx", ids, th, eos)))
    return rows, _torch_run(source, contextlib.nullcontext, ids)


def _once(r: Runtime, n: int, keep: bool) -> None:
    """One timed run of ``r``; a failure empties the row and says why (any round: its figures would be partial)."""
    time.sleep(PAUSE_S)
    t, c = time.perf_counter(), time.process_time()
    try:
        out = r.run(n)
    except Exception as e:  # noqa: BLE001 - reported in the row
        r.run, r.why, r.times, r.outputs = None, f"failed: {_why(e)}", [], []
        return
    dt = time.perf_counter() - t
    if keep:
        r.times.append(dt)
        r.cpu.append((time.process_time() - c) / dt)
        r.outputs.append(out)


def run_rounds(rows: list[Runtime], n: int, repeats: int) -> None:
    """A short warm-up of every runner, then ``repeats`` rounds of ``n`` tokens each, order rotated per round."""
    live = [r for r in rows if r.run]
    for r in live:
        _once(r, min(n, 8), keep=False)
    for rep in range(repeats):
        for r in live[rep % len(live):] + live[:rep % len(live)]:
            if r.run:
                _once(r, n, keep=True)


def _agreement(r: Runtime, ref: list[int]) -> str:
    """The row's tokens against the baked PyTorch model's: exact for fp32, a share for quantized rows."""
    got = r.outputs[0]
    varied = " (varied between rounds)" if any(o != got for o in r.outputs) else ""
    if got == ref:
        return "yes" + varied
    first = next((i for i, (x, y) in enumerate(zip(got, ref)) if x != y), min(len(got), len(ref)))
    same = sum(x == y for x, y in zip(got, ref))
    if r.kind == "quantized":
        return f"{same}/{len(ref)} tokens (first differs at token {first + 1})" + varied
    return f"NO: first differs at token {first + 1} ({same}/{len(ref)})" + varied


def runtime_table(rows: list[Runtime], source_tokens: list[int], n: int) -> list[str]:
    by = {r.kind: r for r in rows if r.kind in ("hook", "baked")}
    ref = by["baked"].outputs[0] if by["baked"].outputs else []
    base = statistics.median(by["hook"].times) if by["hook"].times else float("nan")
    lines = ["| row | steered tok/s (range over rounds) | × hooks | CPU s / wall s | same tokens as baked | "
             "conversion s |",
             "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        conv = f"{r.convert_s:.1f}" if r.convert_s is not None else "–"
        if not r.times:
            lines.append(f"| {r.name} | {r.why} | – | – | – | {conv} |")
            continue
        t = statistics.median(r.times)
        if r.kind == "baked":
            moved = next((i for i, (x, y) in enumerate(zip(ref, source_tokens)) if x != y), None)
            same = "SAME AS SOURCE" if moved is None else f"– (steered: leaves the source at token {moved + 1})"
        else:
            same = _agreement(r, ref)
        lines.append(f"| {r.name} | {n / t:.1f} ({n / max(r.times):.1f}–{n / min(r.times):.1f}) | {base / t:.2f} | "
                     f"{statistics.median(r.cpu):.2f} | {same} | {conv} |")
    return lines + ["", *goal_lines(rows, base, n)]


def goal_lines(rows: list[Runtime], base: float, n: int) -> list[str]:
    out = []
    for kind, goal in (("f32", 1.5), ("quantized", 3.0)):
        ran = [r for r in rows if r.kind == kind and r.times]
        if not ran or base != base:
            out.append(f"goal: best {kind} runtime ≥ {goal:g}× the hook path: not measured (none ran)")
            continue
        best = min(ran, key=lambda r: statistics.median(r.times))
        ratio = base / statistics.median(best.times)
        out.append(f"goal: best {kind} runtime ≥ {goal:g}× the hook path: {'met' if ratio >= goal else 'missed'} "
                   f"({best.name.split(' (')[0]}: {n / statistics.median(best.times):.1f} vs {n / base:.1f} tok/s, "
                   f"{ratio:.2f}×)")
    return out


def runtimes_measure(src: Path, vecs: dict[int, np.ndarray], tok, a) -> list[str]:
    steers = [Steer("resid", b, v, a.coef) for b, v in vecs.items()]
    items = [Item(s, {"file": a.vector}) for s in steers]
    ids = tok(PROMPT)["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        rows, source_run = runtime_rows(src, Path(tmp), items, steers, ids, tok, a)
        source_tokens = source_run(a.new_tokens)  # untimed: the bake's tokens must differ from these
        run_rounds(rows, a.new_tokens, a.repeats)
    return runtime_table(rows, source_tokens, a.new_tokens)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("llama-cpp-python", "ctranslate2", "onnxruntime-genai", "onnxruntime"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} not installed")
    return ", ".join(out)


def print_runtimes(src: Path, vecs: dict[int, np.ndarray], tok, a, blocks: str) -> None:
    if a.device != "cpu":
        print("\nRuntimes: CPU only (llama.cpp, CTranslate2 and ONNX Runtime run here on the CPU); not measured.")
        return
    t = time.perf_counter()
    lines = runtimes_measure(src, vecs, tok, a)
    print(f"\nRuntimes a bake unlocks: {src.name}, {a.vector} resid of block{'s' * (len(vecs) > 1)} {blocks} × "
          f"{a.coef:g}, batch 1, greedy, {len(tok(PROMPT)['input_ids'])} prompt tokens + {a.new_tokens} new tokens "
          f"forced in every row, {a.threads} threads each; tok/s = new tokens / median seconds from the prompt's ids "
          f"to the last token (prefill included) over {a.repeats} interleaved rounds after a short warm-up; "
          f"{_versions()}:\n")
    print("\n".join(lines))
    print(f"\n(runtimes measure: {time.perf_counter() - t:.0f} s in all, conversions and loads included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--vector", default="love.svec")
    ap.add_argument("--layers", default="5", help="decoder blocks to steer: 5, 3,5,8 or 3-16")
    ap.add_argument("--coef", type=float, default=1.0)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--measures", default="generate,paired",
                    help="any of generate, paired, runtimes, comma-separated (default: generate,paired)")
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and every runtime (default 2)")
    ap.add_argument("--gguf", help="a GGUF of --model for the runtimes' llama.cpp quantized row (default: "
                                   "SmolLM2's Q4_1 when --model is not given)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile reduce-overhead + static KV cache")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    src = Path(a.model) if a.model else ensure_default_model()
    picked = pick(load_vector_file(a.vector), parse_layers(a.layers), "resid")
    vecs = {block: vec for _, block, vec in picked}
    tok = AutoTokenizer.from_pretrained(src)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or platform.machine()
    blocks = ", ".join(str(b) for b in vecs) if len(vecs) < 4 else f"{min(vecs)}–{max(vecs)}"
    print(f"{src.name}, {a.vector} resid of block{'s' * (len(vecs) > 1)} {blocks} × {a.coef:g}, {a.new_tokens} "
          f"new tokens greedy, fp32, {a.device} ({dev}, {torch.get_num_threads()} threads), torch "
          f"{torch.__version__}{', compiled reduce-overhead + static cache' if a.compile else ''}; "
          f"{a.repeats} repeats after a warm-up")
    if "generate" in a.measures or "paired" in a.measures:
        torch_tables(src, vecs, tok, a)
    if "runtimes" in a.measures:
        print_runtimes(src, vecs, tok, a, blocks)


def torch_tables(src: Path, vecs: dict[int, np.ndarray], tok, a) -> None:
    """The two PyTorch measures: whole generate() calls and paired decode steps."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_rows(src, Path(tmp), vecs, a.coef, a.device, a.vector)
    if a.compile:
        compile_models(rows)
    live = [k for k, r in rows.items() if not isinstance(r, str)]
    batches = [int(b) for b in a.batches.split(",")]
    prompt = torch.tensor([tok(PROMPT)["input_ids"]], device=a.device)
    if "generate" in a.measures:
        print("\n`generate()`, median over repeats:\n")
        print("\n".join(generate_table(rows, live, batches, prompt, a)))
    if "paired" in a.measures and not a.compile:  # compiled graphs are measured through generate() alone
        print("\nPaired decode steps (every row steps in lockstep, order rotated each step):\n")
        print("\n".join(paired_table(rows, live, batches, prompt, a)))


if __name__ == "__main__":
    main()
