"""The shape of the JSON records a bake leaves (``bakesteer.json``, ``bakesteer/verify.json``), checked
before anything reads them: these files travel with downloaded bakes, so every field is typed here.

A spec is a type (or tuple of types; ``Null`` admits null), ``Opt(spec)`` (the key may be missing), a
dict of specs (an object with at least those keys), ``[spec]`` (a list of such), ``MapOf(spec)`` (an
object of any keys with such values) or a function that raises ``ValueError`` itself.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .arch import SITES
from .errors import BakesteerError
from .paths import plain_name


Null = type(None)


@dataclass(frozen=True)
class Opt:
    spec: Any


@dataclass(frozen=True)
class MapOf:
    spec: Any


def check(value, spec, path: str = "") -> None:
    """Raise ValueError naming the first field of ``value`` that does not fit ``spec``."""
    if isinstance(spec, Opt):
        check(value, spec.spec, path)
    elif isinstance(spec, dict):
        _check_object(value, spec, path)
    elif isinstance(spec, list):
        _check_container(value, list, path)
        for i, item in enumerate(value):
            check(item, spec[0], f"{path.rstrip('.')}[{i}].")
    elif isinstance(spec, MapOf):
        _check_container(value, dict, path)
        for key, item in value.items():
            check(item, spec.spec, f"{path}{key}.")
    elif isinstance(spec, (type, tuple)):
        _check_type(value, spec if isinstance(spec, tuple) else (spec,), path)
    else:
        spec(value, path.rstrip("."))


def _check_object(value, spec: dict, path: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{path or 'the record'} is not an object")
    for key, sub in spec.items():
        if key in value:
            check(value[key], sub, f"{path}{key}.")
        elif not isinstance(sub, Opt):
            raise ValueError(f"{path}{key} is missing")


def _check_container(value, kind: type, path: str) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"{path.rstrip('.')} is not {'a list' if kind is list else 'an object'}")


def _check_type(value, types: tuple, path: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types).replace("NoneType", "null")
        raise ValueError(f"{path.rstrip('.')} is not {names}")


def number(value, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path} is not a finite number")


def block(value, path: str) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{path} is not a block number")


def site(value, path: str) -> None:
    if value not in SITES:
        raise ValueError(f"{path} is not a site")


def file_name(value, path: str) -> None:
    if value is not None:
        try:
            plain_name(value, path)
        except BakesteerError:
            raise ValueError(f"{path} is not a plain file name") from None


def sha256(value, path: str) -> None:
    if not isinstance(value, str) or re.fullmatch(r"[0-9a-f]{64}", value) is None:
        raise ValueError(f"{path} is a malformed hash")


def hub_model_id(value, path: str) -> None:
    from .models import is_repo_id

    if value is not None and not is_repo_id(value):
        raise ValueError(f"{path} is not a Hub model id like owner/name")


def bias_name(value, path: str) -> None:
    # "<module>.bias", or a stacked expert projection's "<module>.<name>_bias" (GPT-OSS)
    if not isinstance(value, str) or re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+(\.|_)bias", value) is None:
        raise ValueError(f"{path} is not the name of a bias tensor")


def _shards(value, path: str) -> None:
    check(value, MapOf(file_name), path)
    if not value:
        raise ValueError(f"{path} is empty")
    for key in value:
        file_name(key, f"{path} key")


def _hashes(value, path: str) -> None:
    check(value, MapOf(sha256), path)
    for key in value:
        file_name(key, f"{path} key")


def _names(value, path: str) -> None:
    if value is not None:
        check(value, [str], path)


def _sample(value, path: str) -> None:
    if value is not None:
        check(value, {"prompt": str, "source": str, "baked": str}, path + ".")


_HELDOUT = {"tokens": int, "kl_hooked_baked": number, "kl_source_hooked": number, "ratio": number,
            "top1_agreement": number}
APPROXIMATION = {"chosen": str, "slots": [str], "steps": int, "fit_tokens": int, "fit_seconds": number,
                 "heldout": _HELDOUT, "closed_form": {"ratio": number, "top1_agreement": number},
                 "calibration": {"heldout_token_budget": int}}
RECIPE = {
    "convention": str,
    "exact": Opt(bool),
    "steers": [{"site": site, "layer": block, "coef": number, "norm": number, "vector": str, "file": Opt(str),
                "format": Opt((str, Null)), "file_layer": Opt((int, Null))}],
    "shards": _shards,
    "sha256": Opt(_hashes),
    "tensors_changed": [bias_name],
    "tensors_added": [bias_name],
    "files_left_out": Opt([str]),
    "bakes": Opt(int),
    "source": {"path": str, "hub_id": Opt((str, Null)), "default_model": Opt((str, Null)),
               "base_model": Opt(hub_model_id), "weights": Opt(str), "sha256": Opt(_hashes)},
    "written": {"model_type": Opt((str, Null)), "architectures": Opt(_names),
                "relabelled_from": (str, Null), "flags_switched_on": [str], "caveat": Opt(str),
                "text_model_type": Opt((str, Null))},
}
_STRENGTH = {"kl": number, "ppl_source": number, "ppl_steered": number, "ppl_ratio": number, "verdict": str}
VERIFIED_EXACT = {"kind": str, "passed": bool, "dtype": str, "max_abs_diff": number, "tolerance": number,
                  "steering_effect": number, "kl_source_hooked": number, "greedy_tokens": int, "greedy_match": bool,
                  "prompts": [str], "sample": Opt(_sample), "strength": Opt(_STRENGTH)}
VERIFIED_APPROX = {"kind": str, "passed": bool, **_HELDOUT, "strength": Opt(_STRENGTH)}


def check_recipe(recipe) -> None:
    check(recipe, RECIPE)
    if not recipe["steers"]:
        raise ValueError("steers is empty")
    if recipe.get("exact") is False:
        check(recipe.get("approximation"), APPROXIMATION, "approximation.")


def check_verification(doc) -> None:
    check(doc, {"kind": str})
    check(doc, VERIFIED_APPROX if doc["kind"] == "approximate" else VERIFIED_EXACT)
