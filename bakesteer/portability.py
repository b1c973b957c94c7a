"""Which inference runtimes honour the bias tensors a bake writes, as the architecture table records it.

A bake writes biases in three groups: ``qkv`` (q/k/v projections, fused or not), ``o`` (attention
output projection) and ``mlp`` (gate/up/down). A runtime either reads a group (``yes``), loads the
checkpoint but drops it without an error (``ignored``: the steering silently does nothing there),
refuses the checkpoint (``refused``), or has not been checked (``unknown``). The per-family rows and
the bias group of every linear are fields of ``bakesteer.arch``; this module only reads them.
"""
from __future__ import annotations

from typing import Iterable

from .arch import ARCHS, GROUPS, RUNTIMES, WRAPPERS, Group, Support, family_of, wrapper_of

__all__ = ["GROUPS", "MULTIMODAL", "RUNTIMES", "entry", "for_recipe", "groups_written", "support", "table_lines",
           "warnings"]
_RANK = {"refused": 0, "ignored": 1, "unknown": 2, "yes": 3}


def groups_written(family: str, keys: Iterable[str]) -> list[Group]:
    """The bias groups the checkpoint keys belong to, in table order."""
    arch = ARCHS[family]
    found = {arch.group_of(k) for k in keys}
    return [g for g in GROUPS if g in found]


MULTIMODAL = "multimodal "  # before a wrapper's name where a family name is expected: "multimodal gemma3"


def entry(family: str):
    """The table entry with runtime rows for ``family``: a family, or a wrapper named ``MULTIMODAL + name``."""
    if family.startswith(MULTIMODAL):
        return WRAPPERS.get(family.removeprefix(MULTIMODAL))
    return ARCHS.get(family)


def _row(family: str, runtime: str) -> dict:
    found = entry(family)
    if found is None or not found.runtimes:  # nothing measured or read: transformers alone is known to read it
        return {g: "yes" for g in GROUPS} if runtime == "transformers" else {}
    return dict(found.runtimes.get(runtime, {}))


def support(family: str, groups: list[str]) -> dict[str, Support]:
    """Per runtime, the weakest support over the groups written (refused < ignored < unknown < yes)."""
    return {rt: min((_row(family, rt).get(g, "unknown") for g in groups), key=_RANK.__getitem__, default="yes")
            for rt in RUNTIMES}


def warnings(family: str, groups: list[str]) -> list[str]:
    """One sentence per runtime that would silently drop or refuse what was written."""
    found = entry(family)
    notes = found.notes if found is not None else {}
    out = []
    for rt in RUNTIMES:
        row = _row(family, rt)
        for verdict, verb in (("ignored", "loads it but ignores"), ("refused", "refuses")):
            hit = [g for g in groups if row.get(g) == verdict]
            noted = [notes[(rt, g)] for g in hit if (rt, g) in notes]
            if noted:
                out += noted
            elif hit:
                out.append(f"{rt} {verb} the {'/'.join(hit)} biases of {family} that this bake wrote")
    return list(dict.fromkeys(out))  # a note shared by several groups, once


def for_recipe(recipe: dict) -> tuple[str, list[Group]]:
    """(written family, bias groups written) of a bake; for a multimodal wrapper, the wrapper's entry where its
    text decoder is written as the family its rows were measured with ("" where it is not)."""
    written, keys = recipe["written"], recipe["tensors_changed"] + recipe["tensors_added"]
    wrapper = wrapper_of(written.get("model_type"))
    if wrapper is not None:
        w = WRAPPERS[wrapper]
        text = written.get("text_model_type") or w.default_text
        groups = groups_written(family_of(text) or family_of(w.default_text), keys)
        return (MULTIMODAL + wrapper if text == w.measured_text else ""), groups
    family = family_of(written.get("model_type"))
    if family is None:
        return "", []
    return family, groups_written(family, keys)


def table_lines(family: str, groups: list[str]) -> list[str]:
    """A Markdown table: runtime, support for what this bake wrote."""
    sup = support(family, groups)
    lines = [f"| runtime | reads the {'/'.join(groups) or 'no'} biases this bake wrote |", "|---|---|"]
    return lines + [f"| {rt} | {sup[rt]} |" for rt in RUNTIMES]
