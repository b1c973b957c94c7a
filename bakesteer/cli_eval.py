"""CLI commands that show what a bake does (compare, eval): registered into the main parser.

Both take a baked folder (its source comes from its record) and/or a vector to hook onto the
source. rich and matplotlib are imported only inside these commands (extra ``bakesteer[eval]``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from .errors import BakesteerError
from .numbers import parse_coefs, parse_layers

EVAL_EXTRA = "pip install 'bakesteer[eval]'"


def _need(cmd: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BakesteerError(f"`bakesteer {cmd}` needs {' and '.join(missing)}; install them with `{EVAL_EXTRA}`.")


def _common(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument("baked", nargs="?", help="a folder written by `bakesteer bake` (its source is the comparison)")
    p.add_argument("--model", help="source model folder or cached Hub id (default: the baked folder's source, "
                                   "else the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--vector", help="vector file to hook onto the source instead of (or besides) a baked folder")
    p.add_argument("--site", help="site of the vector (default: the file's, else resid)")
    # one vocabulary with bake and extract: --layer/--layers and --coef/--coefs are the same option
    names = ("--layers", "--layer") if many else ("--layer", "--layers")
    p.add_argument(*names, dest="layers", help="layers as the vector file numbers them: '5', '0,5,10' or '4-8'")
    names = ("--coefs", "--coef") if many else ("--coef", "--coefs")
    p.add_argument(*names, dest="coefs", help="coefficients, e.g. '1,2,4' (write --coefs=-4,4 for a leading minus)"
                   + ("" if many else "; default: the file's suggestion, else 1"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``func`` to a handler returning an exit code."""
    c = sub.add_parser("compare", help="completions of the source and the steered model side by side")
    _common(c, many=False)
    c.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    c.add_argument("--prompts", help="file with one prompt per line (default: the bundled prompts.txt)")
    c.add_argument("-n", type=int, default=3, help="completions per prompt and model (default 3; 1 with --greedy)")
    c.add_argument("--new-tokens", type=int, default=40, help="new tokens per completion (default 40)")
    c.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling (one completion)")
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--top-p", type=float, default=0.9)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu); one block resident either way")
    c.add_argument("-o", "--output", help="write OUTPUT.json and OUTPUT.md")
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("eval", help="perplexity on sentence sets, KL over prompts, and a layer × coefficient sweep")
    _common(e, many=True)
    e.add_argument("--on", help="on-topic sentences, one per line (bundled: wedding.txt)")
    e.add_argument("--off", help="off-topic sentences, one per line (bundled: offtopic.txt)")
    e.add_argument("--prompts", default="prompts.txt", help="prompts for KL (default: the bundled prompts.txt)")
    e.add_argument("--max-sentences", type=int, default=20, help="first N sentences of each set (default 20)")
    e.add_argument("--max-prompts", type=int, default=10, help="first N prompts (default 10)")
    e.add_argument("--plot-layers", help="layers drawn in the by-coefficient plot (default: up to 6 swept ones)")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu); one block resident either way")
    e.add_argument("-o", "--output", default="exported/eval",
                   help="folder for eval.json and the PNGs (default exported/eval)")
    e.set_defaults(func=cmd_eval)


def _load(a: argparse.Namespace, many: bool, streamed: bool = False):
    """(source model, tokenizer, baked model or None, hooked {block: vector}, site, coefs); ``streamed``: the
    models are block-streaming ``engine.Model``s (one block resident), else loaded in memory."""
    from .vectors import load_vector_file, pick

    if a.baked is None and a.vector is None:
        raise BakesteerError("give a baked folder, or --vector with --layer(s), to compare against the source.")
    coefs = parse_coefs(a.coefs) if a.coefs else None
    layers = parse_layers(a.layers) if a.layers else None
    vecs, site = {}, None
    if a.vector is not None:
        if not layers:
            raise BakesteerError("--vector needs --layer(s) to say where to add it, e.g. --layers 5 or 0,5,10.")
        vf = load_vector_file(a.vector)
        picked = pick(vf, layers, a.site)
        site = picked[0][0]
        vecs = {block: v for _, block, v in picked}
        coefs = coefs or [vf.coef if vf.coef is not None else 1.0]
        if not many and len(coefs) != 1:
            raise BakesteerError("compare takes one coefficient; give --coef with a single number.")
    elif a.coefs or a.layers:
        raise BakesteerError("--layer(s) and --coef(s) need --vector; a baked folder carries its own.")
    src = a.model
    if src is None and a.baked is not None:
        from .recipe import load_record

        src = load_record(a.baked).recipe["source"]["path"]
    from .models import resolve_model

    src_dir = resolve_model(src)[0]
    if not (Path(src_dir) / "config.json").is_file():
        raise BakesteerError(f"the source model {src_dir} is gone; pass --model.")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    n_layers = AutoConfig.from_pretrained(src_dir).num_hidden_layers
    for block in vecs:
        if not 0 <= block < n_layers:
            raise BakesteerError(f"layer {block} is out of range; the model has blocks 0-{n_layers - 1}.")
    if a.quiet:
        hf_logging.disable_progress_bar()
    from .lm import Model, load_tokenizer

    tok = load_tokenizer(a.baked or src_dir, "these commands need one to read text")
    if streamed:  # one block resident, unless source and bake fit in memory (decoding reads them per token)
        from .engine import fits_in_memory

        keep = fits_in_memory(src_dir)
        load = lambda p: Model(p, torch.float32, getattr(a, "device", "cpu"), keep=keep)  # noqa: E731
    else:
        load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
    source = load(src_dir)
    baked = load(a.baked) if a.baked else None
    return source, tok, baked, vecs, site, coefs


def cmd_compare(a: argparse.Namespace) -> int:
    _need("compare", "rich")
    from .compare import Variant, print_table, run, to_markdown
    from .evaluate import read_lines
    from .hooks import Steer

    if a.n < 1 or a.new_tokens < 1:
        raise BakesteerError("-n and --new-tokens must be at least 1.")
    prompts = list(a.prompt or []) + (read_lines(a.prompts, "prompt file") if a.prompts else [])
    prompts = prompts or read_lines("prompts.txt", "prompt file")
    source, tok, baked, vecs, site, coefs = _load(a, many=False, streamed=True)
    variants = [Variant("source", source)]
    if baked is not None:
        variants.append(Variant(f"baked {Path(a.baked).name}", baked))
    if vecs:
        steers = [Steer(site, b, v, coefs[0]) for b, v in vecs.items()]
        name = f"hooked {Path(a.vector).stem} {site}@{','.join(map(str, vecs))} ×{coefs[0]:g}"
        variants.append(Variant(name, source, steers))
    n = 1 if a.greedy else a.n  # greedy decoding has one answer per prompt
    result = run(variants, tok, prompts, n, a.new_tokens, a.greedy, a.temperature, a.top_p, a.seed, a.chat,
                 progress=not a.quiet)
    print_table(result)
    _strengths(a, source, tok, variants)
    if a.output:
        out = Path(a.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        out.with_suffix(".md").write_text(to_markdown(result))
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def _strengths(a: argparse.Namespace, source, tok, variants) -> None:
    """What each steered column does to the model (``bakesteer.strength``), under the table."""
    from .strength import measure, of_bake

    for v in variants[1:]:
        s = of_bake(a.baked, a.device) if not v.steers else measure(source, tok, v.steers)
        print(f"{v.name}:")
        print("\n".join(s.lines("  ")) if s is not None else "  strength: not measured (no tokenizer)")


def cmd_eval(a: argparse.Namespace) -> int:
    _need("eval", "matplotlib")
    import time

    from . import evaluate as ev

    t0 = time.perf_counter()
    if a.max_sentences < 1 or a.max_prompts < 0:
        raise BakesteerError("--max-sentences must be at least 1 and --max-prompts at least 0.")
    if not a.on and not a.off:
        raise BakesteerError("give --on and/or --off sentence files (bundled examples: wedding.txt, offtopic.txt).")
    texts = {name: ev.read_lines(path)[:a.max_sentences] for name, path in (("on_topic", a.on), ("off_topic", a.off))
             if path}
    prompts = ev.read_lines(a.prompts, "prompt file")[:a.max_prompts] if a.max_prompts else []
    plot_layers = parse_layers(a.plot_layers) if a.plot_layers else None
    source, tok, baked, vecs, site, coefs = _load(a, many=True, streamed=True)
    ctx = ev.context_length(source)
    sets = {k: ev.encode(tok, v, ctx, f"the {k} set") for k, v in texts.items()}
    prompt_ids = ev.encode(tok, prompts, ctx, "the prompt file")
    decode = lambda i: tok.decode([i])  # noqa: E731
    base = ev.measure(source, sets, prompt_ids)
    result: dict = {"source": str(source.folder), "sets": {k: len(v) for k, v in sets.items()},
                    "prompts": len(prompt_ids), "source_perplexity": base.perplexity(),
                    "source_sentence_perplexity": {k: ev.sentence_perplexities(v) for k, v in base.nlls.items()}}
    if baked is not None:
        m = ev.measure(baked, sets, prompt_ids)
        result["baked"] = {"folder": str(a.baked), **ev.contrast(base, m, decode),
                           "sentence_perplexity": {k: ev.sentence_perplexities(v) for k, v in m.nlls.items()}}
    if vecs:
        result["sweep"] = ev.sweep(source, vecs, site, coefs, sets, prompt_ids, decode, base, progress=not a.quiet)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    written = [out / "eval.json"]
    if vecs:
        from .plots import plot_sweep

        written += plot_sweep(result["sweep"], out, plot_layers, f"{Path(a.vector).stem} ({site})")
    _report(result)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _report(r: dict) -> None:
    sets = list(r["source_perplexity"])
    print("source perplexity: " + ", ".join(f"{k} {v:.3f}" for k, v in r["source_perplexity"].items()))
    if "baked" in r:
        b = r["baked"]
        print(f"baked {b['folder']}: ratio " + ", ".join(f"{k} {b['ratio'][k]:.3f}" for k in sets)
              + (f"; KL(source ‖ baked) {b['kl']:.4f} nats/token" if "kl" in b else ""))
        if "promoted_tokens" in b:
            print("  promoted tokens: " + " ".join(repr(t["token"]) for t in b["promoted_tokens"][:8]))
    if "sweep" in r:
        print("layer  coef  " + "  ".join(f"{k:>10}" for k in sets) + "        KL")
        for p in r["sweep"]["points"]:
            print(f"{p['layer']:>5} {p['coef']:>5g}  " + "  ".join(f"{p['ratio'][k]:>10.3f}" for k in sets)
                  + (f"  {p['kl']:>8.4f}" if "kl" in p else ""))
        from .strength import DESTRUCTIVE_PPL, NEGLIGIBLE_KL

        print(f"proposed coefficients (visible: KL >= {NEGLIGIBLE_KL}; not destructive: perplexity ratio <= "
              f"{DESTRUCTIVE_PPL:g}): " + "; ".join(
                  f"layer {k}: " + (f"{v[0]:g} to {v[1]:g}" if v else "none of the swept ones")
                  for k, v in r["sweep"]["proposed"].items()))
