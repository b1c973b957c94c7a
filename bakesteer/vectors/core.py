"""What a vector file is once read, and the checks every reader shares: one real [hidden] vector per layer."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..arch import check_site
from ..errors import BakesteerError
from ..paths import bundled_or
from ..steer import as_f64



@dataclass
class VectorFile:
    path: Path
    format: str  # "bakesteer" | "ibm-svec" | "gguf" | "steering-vectors" | "raw"
    vectors: dict[int | None, np.ndarray]  # file's own layer key -> (hidden,) float64; None = any layer
    site: str | None  # None: the caller chooses (raw tensors)
    shift: int = 0  # decoder block = key + shift
    model_type: str | None = None
    coef: float | None = None  # the file's suggested coefficient
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def resolve_path(path: str | Path) -> Path:
    """A user path, or the file of that name bundled with bakesteer (e.g. ``love.svec``)."""
    p = bundled_or(path)
    if not p.is_file():
        raise BakesteerError(f"vector file {path} does not exist; check the path given to --vector.")
    return p


def _numbers(values, where: str) -> np.ndarray:
    """``values`` (a torch tensor, numpy array or nested list) as float64, refusing anything but real numbers."""
    if hasattr(values, "detach"):  # a torch tensor
        if values.is_complex():
            raise BakesteerError(f"{where} holds complex numbers; a steering vector is real, so save its real part.")
        return as_f64(values)
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as e:
        raise BakesteerError(f"{where} is not a list of numbers ({type(e).__name__}); "
                             "regenerate the vector file.") from e
    if np.iscomplexobj(arr):
        raise BakesteerError(f"{where} holds complex numbers; a steering vector is real, so save its real part.")
    if arr.dtype.kind not in "iuf":
        raise BakesteerError(f"{where} is not a list of numbers; regenerate the vector file.")
    with np.errstate(over="ignore"):  # a huge integer becomes inf, refused as not finite
        return arr.astype(np.float64)


def as_vector(values, where: str) -> np.ndarray:
    """One real, finite [hidden] vector (AISteer360's [1, hidden] accepted), or one sentence why not."""
    t = _numbers(values, where)
    if t.ndim == 2 and t.shape[0] == 1:  # AISteer360's [K, hidden] with K = 1
        t = t[0]
    if t.ndim == 2 and t.shape[0] > 1:  # AISteer360 adds row k at position k (ActAdd): not a constant
        raise BakesteerError(
            f"{where} holds {t.shape[0]} per-position directions, which a bias added at every position cannot "
            "reproduce; bake one row (e.g. the mean of the rows) as a [hidden] vector."
        )
    if t.ndim != 1 or t.size == 0:
        raise BakesteerError(
            f"{where} has shape {tuple(t.shape)}; bakesteer bakes one direction per layer, so give a [hidden] vector."
        )
    if not np.isfinite(t).all():
        raise BakesteerError(f"{where} contains NaN or infinite values; regenerate the vector.")
    return t


def layer_key(key, where: str) -> int:
    m = re.search(r"(\d+)$", str(key))
    if m is None:
        raise BakesteerError(f"{where} has a key {key!r} with no layer number; name layers by integers.")
    return int(m.group(1))


def by_layer(items, where: str) -> dict[int, np.ndarray]:
    """{layer number: vector} from (key, values) pairs, refusing two keys that name one layer."""
    out: dict[int, np.ndarray] = {}
    seen: dict[int, str] = {}
    for k, v in items:
        n = layer_key(k, where)
        if n in out:
            raise BakesteerError(f"{where} has the keys {seen[n]!r} and {k!r}, which both name layer {n}; keep one.")
        out[n], seen[n] = as_vector(v, f"{where} layer {k}"), str(k)
    return out


def pick(vf: VectorFile, layers: list[int], site: str | None) -> list[tuple[str, int, np.ndarray]]:
    """(site, decoder block, vector) for each requested file layer, in the file's convention."""
    if vf.site is not None and site is not None and site != vf.site:
        raise BakesteerError(
            f"{vf.path} holds {vf.site} vectors ({vf.format}); drop --site or pass --site {vf.site}."
        )
    site = site or vf.site or "resid"
    check_site(site)
    out = []
    for layer in layers:
        v = vf.vectors.get(None, vf.vectors.get(layer))
        if v is None:
            have = ", ".join(str(k) for k in sorted(vf.vectors, key=lambda k: -1 if k is None else k))
            raise BakesteerError(f"{vf.path} has no vector for layer {layer}; it has layers {have}.")
        block = layer + vf.shift
        if block < 0:
            raise BakesteerError(
                f"{vf.path} layer {layer} is added to the input of block 0 (the embeddings), which has no bias "
                "slot; choose layer 1 or later."
            )
        out.append((site, block, v))
    return out


def atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file beside ``path``, renamed into place only when complete."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # writers look at the suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
