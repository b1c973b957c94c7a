"""The one grammar for number lists on the command line: layers ('5', '4,5,6', '4-6') and coefficients.

Ranges are bounded before they are expanded, so a typo like ``0-100000000`` is refused at once
instead of growing a list of a hundred million blocks.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Callable

from .errors import BakesteerError

MAX_SPAN = 4096  # more blocks than any released decoder has; a range longer than this is a typo
_LAYER_PART = re.compile(r"(\d+)(?:-(\d+))?")


def parse_layers(text: str, what: str = "layer list") -> list[int]:
    """'5', '4,5,6' or '4-6' (mixed freely) as block numbers, in the order given."""
    out: list[int] = []
    for part in str(text).split(","):
        m = _LAYER_PART.fullmatch(part.strip())
        if m is None:
            raise BakesteerError(f"{what} {text!r} does not parse; give layers like 5, 4,5,6 or 4-6.")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise BakesteerError(f"{what} {text!r} has the range {a}-{b}, which runs backwards; write {b}-{a}.")
        if b - a >= MAX_SPAN:
            raise BakesteerError(f"{what} {text!r} spans {b - a + 1} blocks, more than any model has; check the range.")
        out += range(a, b + 1)
    return out


def parse_coefs(text: str, what: str = "coefficient list", finite: bool = True) -> list[float]:
    """'4', '1,2,4' or '-4,-1,1,4' as floats (finite ones unless ``finite`` is False: the caller refuses the rest
    with its own sentence)."""
    out: list[float] = []
    for part in str(text).split(","):
        try:
            v = float(part.strip())
        except ValueError:
            v = math.nan
            finite = True
        if finite and not math.isfinite(v):
            raise BakesteerError(f"{what} {text!r} does not parse; give finite numbers like 4, 1,2,4 or -4,-1,1,4.")
        out.append(v)
    return out


def _as_arg(parse: Callable[[str], list]) -> Callable[[str], list]:
    """``parse`` as an argparse ``type``: a bad list is argparse's own one-line usage error."""
    def arg(text: str) -> list:
        try:
            return parse(text)
        except BakesteerError as e:
            raise argparse.ArgumentTypeError(str(e).rstrip(".")) from e

    return arg


layers_arg = _as_arg(parse_layers)
coefs_arg = _as_arg(parse_coefs)
bake_coefs_arg = _as_arg(lambda text: parse_coefs(text, finite=False))  # bake refuses nan/inf in one sentence
