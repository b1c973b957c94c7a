"""Bake steering vectors into a checkpoint: plan the bias edits, fold, write, record the recipe."""
from __future__ import annotations

import datetime
import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from . import __version__, experts, fused
from .arch import Arch, Site, approx_slots, find_arch, flag_on, fold_target, is_exact
from .checkpoint import INDEX, Checkpoint, TensorSource, write_checkpoint
from .configs import for_every_reader, pinned
from .errors import BakesteerError
from .fold import apply_delta, check_cast, direct_delta, through_delta
from .progress import bar
from .pytorch_bin import convert_bin, is_bin_checkpoint
from .recipe import Record, check_untampered, has_record, load_record, merge, warn_unchecked
from .staging import Staging
from .steer import Steer, as_f64

CONVENTION = "layer L = decoder block L (0-based); resid = residual stream after block L"


@dataclass(frozen=True)
class Item:
    """One vector baked at one site of one decoder block, with where it came from."""

    steer: Steer
    origin: dict  # file, format, sha256, file_layer


@dataclass(frozen=True)
class ApproxOptions:
    """How an approximate bake fits and measures (see ``bakesteer.approx``)."""

    calib: str | None = None  # calibration text file, one passage per line; None = the built-in set
    tokens: int = 512  # token budget for the fit (the held-out measure reads up to 1024 more)
    steps: int = 60
    lr: float = 0.05
    seed: int = 0
    device: str = "auto"  # cpu, cuda or auto


@dataclass
class Plan:
    arch: Arch  # family of the written checkpoint
    relabelled_from: str | None
    flags: list[str]  # config flags switched on
    config: dict  # the written config.json
    updates: dict[str, np.ndarray]  # bias key -> new value (changed or added), in the checkpoint's dtype
    originals: dict[str, np.ndarray]  # bias key -> value before the bake (changed keys only)
    source: TensorSource  # the tensors the keys name: the checkpoint, or its view with fused linears split
    caveat: str | None = None  # where the relabel is exact per forward pass only


def check_items(items: list[Item], hidden: int, n_layers: int) -> None:
    if not items:
        raise BakesteerError("nothing to bake; give at least one --vector and --layer.")
    for it in items:
        s, v = it.steer, as_f64(it.steer.vector)
        if v.shape != (hidden,):
            raise BakesteerError(
                f"the vector for layer {s.layer} has {v.size} entries but the model's hidden size is "
                f"{hidden}; it was made for another model."
            )
        if not 0 <= s.layer < n_layers:
            raise BakesteerError(f"layer {s.layer} is out of range; this model has blocks 0 to {n_layers - 1}.")
        if not np.isfinite(v).all():
            raise BakesteerError(f"the vector for layer {s.layer} contains NaN or infinite values; regenerate it.")
        if not np.isfinite(s.coef):
            raise BakesteerError(f"coefficient {s.coef} is not a finite number; pass a real --coef.")


def _linear_dims(ckpt: TensorSource, wkey: str, layout: str) -> tuple[int, int]:
    """(out, in) of a linear layer's stored weight, refusing one that is not a matrix."""
    shape = ckpt.tensors[wkey].shape
    if len(shape) != 2:
        raise BakesteerError(f"{ckpt.where} stores {wkey} with shape {list(shape)}, not a matrix; the checkpoint "
                             "does not match its config.")
    return (shape[0], shape[1]) if layout == "linear" else (shape[1], shape[0])


def _keys(ckpt: TensorSource, arch: Arch, layer: int, module: str) -> tuple[str, str]:
    """The stored (weight, bias) names of a linear of block ``layer`` (a stacked projection's weight name as
    transformers calls it, whether stored so or packed)."""
    wname, bname = arch.names(layer, module)
    if module in arch.stacked:
        return wname, bname
    wkey = ckpt.resolve(wname, arch.stored_names(wname))
    return wkey, wkey[: -len("weight")] + "bias"


def _mismatch(ckpt: TensorSource, key: str, what: str) -> BakesteerError:
    return BakesteerError(f"{ckpt.where} stores {key} with shape {list(ckpt.tensors[key].shape)}, which {what}; the "
                          "checkpoint does not match its config.")


def _refuse_quantized(ckpt: TensorSource, arch: Arch) -> None:
    """Refuse a quantized checkpoint, unless its method packs only weights the family reads decoded (GPT-OSS's
    MXFP4 experts): its biases are stored unpacked and are what a bake changes."""
    quant = ckpt.config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "quantized") if isinstance(quant, dict) else "quantized"
        if method in arch.packed:
            return
        raise BakesteerError(f"{ckpt.where} is a {method} checkpoint; bake the unquantized model and quantize "
                             "the baked folder afterwards.")


class _Deltas:
    """Bias deltas summed per bias key, with the weight each sits beside and the coefficients folded in."""

    def __init__(self, ckpt: TensorSource, arch: Arch):
        self.ckpt, self.arch = ckpt, arch
        self.sums: dict[str, np.ndarray] = {}
        self.weights: dict[str, str] = {}  # bias key -> weight key, for dtype and placement
        self.coefs: dict[str, list[float]] = {}  # bias key -> coefficients, for an overflow's message

    def keys(self, layer: int, module: str) -> tuple[str, str]:
        return _keys(self.ckpt, self.arch, layer, module)

    def add(self, wkey: str, bkey: str, d: np.ndarray, coef: float | None = None) -> None:
        self.sums[bkey] = self.sums.get(bkey, 0) + d
        self.weights[bkey] = wkey
        if coef is not None:
            self.coefs.setdefault(bkey, []).append(coef)

    def fold(self, s: Steer, site: Site, cfg: dict, hidden: int) -> None:
        """Add the delta of one steer at its (exact) site, reading a weight only for a through-fold."""
        layout, ckpt = self.arch.layout, self.ckpt
        if site.next_block:  # a post-norm block's output: the next block's sites take it
            for name in site.next_block:
                self.fold(replace(s, layer=s.layer + 1, site=name), self.arch.sites[name], cfg, hidden)
            return
        for module in site.fold:
            wkey, bkey = self.keys(s.layer, module)
            if module in self.arch.stacked:
                self._fold_stacked(s, site, wkey, bkey, hidden)
                continue
            out_dim, in_dim = _linear_dims(ckpt, wkey, layout)
            if (in_dim if site.rule == "through" else out_dim) != hidden:
                raise _mismatch(ckpt, wkey, f"does not fit the hidden size {hidden}")
            if bkey in ckpt.tensors and ckpt.tensors[bkey].shape != (out_dim,):
                raise _mismatch(ckpt, bkey, f"does not fit its weight's {out_dim} outputs")
            if site.rule == "through":
                d = through_delta(ckpt.read(wkey), as_f64(s.vector), s.coef, layout)
            else:
                d = direct_delta(as_f64(s.vector), s.coef, float(cfg[site.scale]) if site.scale else 1.0)
            self.add(wkey, bkey, d, s.coef)

    def _fold_stacked(self, s: Steer, site: Site, wkey: str, bkey: str, hidden: int) -> None:
        """Every expert's bias: through, each by its own W[e] v; direct, all by the same a*v (the routing weights
        of the chosen experts sum to 1, which is what the table's entry states)."""
        ckpt = self.ckpt
        n, in_dim, out_dim = experts.dims(ckpt, wkey)
        if (in_dim if site.rule == "through" else out_dim) != hidden:
            raise _mismatch(ckpt, wkey if wkey in ckpt.tensors else wkey + experts.BLOCKS,
                            f"does not fit the hidden size {hidden}")
        if bkey in ckpt.tensors and ckpt.tensors[bkey].shape != (n, out_dim):
            raise _mismatch(ckpt, bkey, f"does not fit its {n} experts' {out_dim} outputs")
        if site.rule == "through":
            d = experts.through(ckpt, wkey, as_f64(s.vector), s.coef)
        else:
            d = np.broadcast_to(direct_delta(as_f64(s.vector), s.coef), (n, out_dim))
        self.add(wkey, bkey, d, s.coef)

    def fitted(self, layer: int, module: str, d: np.ndarray) -> None:
        """Add a delta fitted by an approximate bake."""
        wkey, bkey = self.keys(layer, module)
        d = np.asarray(d, dtype=np.float64)
        if bkey in self.ckpt.tensors and self.ckpt.tensors[bkey].shape != d.shape:
            raise _mismatch(self.ckpt, bkey, f"does not fit the fitted {d.shape[0]} outputs")
        self.add(wkey, bkey, d)

    def cast(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(new values in the checkpoint's dtype, values before the bake of the keys that existed)."""
        updates, originals = {}, {}
        for bkey, d in self.sums.items():
            old = self.ckpt.read(bkey) if bkey in self.ckpt.tensors else None
            dtype = old.dtype if old is not None else self.ckpt.bias_dtype(self.weights[bkey])
            updates[bkey] = apply_delta(old, d, dtype)
            check_cast(bkey, old, d, updates[bkey], self.coefs.get(bkey, []))
            if old is not None:
                originals[bkey] = old
        return updates, originals


def _zeros_for_flags(ckpt: TensorSource, arch: Arch, flags: list[str], n_layers: int,
                     updates: dict[str, np.ndarray]) -> None:
    """A switched-on flag creates a bias in every block: write explicit zeros where none is written."""
    for module in (m for m, slot in arch.linears.items() if slot in flags):
        for layer in range(n_layers):
            wkey, bkey = _keys(ckpt, arch, layer, module)
            if bkey not in ckpt.tensors and bkey not in updates:
                updates[bkey] = np.zeros(_linear_dims(ckpt, wkey, arch.layout)[0], dtype=ckpt.bias_dtype(wkey))


def _written_config(config: dict, source: Arch, arch: Arch, relabelled: bool, flags: list[str]) -> dict:
    """The config a bake writes: flags on, and a relabel's keys; inside a multimodal wrapper, all of it in the
    text decoder's config (the wrapper keeps its own architecture)."""
    config = dict(config)
    text = config
    if source.text_key:
        text = config[source.text_key] = dict(config.get(source.text_key) or {})
    given = dict(text)
    if relabelled and arch.name == source.relabel.windowed:
        text.update(source.relabel.windowed_config(source.config(text)))
    elif relabelled:
        for key in source.relabel.drop:
            text.pop(key, None)
    if relabelled:
        text["model_type"] = arch.model_types[0]
        text.update(pinned(given, source.model_types[0], text, arch.model_types[0], source.relabel.drop))
        if not source.text_key:
            text["architectures"] = [arch.architectures[0]]
    for flag in flags:
        text[flag] = True
    return for_every_reader(config)


def plan(ckpt: TensorSource, items: list[Item], extra: dict[tuple[int, str], np.ndarray] | None = None,
         arch: Arch | None = None) -> Plan:
    """Every bias the bake changes or adds, and the config it writes. Reads only the weights it folds.

    The one planner of every output (a folder, a model in memory, a GGUF file): layout, scale, a site with
    no fold and relabels all come from the table. ``extra``: bias deltas fitted by an approximate bake, per
    (decoder block, linear module). ``arch``: the family to plan in (default: the table's entry for the
    config; a GGUF passes its llama.cpp form).
    """
    source = arch or find_arch(ckpt.config)
    _refuse_quantized(ckpt, source)
    cfg = source.config(ckpt.config)
    hidden, n_layers = source.hidden_and_layers(cfg)
    if not extra:
        check_items(items, hidden, n_layers)
    targets = [fold_target(cfg, it.steer.site, source) for it in items]
    for it, t in zip(items, targets):
        if t.site.next_block and it.steer.layer == n_layers - 1:
            raise BakesteerError(f"{it.steer.site} of the last block ({it.steer.layer}) cannot be baked exactly into "
                                 f"{t.arch.name}: its output goes through the head, which has no bias; choose a "
                                 f"block below {n_layers - 1}.")
    relabelled = any(t.relabelled_from for t in targets)
    written = next((t.arch for t in targets if t.relabelled_from), source)
    flags = {f for t in targets for f in t.flags}  # a relabelled target's flags keep the source biases
    flags |= {slot for slot in (written.bias_slot(m) for _, m in extra or {}) if not flag_on(cfg, slot)}
    flags = sorted(flags)

    if relabelled and source.relabel.split is not None:  # the target has the fused linears as parts
        ckpt = ckpt.split(fused.split_keys(ckpt, source, source.relabel.split(cfg), n_layers))
    deltas = _Deltas(ckpt, written)
    for it in items:
        deltas.fold(it.steer, written.sites[it.steer.site], cfg, hidden)
    for (layer, module), d in (extra or {}).items():
        deltas.fitted(layer, module, d)
    updates, originals = deltas.cast()
    _zeros_for_flags(ckpt, written, flags, n_layers, updates)
    config = _written_config(ckpt.config, source, written, relabelled, flags)
    caveat = source.relabel.caveat(cfg) if relabelled else None
    return Plan(written, source.name if relabelled else None, flags, config, updates, originals, ckpt, caveat)


def recipe_core(items: list[Item], p: Plan, tensors: Mapping[str, object]) -> dict:
    """What every bake records about its steers and tensors, whatever it writes."""
    return {
        "convention": CONVENTION,
        "steers": [{"site": it.steer.site, "layer": it.steer.layer, "coef": it.steer.coef,
                    "norm": float(np.linalg.norm(as_f64(it.steer.vector))), **it.origin} for it in items],
        "tensors_changed": sorted(k for k in p.updates if k in tensors),
        "tensors_added": sorted(k for k in p.updates if k not in tensors),
    }


def default_output(model_name: str, vector_names: list[str], site: str, layers: list[int]) -> Path:
    ls = "-".join(str(l) for l in layers)
    return Path("exported") / f"{model_name}-{'+'.join(vector_names)}-{site}-L{ls}"


def bake(model_dir: str | os.PathLike, items: list[Item], out: str | os.PathLike, force: bool = False,
         progress: bool = True, source_info: dict | None = None, link: bool = False,
         approx: ApproxOptions | None = None) -> dict:
    """Bake ``items`` into the checkpoint at ``model_dir`` and write the result to ``out``. Returns the recipe.

    Streams: reads only the weights it folds, copies (or with ``link`` hard-links) every untouched
    shard. ``source_info`` adds to the recipe's source record (e.g. the Hub id and revision).
    Baking onto a baked folder composes: the record stays relative to the original source.
    ``approx``: fit the nearest slots for sites with no exact fold instead of refusing them.
    """
    src, out = Path(model_dir), Path(out)
    if not (src / "config.json").is_file():
        raise BakesteerError(f"{src} has no config.json; pass a Hugging Face model folder with --model.")
    prev = load_record(src) if has_record(src) else None
    origin = [Path(prev.recipe["source"]["path"])] if prev is not None else []
    staging = Staging(out, force, inputs=[src, *origin])  # refuses a bad or existing output before any work
    if prev is not None and not check_untampered(src, prev.recipe):
        warn_unchecked(src)
    if is_bin_checkpoint(src):  # convert to safetensors beside the output, then link from there
        conv = out.parent / f".{out.name}.bakesteer-conv-{os.getpid()}"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            convert_bin(src, conv, progress)
            info = {**(source_info or {}), "format": "pytorch .bin (converted to safetensors)"}
            return _bake(Checkpoint(conv), src, items, staging, progress, info, link=True, approx=approx)
        finally:
            shutil.rmtree(conv, ignore_errors=True)
    return _bake(Checkpoint(src), src, items, staging, progress, source_info, link, approx, prev)


def _approximate(ckpt: Checkpoint, src: Path, items: list[Item], opts: ApproxOptions,
                 progress: bool) -> tuple[Plan, dict, list[str]]:
    """Fit the slots of the non-exact items, plan the bake, and measure what is written."""
    import torch

    from . import approx as ap

    source = find_arch(ckpt.config)
    cfg = source.config(ckpt.config)
    check_items(items, *source.hidden_and_layers(cfg))
    exact = [it for it in items if is_exact(cfg, it.steer.site)]
    loose = [it for it in items if not is_exact(cfg, it.steer.site)]
    for it in loose:
        approx_slots(cfg, it.steer.site, it.steer.layer)  # refuses before any work
    if not 0 < opts.tokens <= 1_000_000 or opts.steps < 0 or not opts.lr > 0:
        raise BakesteerError("--calib-tokens must be positive, --fit-steps non-negative and --fit-lr positive.")
    calib = ap.read_calib(opts.calib, opts.seed)
    from .engine import Model, pick_device
    from .lm import load_tokenizer, take_tokens

    device = pick_device(opts.device)
    tok = load_tokenizer(src, "an approximate bake reads calibration text with it")
    ap.tokenized(tok, calib, opts.tokens)  # refuses too little text before any model runs
    model = Model(src, torch.float32, device)  # block streaming: only the blocks the fit replays are resident
    steers, approximated = [it.steer for it in exact], [it.steer for it in loose]
    fit = ap.fit(model, tok, steers, approximated, calib, opts.tokens, opts.steps, opts.lr, seed=opts.seed,
                 progress=progress)
    p = plan(ckpt, exact, fit.deltas)
    arch = p.arch
    written = {}  # what the checkpoint's dtype keeps of each fitted delta
    for (layer, module) in fit.deltas:
        bkey = _keys(ckpt, arch, layer, module)[1]
        before = p.originals.get(bkey, np.zeros(1)).astype(np.float64)
        kept = p.updates[bkey].astype(np.float64) - before
        written[(layer, module)] = torch.from_numpy(kept).float().to(device)
    final, = ap.measure(model, steers, approximated, [written], take_tokens(tok, calib.heldout, ap.HELDOUT_TOKENS))
    model.close()
    if not np.isfinite(final.kl_hooked_baked):
        raise BakesteerError("the approximate bake gives non-finite outputs on held-out text; nothing was written.")
    record = {**fit.record(), "heldout": asdict(final), "approximated_steers": [items.index(it) for it in loose],
              "calibration": {"source": calib.source, "sha256": calib.sha256, "fit_passages": len(calib.fit),
                              "heldout_passages": len(calib.heldout), "token_budget": opts.tokens,
                              "heldout_token_budget": ap.HELDOUT_TOKENS,
                              "seed": opts.seed},
              "objective": "residual stream after block L+1, squared error per dimension over its spread; "
                           "model frozen, Adam"}
    return p, record, calib.heldout


def _bake(ckpt: Checkpoint, src: Path, items: list[Item], staging: Staging, progress: bool,
          source_info: dict | None, link: bool, approx: ApproxOptions | None = None,
          prev: Record | None = None) -> dict:
    cfg = find_arch(ckpt.config).config(ckpt.config)
    approximation, heldout = None, None
    if approx is not None and not all(is_exact(cfg, it.steer.site) for it in items):
        if prev is not None:
            raise BakesteerError(f"{src} is already baked; an approximate bake must start from the unbaked model "
                                 "(bake every vector in one run, or `bakesteer unbake` first).")
        p, approximation, heldout = _approximate(ckpt, src, items, approx, progress)
    else:
        p = plan(ckpt, items)
    if prev is not None and not prev.recipe.get("exact", True):
        raise BakesteerError(f"{src} holds an approximate bake, which does not compose; bake every vector in one "
                             "run from the unbaked model.")
    recipe = {
        "bakesteer_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "exact": approximation is None,
        **({"approximation": approximation} if approximation else {}),
        "source": {
            "path": str(src.resolve()),
            "model_type": ckpt.config.get("model_type"),
            "architectures": ckpt.config.get("architectures"),
            "config_sha256": hashlib.sha256((src / "config.json").read_bytes()).hexdigest(),
            **(source_info or {}),
        },
        "written": {
            "model_type": p.config.get("model_type"),
            "architectures": p.config.get("architectures"),
            "relabelled_from": p.relabelled_from,
            "flags_switched_on": p.flags,
            **({"caveat": p.caveat} if p.caveat else {}),
            **({"text_model_type": p.config[p.arch.text_key].get("model_type")} if p.arch.text_key else {}),
        },
        "dtype": str(next(iter(p.updates.values())).dtype),
        **recipe_core(items, p, p.source.tensors),
    }
    index = ckpt.root / INDEX
    copied = sum((ckpt.root / s).stat().st_size for s in ckpt.shard_meta)  # copied or linked, each hashed
    with staging as tmp, bar(total=copied, desc="writing", unit="B", unit_scale=True, unit_divisor=1024,
                             disable=not progress) as pbar:
        written = write_checkpoint(p.source, tmp, p.updates, p.config, link, pbar)
        recipe["shards"], recipe["files_left_out"], recipe["sha256"] = written.shards, written.left_out, written.sha256
        recipe["source"]["sha256"] = written.source_sha256
        record = Record(recipe, [as_f64(it.steer.vector) for it in items], p.originals,
                        (src / "config.json").read_bytes(), index.read_bytes() if index.is_file() else None, heldout,
                        (src / "README.md").read_bytes() if (src / "README.md").is_file() else None,
                        {s: fused.source_header(ckpt, s)[8:].decode(errors="surrogateescape") for s in p.source.headers}
                        or None)
        if prev is not None:
            record = merge(prev, record)
        record.write(tmp)
    return record.recipe
