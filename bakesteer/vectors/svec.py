"""bakesteer's own JSON vector file and IBM activation-steering's ``.svec``: one reader, one writer each.

An IBM ``.svec`` key N is added to the *input* of decoder block N, i.e. the residual stream after block N-1
(``shift = -1``, site ``resid``). bakesteer's file is a superset that IBM's loader also reads when the site
is ``resid`` (its ``directions`` block is written in IBM's numbering).
"""
from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

import numpy as np

from ..arch import SITES, check_site
from ..errors import BakesteerError
from ..steer import as_f64
from .core import VectorFile, by_layer

FORMAT_VERSION = 1
CONVENTION = "key N = the site of decoder block N (0-based); resid = residual stream after block N"


def _typed(doc: dict, key: str, kind: type | tuple[type, ...], where: str, what: str):
    """``doc[key]`` when absent or of ``kind``, else one sentence naming the field."""
    value = doc.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise BakesteerError(f"{where} has a {key!r} field that is not {what}; regenerate the vector file.")
    return value


def _ours(path: Path, doc: dict, block: dict) -> VectorFile:
    site = _typed(block, "site", str, str(path), "a site name") or "resid"
    check_site(site)
    coef = _typed(block, "coef", Real, str(path), "a number")
    if coef is not None and not math.isfinite(coef):
        raise BakesteerError(f"{path} suggests a coefficient {coef} that is not finite; regenerate the vector file.")
    vectors = _typed(block, "vectors", dict, str(path), "an object of layer vectors") or {}
    vecs = by_layer(vectors.items(), str(path))
    return VectorFile(path, "bakesteer", vecs, site, 0, _model_type(path, doc), coef, meta=block)


def _ibm(path: Path, doc: dict) -> VectorFile:
    vecs = by_layer(doc["directions"].items(), str(path))
    ev = doc.get("explained_variances")
    meta = {"explained_variances": ev} if isinstance(ev, dict) else {}
    return VectorFile(path, "ibm-svec", vecs, "resid", -1, _model_type(path, doc), None, meta=meta)


def _model_type(path: Path, doc: dict) -> str | None:
    return _typed(doc, "model_type", str, str(path), "a model type name")


def read_json(path: Path, raw: bytes) -> VectorFile:
    """A bakesteer or IBM ``.svec``/``.json`` file, every field type-checked."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BakesteerError(f"{path} is not valid JSON ({type(e).__name__}); is it really a .svec file?") from e
    if not isinstance(doc, dict):
        raise BakesteerError(f"{path} is JSON but not a vector file (expected an object with 'directions').")
    if isinstance(doc.get("bakesteer"), dict):
        vf = _ours(path, doc, doc["bakesteer"])
    elif isinstance(doc.get("directions"), dict):
        vf = _ibm(path, doc)
    else:
        raise BakesteerError(f"{path} holds neither 'directions' as an object (IBM .svec) nor a 'bakesteer' block.")
    if not vf.vectors:
        raise BakesteerError(f"{path} holds no vectors.")
    return vf


def _floats(v) -> list[float]:
    return [float(x) for x in as_f64(v).astype(np.float32)]


def write_bakesteer(path: str | Path, vectors: dict[int, np.ndarray], site: str, model: dict,
                    coef: float | None = None, method: str | None = None, extra: dict | None = None,
                    explained: dict[int, float] | None = None) -> None:
    """Write bakesteer's own vector file: JSON that IBM's `.svec` loader also reads when site is resid.

    ``explained``: explained variance per block, where the method gives one (IBM's loader needs the key).
    """
    assert site in SITES, site
    doc: dict = {
        "bakesteer": {
            "version": FORMAT_VERSION,
            "site": site,
            "layer_convention": CONVENTION,
            "model": model,
            "hidden_size": int(as_f64(next(iter(vectors.values()))).shape[0]),
            "method": method,
            "coef": coef,
            "norms": {str(k): float(np.linalg.norm(as_f64(v))) for k, v in sorted(vectors.items())},
            **(extra or {}),
            **({"explained_variances": {str(k): float(v) for k, v in sorted(explained.items())}} if explained else {}),
            "vectors": {str(k): _floats(v) for k, v in sorted(vectors.items())},
        },
        "model_type": model.get("model_type"),
    }
    if site == "resid":  # IBM adds key N to the input of block N = residual after block N-1
        doc.update(_ibm_doc(vectors, explained or {}))
    for k, v in doc["bakesteer"]["norms"].items():
        assert math.isfinite(v), f"layer {k} vector is not finite"
    Path(path).write_text(json.dumps(doc) + "\n")


def _ibm_doc(vectors: dict[int, np.ndarray], explained: dict[int, float]) -> dict:
    """IBM's keys: key N + 1 for block N's output."""
    return {"directions": {str(b + 1): _floats(v) for b, v in sorted(vectors.items())},
            "explained_variances": {str(b + 1): explained.get(b) for b in sorted(vectors)}}


def write_ibm(path: Path, vectors: dict[int, np.ndarray], model: dict, explained: dict[int, float]) -> None:
    """A plain IBM activation-steering ``.svec``."""
    path.write_text(json.dumps({"model_type": model.get("model_type"), **_ibm_doc(vectors, explained)}) + "\n")


def explained_of(vf: VectorFile) -> dict[int, float]:
    """Explained variance per file key, where the file records it."""
    ev = vf.meta.get("explained_variances")
    out = {}
    for k, v in (ev.items() if isinstance(ev, dict) else ()):
        try:
            out[int(k)] = float(v)
        except (TypeError, ValueError, OverflowError):
            continue
    return out


