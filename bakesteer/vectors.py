"""Steering-vector files: bakesteer's own JSON, IBM activation-steering `.svec`, raw tensors.

Layer numbers stay as each file's tool counts them; ``shift`` turns them into decoder blocks:
bakesteer and raw files use block N itself; an IBM `.svec` key N is added to the *input* of
block N, i.e. the residual stream after block N-1 (``shift = -1``, site ``resid``).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arch import SITES, check_site
from .errors import BakesteerError
from .steer import as_f64

BUNDLED = Path(__file__).parent / "data"
FORMAT_VERSION = 1
CONVENTION = "key N = the site of decoder block N (0-based); resid = residual stream after block N"


@dataclass
class VectorFile:
    path: Path
    format: str  # "bakesteer" | "ibm-svec" | "raw"
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
    p = Path(path)
    if not p.exists() and (BUNDLED / p.name).is_file() and p.parent == Path("."):
        return BUNDLED / p.name
    if not p.is_file():
        raise BakesteerError(f"vector file {path} does not exist; check the path given to --vector.")
    return p


def _vector(values, where: str) -> np.ndarray:
    if np.iscomplexobj(values) or (hasattr(values, "is_complex") and values.is_complex()):
        raise BakesteerError(f"{where} holds complex numbers; a steering vector is real, so save its real part.")
    try:
        t = as_f64(values)
    except (TypeError, ValueError) as e:
        raise BakesteerError(f"{where} is not a list of numbers ({e}); regenerate the vector file.")
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


def _layer_key(key: str, where: str) -> int:
    m = re.search(r"(\d+)$", str(key))
    if m is None:
        raise BakesteerError(f"{where} has a key {key!r} with no layer number; name layers by integers.")
    return int(m.group(1))


def _by_layer(items, where: str) -> dict[int, np.ndarray]:
    """{layer number: vector} from (key, values) pairs, refusing two keys that name one layer."""
    out: dict[int, np.ndarray] = {}
    seen: dict[int, str] = {}
    for k, v in items:
        n = _layer_key(k, where)
        if n in out:
            raise BakesteerError(f"{where} has the keys {seen[n]!r} and {k!r}, which both name layer {n}; keep one.")
        out[n], seen[n] = _vector(v, f"{where} layer {k}"), str(k)
    return out


def _load_json(path: Path, raw: bytes) -> VectorFile:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BakesteerError(f"{path} is not valid JSON ({e}); is it really a .svec file?")
    if not isinstance(doc, dict):
        raise BakesteerError(f"{path} is JSON but not a vector file (expected an object with 'directions').")
    ours = doc.get("bakesteer")
    if isinstance(ours, dict):
        site = ours.get("site", "resid")
        check_site(site)
        vecs = {int(k): _vector(v, f"{path} layer {k}") for k, v in (ours.get("vectors") or {}).items()}
        fmt, shift, coef = "bakesteer", 0, ours.get("coef")
    elif isinstance(doc.get("directions"), dict):
        vecs = _by_layer(doc["directions"].items(), str(path))
        fmt, site, shift, coef = "ibm-svec", "resid", -1, None
        ev = doc.get("explained_variances")
        ours = {"explained_variances": ev} if isinstance(ev, dict) else {}
    else:
        raise BakesteerError(f"{path} holds neither 'directions' (IBM .svec) nor a 'bakesteer' block.")
    if not vecs:
        raise BakesteerError(f"{path} holds no vectors.")
    return VectorFile(path, fmt, vecs, site, shift, doc.get("model_type"), coef, meta=ours)


def _load_raw(path: Path) -> VectorFile:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            obj = load_file(str(path))
        elif suffix == ".npy":
            obj = np.load(path, allow_pickle=False)
        elif suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary code
        else:
            raise BakesteerError(
                f"{path} has an unknown extension; give a .svec/.json, .safetensors, .npy or .pt vector file."
            )
    except BakesteerError:
        raise
    except Exception as e:  # each reader raises its own types for corrupt input
        if type(e).__name__ == "UnpicklingError":  # weights_only refused a pickled object
            raise BakesteerError(
                f"{path} could not be read: it holds pickled Python objects, which bakesteer never unpickles; save "
                "plain tensors (a steering-vectors SteeringVector: torch.save(dataclasses.asdict(sv), path))."
            )
        raise BakesteerError(f"{path} could not be read as a {suffix} tensor file ({type(e).__name__}); check the file.")
    from .formats import from_sv, is_sv_dump

    if is_sv_dump(obj):  # steering-vectors: {"layer_activations": ..., "layer_type": ...} or layer_activations.N
        return from_sv(path, obj, _safetensors_metadata(path) if suffix == ".safetensors" else None)
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    is_array = isinstance(obj, np.ndarray) or hasattr(obj, "detach")  # numpy, or a torch tensor from .pt
    if isinstance(obj, dict):
        vecs = _by_layer(obj.items(), str(path))
    elif is_array and obj.ndim == 2 and obj.shape[0] > 1:
        vecs = {i: _vector(row, f"{path} row {i}") for i, row in enumerate(obj)}
    elif is_array:
        vecs = {None: _vector(obj, str(path))}
    else:
        raise BakesteerError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict of tensors.")
    return VectorFile(path, "raw", vecs, None, meta={"rows": len(vecs)} if None not in vecs else {})


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return f.metadata() or {}


def load_vector_file(path: str | Path) -> VectorFile:
    """Read any supported vector file; every failure is a BakesteerError."""
    p = resolve_path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise BakesteerError(f"cannot read vector file {p} ({e.strerror}); check its permissions.")
    if p.suffix.lower() == ".gguf":  # llama.cpp / repeng control vector
        from .formats import read_gguf

        vf = read_gguf(p)
    else:
        vf = _load_json(p, raw) if p.suffix.lower() in (".svec", ".json") else _load_raw(p)
    vf.sha256 = hashlib.sha256(raw).hexdigest()
    return vf


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
            have = ", ".join(str(k) for k in sorted(vf.vectors))
            raise BakesteerError(f"{vf.path} has no vector for layer {layer}; it has layers {have}.")
        block = layer + vf.shift
        if block < 0:
            raise BakesteerError(
                f"{vf.path} layer {layer} is added to the input of block 0 (the embeddings), which has no bias "
                "slot; choose layer 1 or later."
            )
        out.append((site, block, v))
    return out


def save_bakesteer_vector(
    path: str | Path,
    vectors: dict[int, np.ndarray],
    site: str,
    model: dict,
    coef: float | None = None,
    method: str | None = None,
    extra: dict | None = None,
    explained: dict[int, float] | None = None,
) -> None:
    """Write bakesteer's own vector file: JSON that IBM's `.svec` loader also reads when site is resid.

    ``explained``: explained variance per block, where the method gives one (IBM's loader needs the key).
    """
    assert site in SITES, site
    to_list = lambda t: [float(x) for x in as_f64(t).astype(np.float32)]  # noqa: E731
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
            "vectors": {str(k): to_list(v) for k, v in sorted(vectors.items())},
        },
        "model_type": model.get("model_type"),
    }
    if site == "resid":  # IBM adds key N to the input of block N = residual after block N-1
        doc["directions"] = {str(k + 1): to_list(v) for k, v in sorted(vectors.items())}
        doc["explained_variances"] = {str(k + 1): (explained or {}).get(k) for k in sorted(vectors)}
    for k, v in doc["bakesteer"]["norms"].items():
        assert math.isfinite(v), f"layer {k} vector is not finite"
    Path(path).write_text(json.dumps(doc) + "\n")
