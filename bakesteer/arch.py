"""The architecture table: per model family, which module is each site and what a fold touches.

Everything architecture-specific is data, in the table (``bakesteer.families``; its record types are in
``bakesteer.archtypes``): module paths, bias slots, the bias group of each linear, which runtimes read those
groups, llama.cpp's tensor names and the config name of the context length. This module finds a family's
entry and resolves where a site folds on a given config. A *site* is a point in decoder block L:

    attn_in   output of the pre-attention norm       -> q/k/v biases:   b' = b + a*W v
    mlp_in    output of the pre-MLP norm             -> up/gate biases: b' = b + a*W v
    attn_out  output of the attention module         -> o bias:         b' = b + a*v
    mlp_out   output of the MLP module               -> down bias:      b' = b + a*v
    resid     residual stream after block L          -> down bias:      b' = b + a*v / scale

Module paths are relative to the decoder block and equal the checkpoint key prefixes.
A linear's bias slot is ALWAYS (the modeling code creates it), NEVER (hard-coded
``bias=False``) or the name of the config flag that creates it.

The table is read-only (``MappingProxyType`` inside frozen dataclasses). A test that needs another
entry builds its own ``Arch`` and puts it in play for a block with ``variant(arch)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Mapping

from .archtypes import (ALWAYS, GROUPS, NEVER, READ_FROM, RUNTIME_TESTS, RUNTIMES, SITES, Approx, Arch,  # noqa: F401
                        Gguf, Group, Layout, Relabel, Site, Support, Wrapper, flag_on)
from .errors import BakesteerError
from .families import APPROX_POST_NORM, APPROX_PRE_NORM, ARCHS, INSIDE_WRAPPERS, WRAPPERS  # noqa: F401

_VARIANTS: ContextVar[tuple[Arch, ...]] = ContextVar("bakesteer_arch_variants", default=())


@contextlib.contextmanager
def variant(arch: Arch) -> Iterator[Arch]:
    """Within the block, ``arch`` answers for its model types and GGUF name ahead of the table (tests and
    measurements that need an entry the table does not have; the table itself never changes)."""
    token = _VARIANTS.set((arch, *_VARIANTS.get()))
    try:
        yield arch
    finally:
        _VARIANTS.reset(token)


def _entries() -> tuple[Arch, ...]:
    return (*_VARIANTS.get(), *ARCHS.values())


def find_arch(cfg: Mapping | None = None, *, gguf: str | None = None) -> Arch:
    """The table entry for a config dict (by ``model_type``) or a GGUF architecture name, or a clear refusal."""
    if gguf is not None:
        found = next((a for a in _entries() if a.gguf and a.gguf.name == gguf), None)
        if found is None:
            known = ", ".join(a.gguf.name for a in ARCHS.values() if a.gguf)
            raise BakesteerError(f"GGUF architecture {gguf!r} is not in bakesteer's table (it bakes GGUF files of: "
                                 f"{known}); bake the Hugging Face checkpoint instead and convert it with llama.cpp.")
        return found
    model_type = (cfg or {}).get("model_type")
    wrapper = wrapper_of(model_type)
    if wrapper is not None:
        return _inside(WRAPPERS[wrapper], cfg)
    found = _entry(cfg)
    if found is None:
        known = ", ".join(sorted({t for a in ARCHS.values() for t in a.model_types}))
        raise BakesteerError(f"model_type {model_type!r} is not supported; bakesteer supports: {known}.")
    return found


def _entry(cfg: Mapping | None) -> Arch | None:
    """The entry of the table that describes ``cfg``: its model type, and the form of it (``Arch.when``)."""
    model_type = (cfg or {}).get("model_type")
    return next((a for a in _entries() if model_type in a.model_types and a.when(a.config(cfg))), None)


def wrapper_of(model_type: str | None) -> str | None:
    """The ``WRAPPERS`` name of a multimodal model type, or None."""
    return next((name for name, w in WRAPPERS.items() if model_type in w.model_types), None)


def _inside(w: Wrapper, cfg: Mapping) -> Arch:
    """The text decoder's family as it sits inside a multimodal wrapper."""
    text = cfg.get("text_config")
    text = {"model_type": w.default_text, **(text if isinstance(text, Mapping) else {})}
    if any(text["model_type"] in x.model_types for x in WRAPPERS.values()):
        raise BakesteerError(f"{cfg.get('model_type')}'s text_config is itself a multimodal config; fix the config.")
    try:
        inner = find_arch(text)
    except BakesteerError:
        raise BakesteerError(f"{cfg.get('model_type')}'s text decoder (model_type {text['model_type']!r}) is not in "
                             "bakesteer's table, so its biases cannot be baked; bakesteer bakes multimodal "
                             f"checkpoints of: {', '.join(sorted(WRAPPERS))}.") from None
    return wrapped(inner, w.prefix, w.stored_as)


def wrapped(inner: Arch, prefix: str, stored_as: tuple[tuple[str, str], ...]) -> Arch:
    """``inner`` with its modules under a wrapper's ``prefix`` (``model.layers`` -> ``<prefix>.layers``), its
    config read from ``text_config``; no runtime is known to read such a bake, no approximation or GGUF form."""
    def moved(path: str) -> str:
        assert path.startswith("model."), (inner.name, path)
        return f"{prefix}.{path.removeprefix('model.')}"

    return dataclasses.replace(inner, layers=moved(inner.layers), final_norm=moved(inner.final_norm),
                               text_key="text_config", stored_as=stored_as, approx=None, gguf=None, runtimes={},
                               measured={}, notes={})


arch_for = find_arch  # the name older modules use


def family_of(model_type: str | None) -> str | None:
    """The table name of a model type, or None when the table has no such family."""
    return next((a.name for a in _entries() if model_type in a.model_types), None)


def context_length(cfg: Mapping) -> int | None:
    """The context length a config declares, under its family's own name for it (None when absent)."""
    arch = find_arch(cfg)
    value = arch.config(cfg).get(arch.context)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class FoldTarget:
    """Where a site folds on a given config: the family whose layout is written, and the flags it needs."""

    arch: Arch  # family of the written checkpoint (after a relabel, the target family)
    site: Site
    flags: tuple[str, ...]  # config flags that must be switched on in the written config
    relabelled_from: str | None  # source family when the architecture changes


def folds(arch: Arch, site: Site) -> tuple[str, ...] | None:
    """The linears whose biases absorb ``site`` (of the next block, for a ``next_block`` site), or None."""
    if not site.next_block:
        return site.fold
    parts = [arch.sites[n].fold for n in site.next_block]
    return None if any(p is None for p in parts) else tuple(m for p in parts for m in p)


def _fold_in(arch: Arch, site: Site, cfg: Mapping) -> tuple[str, ...] | None:
    """Flags to switch on for the site's fold in ``arch``, or None when a target has no bias slot."""
    slots = [arch.bias_slot(m) for m in folds(arch, site) or ()]
    if not slots or NEVER in slots:
        return None
    return tuple(sorted({s for s in slots if not flag_on(cfg, s)}))


def _resolve(arch: Arch, cfg: Mapping, site_name: str) -> FoldTarget | str:
    """Where ``site_name`` folds on this config (relabelling only where exact), or why it cannot."""
    cfg = arch.config(cfg)
    site = arch.sites[site_name]
    unsupported = arch.unsupported(cfg)
    if unsupported is not None:
        return unsupported
    if folds(arch, site) is None:
        return site.why_not
    flags = _fold_in(arch, site, cfg)
    if flags is not None:
        return FoldTarget(arch, site, flags, None)
    if arch.relabel is None:
        return f"{arch.name} builds {', '.join(folds(arch, site))} with bias=False, so there is no bias slot"
    blocker = arch.relabel.blocker(cfg)
    if blocker is not None and arch.relabel.windowed is None:
        return f"{arch.name} has no bias slot there and {blocker}"
    target = ARCHS[arch.relabel.to if blocker is None else arch.relabel.windowed]
    if arch.text_key:  # relabelled inside the wrapper: the text config's family changes, its place does not
        target = wrapped(target, arch.final_norm.rsplit(".", 1)[0], arch.stored_as)
    tsite = target.sites[site_name]
    # biases the source always has must load in the target, so their flags go on too
    kept = {target.bias_slot(m) for m, s in arch.linears.items() if s == ALWAYS}
    needed = {target.bias_slot(m) for m in folds(target, tsite) or ()}
    return FoldTarget(target, tsite, tuple(sorted(kept | needed)), arch.name)


def is_exact(cfg: Mapping, site_name: str, arch: Arch | None = None) -> bool:
    check_site(site_name)
    return isinstance(_resolve(arch or find_arch(cfg), cfg, site_name), FoldTarget)


def exact_sites(cfg: Mapping, arch: Arch | None = None) -> list[str]:
    """Sites that fold exactly on this config (directly or through an exact relabel)."""
    arch = arch or find_arch(cfg)
    return [s for s in SITES if isinstance(_resolve(arch, cfg, s), FoldTarget)]


def check_site(site_name: str) -> None:
    if site_name not in SITES:
        raise BakesteerError(f"unknown site {site_name!r}; choose one of: {', '.join(SITES)}.")


def _approx_offer(arch: Arch) -> str:
    if arch.approx is None or any(arch.bias_slot(m) == NEVER for _, m in arch.approx.slots):
        return ""
    return ("; or pass --approx to fit the nearest bias slots (attention of block L+1) and measure how "
            "close it gets (on SmolLM2: a median 3% of the steering's own KL, 1-9%)")


def fold_target(cfg: Mapping, site_name: str, arch: Arch | None = None) -> FoldTarget:
    """Resolve where ``site_name`` folds on this config, or refuse naming the sites that work.

    ``arch``: the family to resolve in (default: the table's entry for ``cfg``), e.g. a GGUF's form.
    """
    check_site(site_name)
    arch = arch or find_arch(cfg)
    found = _resolve(arch, cfg, site_name)
    if isinstance(found, FoldTarget):
        return found
    exact = exact_sites(cfg, arch)
    where = f"sites that bake exactly here: {', '.join(exact)}" if exact else "no site bakes exactly here"
    raise BakesteerError(f"site {site_name} cannot be baked exactly into {arch.name}: {found}; {where}"
                         f"{_approx_offer(arch)}.")


def approx_slots(cfg: Mapping, site_name: str, layer: int) -> tuple[Approx, list[tuple[int, str]]]:
    """The slots that approximate ``site_name`` of block ``layer`` on this config, or a clear refusal.

    An exact site never gets here: asking for it is a programming error.
    """
    check_site(site_name)
    assert not is_exact(cfg, site_name), f"{site_name} is exact; fold it exactly"
    arch = find_arch(cfg)
    n_layers = arch.hidden_and_layers(arch.config(cfg))[1]
    ap = arch.approx
    if ap is None or any(arch.bias_slot(m) == NEVER for _, m in ap.slots):
        raise BakesteerError(f"{arch.name} has no attention bias slots to approximate {site_name} with; "
                             f"use an exact site: {', '.join(exact_sites(cfg)) or 'none'}.")
    last = layer + max(off for off, _ in ap.slots)
    if last >= n_layers:
        raise BakesteerError(f"{site_name} of block {layer} is approximated with block {last}, which this "
                             f"{n_layers}-block model lacks; choose a layer below {n_layers - 1}.")
    return ap, [(layer + off, m) for off, m in ap.slots]


# module names steering-vectors' layer_type guesser matches, per layer type (its layer_matching.py)
_SV_NAMES = {"decoder_block": ("",), "self_attn": ("attn", "attention"), "mlp": ("mlp",),
             "input_layernorm": ("ln_1", "input_layernorm"),
             "post_attention_layernorm": ("ln_2", "post_attention_layernorm")}


def steering_vectors_misses(cfg: Mapping, site_name: str, layer_type: str) -> str | None:
    """The module carrying ``site_name`` in this family when steering-vectors' ``layer_type`` guesser would not
    find it, else None (also None for a family the table does not know: nothing to check against)."""
    arch = _entry(cfg)
    if arch is None:
        return None
    hook = arch.sites[site_name].hook
    return None if any(n in hook for n in _SV_NAMES[layer_type]) else f"{arch.name}'s {hook or 'decoder block'}"
