"""CLI commands for vector files (extract, convert, inspect): registered into the main parser."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import BakesteerError
from .numbers import layers_arg

OUT_HELP = ("output file; its extension picks the format: .svec bakesteer, .gguf llama.cpp/repeng, "
            ".pt/.safetensors steering-vectors")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``func`` to a handler returning an exit code."""
    e = sub.add_parser("extract", help="steering vectors from contrast pairs (mean difference or PCA)")
    e.add_argument("--model", help="model folder or cached Hub id (default: the bundled SmolLM2-135M-Instruct)")
    e.add_argument("--pairs", help='JSONL ({"positive": ..., "negative": ...} per line), JSON array, or CSV')
    e.add_argument("--pos", action="append", default=[], help="positive text (repeatable; pairs with --neg in order)")
    e.add_argument("--neg", action="append", default=[], help="negative text (repeatable)")
    e.add_argument("--template", default="{text}", help="wrap each side: e.g. 'Act as if you are {text}.'")
    e.add_argument("--suffix", default="", help="shared text after each side (in --chat mode: the reply's start)")
    e.add_argument("--chat", action="store_true", help="render each side as a user turn with the chat template")
    e.add_argument("--site", default="resid", help="attn_in, mlp_in, attn_out, mlp_out or resid (default resid)")
    e.add_argument("--layers", "--layer", dest="layers", action="append", type=layers_arg,
                   help="decoder blocks, e.g. 5, 4-12 (default: all)")
    e.add_argument("--aggregate", default="last", choices=["last", "mean", "suffix"],
                   help="token reduction: last non-padding token, mean over tokens, mean over the suffix")
    e.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca_diff", "pca_center"],
                   help="mean difference (Turner/CAA) or repeng's PCA of differences / of centred pairs")
    e.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (device_map='auto' over all GPUs)")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    e.add_argument("--coef", type=float, help="coefficient suggested in the file for bake (default: for the PCA "
                                              "methods, the pairs' mean separation along the unit direction)")
    e.add_argument("-o", "--output", required=True, help=OUT_HELP)
    e.add_argument("--ibm", help="also write IBM activation-steering .svec JSON here (resid only)")
    e.add_argument("--force", action="store_true", help="replace existing output files")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_extract)

    c = sub.add_parser("convert", help="convert a vector file: bakesteer, IBM, llama.cpp/repeng, steering-vectors")
    c.add_argument("input", help="vector file: .svec/.json, .gguf, .pt, .safetensors, .npy")
    c.add_argument("output", help=OUT_HELP)
    c.add_argument("--to", choices=["bakesteer", "ibm", "gguf", "steering-vectors"],
                   help="output format (default: from the extension; .svec means bakesteer, --to ibm for plain IBM)")
    c.add_argument("--layers", action="append", type=layers_arg, help="file keys to keep, as the input numbers them")
    c.add_argument("--site", help="site of a raw tensor file (other files carry their own)")
    c.add_argument("--model", help="model folder or cached Hub id: checks sizes and records its identity")
    c.add_argument("--force", action="store_true", help="replace an existing output file")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("inspect", help="what a vector file holds: format, model hint, site, layers, norms")
    i.add_argument("file", help="vector file")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)


def _flat(groups: list[list[int]] | None) -> list[int] | None:
    return None if not groups else [x for g in groups for x in g]


def _coef(given: float | None, res) -> tuple[float | None, str | None]:
    """The coefficient the file suggests, and how it was chosen (None, None: mean_diff's vectors carry it)."""
    if given is not None:
        return given, "given with --coef"
    if res.suggested_coef() is None:
        return None, None
    return res.suggested_coef(), ("the median over blocks of the pairs' mean separation along the unit direction "
                                  "(mean (positive − negative) · v)")


def cmd_extract(a: argparse.Namespace) -> int:
    from .extract import Prompting, cli_pairs, extract, load_model, load_pairs
    from .arch import check_site
    from .vectors import check_expressible, format_for, write_vectors
    from .vectors.files import check_vector_output

    if a.pairs and (a.pos or a.neg):
        raise BakesteerError("give pairs either with --pairs or with --pos/--neg, not both.")
    pairs = load_pairs(a.pairs) if a.pairs else cli_pairs(a.pos, a.neg)
    if not pairs:
        raise BakesteerError("no pairs given; pass --pairs FILE or --pos TEXT --neg TEXT.")
    targets = [(Path(a.output), format_for(a.output))] + ([(Path(a.ibm), "ibm")] if a.ibm else [])
    if a.ibm and Path(a.ibm).resolve() == Path(a.output).resolve():
        raise BakesteerError("--ibm names the same file as -o; give it another name.")
    inputs = [a.pairs] if a.pairs else []
    for p, _ in targets:  # refuse before the slow part
        check_vector_output(p, a.force, inputs)
    prompting = Prompting(a.template, a.suffix, a.chat)
    prompting.check()
    check_site(a.site)  # all refused before the model loads
    model, tok, identity = load_model(a.model, a.device, a.dtype, quiet=a.quiet)
    n = identity["num_hidden_layers"]
    layers = _flat(a.layers) or list(range(n))
    plans, notes = [], []
    for p, fmt in targets:  # what each file can hold: refuse or (with default layers) leave out, before extracting
        keep = set(layers)
        if not a.layers and fmt == "gguf":
            keep.discard(0)
            notes.append(f"{p}: block 0 left out (llama.cpp refuses direction.0)")
        if not a.layers and fmt == "ibm":
            keep.discard(n - 1)
            notes.append(f"{p}: block {n - 1} left out (IBM key {n} is the input of no block)")
        check_expressible(fmt, a.site, dict.fromkeys(keep), identity)
        plans.append((p, fmt, keep))
    res = extract(model, tok, pairs, a.site, layers, a.aggregate, a.method, prompting, a.batch_size,
                  progress=not a.quiet)
    method = f"{res.method}({res.aggregation})"
    extra = {"pairs": res.n_pairs, "aggregation": res.aggregation, "prompting": res.prompting,
             "unit_length": res.method != "mean_diff", "separation": {str(b): s for b, s in res.spread.items()}}
    coef, how = _coef(a.coef, res)
    if how:
        extra["coef_basis"] = how
    for p, fmt, keep in plans:
        blocks = {b: v for b, v in res.vectors.items() if b in keep}
        write_vectors(p, fmt, res.site, blocks, identity, res.explained, coef, method, extra, a.force, inputs)
    norms = [float((v ** 2).sum() ** 0.5) for v in res.vectors.values()]
    print(f"extracted {res.site} vectors at {len(res.vectors)} block(s) from {res.n_pairs} pair(s) "
          f"({method}); |v| {min(norms):.3g} to {max(norms):.3g}")
    print("\n".join(([f"  suggested coefficient {coef:.3g}: {how}"] if coef is not None and a.coef is None else [])
                    + [f"  wrote {p} ({fmt})" for p, fmt, _ in plans] + [f"  note: {n}" for n in notes]))
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from .vectors import blocks_of, check_model, explained_of, format_for, model_info, write_vectors
    from .vectors import load_vector_file

    vf = load_vector_file(a.input)
    fmt = format_for(a.output, a.to)
    site, blocks = blocks_of(vf, _flat(a.layers), a.site)
    model = dict(vf.meta.get("model") or {})
    model.setdefault("model_type", vf.model_type)
    if a.model:
        model.update(model_info(a.model))
    check_model(blocks, model)
    ev = explained_of(vf)
    explained = {k + vf.shift: v for k, v in ev.items() if k + vf.shift in blocks}
    meta = vf.meta if vf.format == "bakesteer" else {}
    extra = {k: meta[k] for k in ("pairs", "aggregation", "prompting", "unit_length") if k in meta}
    extra["converted_from"] = {"file": str(vf.path), "format": vf.format, "sha256": vf.sha256}
    out = write_vectors(a.output, fmt, site, blocks, model, explained, vf.coef, meta.get("method"), extra, a.force,
                        [vf.path])
    keys = ", ".join(f"{k}->{_key(fmt, b)}" for k, b in zip(_keys(vf, blocks), blocks))
    print(f"{vf.path} ({vf.format}) -> {out} ({fmt}): {site}, {len(blocks)} vector(s); file keys {keys}")
    return 0


def _keys(vf, blocks: dict) -> list:
    return [b - vf.shift if None not in vf.vectors else "-" for b in blocks]


def _key(fmt: str, block: int) -> str:
    return str(block + 1) if fmt == "ibm" else str(block)


def cmd_inspect(a: argparse.Namespace) -> int:
    from .vectors import describe

    info = describe(a.file)
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['file']}: {info['format']}")
    for k in ("model", "site", "convention", "method", "hidden_size", "coef"):
        if info.get(k) is not None:
            print(f"  {k.replace('_', ' ')}: {info[k]}")
    print(f"  {'key':>5} {'block':>5} {'norm':>10} {'explained':>9}")
    for row in info["layers"]:
        ev = "" if row["explained"] is None else f"{row['explained']:.3f}"
        block = "-" if row["block"] is None else row["block"]
        print(f"  {str(row['key']):>5} {str(block):>5} {row['norm']:>10.4g} {ev:>9}")
    for note in info["notes"]:
        print(f"  note: {note}")
    return 0
