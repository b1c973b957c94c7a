"""Reading any vector file, and writing (site, block -> vector) as any format, refusing in one sentence what
the target cannot express. Each format's reader and writer lives in its own module."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from ..arch import SITES, find_arch, steering_vectors_misses
from ..errors import BakesteerError
from ..paths import check_output, check_replaceable
from .control import read as read_control, write as write_control
from .raw import read as read_raw
from .sv import SITE_SV, write as write_sv
from .svec import read_json, write_bakesteer, write_ibm
from .core import VectorFile, atomic, pick, resolve_path

FORMATS = ("bakesteer", "ibm", "gguf", "steering-vectors")
BY_SUFFIX = {".svec": "bakesteer", ".json": "bakesteer", ".gguf": "gguf", ".pt": "steering-vectors",
             ".safetensors": "steering-vectors"}


def load_vector_file(path: str | Path) -> VectorFile:
    """Read any supported vector file; every failure is a BakesteerError."""
    p = resolve_path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise BakesteerError(f"cannot read vector file {p} ({e.strerror}); check its permissions.") from e
    suffix = p.suffix.lower()
    if suffix == ".gguf":
        vf = read_control(p)
    elif suffix in (".svec", ".json"):
        vf = read_json(p, data)
    else:
        vf = read_raw(p)
    vf.sha256 = hashlib.sha256(data).hexdigest()
    return vf


def blocks_of(vf: VectorFile, layers: list[int] | None = None,
              site: str | None = None) -> tuple[str, dict[int, np.ndarray]]:
    """(site, block -> vector) for the given file keys (default: all), refusing what no block can carry."""
    if layers is None:
        if None in vf.vectors:
            raise BakesteerError(f"{vf.path} holds one vector with no layer; say which blocks with --layers.")
        layers = sorted(vf.vectors)
    picked = pick(vf, layers, site)
    return picked[0][0], {block: v for _, block, v in picked}


def check_model(blocks: dict[int, np.ndarray], model: dict) -> None:
    """Refuse vectors whose size or blocks do not fit the model described by ``model``."""
    hidden, n_layers = model.get("hidden_size"), model.get("num_hidden_layers")
    for b, v in sorted(blocks.items()):
        if hidden is not None and v.shape[0] != hidden:
            raise BakesteerError(f"the vector for block {b} has {v.shape[0]} entries but the model's hidden size "
                                 f"is {hidden}; it was made for another model.")
        if n_layers is not None and not 0 <= b < n_layers:
            raise BakesteerError(f"block {b} is out of range; this model has blocks 0 to {n_layers - 1}.")


def model_info(path: str | Path | None) -> dict:
    """Identity of a model folder (config.json only), for convert/inspect --model."""
    from ..models import resolve_model

    folder, name, source = resolve_model(None if path is None else str(path))
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        raise BakesteerError(f"{folder} has no readable config.json; pass a Hugging Face model folder.") from None
    arch = find_arch(cfg)
    hidden, n_layers = arch.hidden_and_layers(arch.config(cfg))
    return {"model_type": cfg.get("model_type"), "name": name, "hidden_size": hidden,
            "num_hidden_layers": n_layers, **source}


def format_for(path: str | Path, to: str | None = None) -> str:
    if to is not None:
        if to not in FORMATS:
            raise BakesteerError(f"unknown format {to!r}; choose one of: {', '.join(FORMATS)}.")
        return to
    fmt = BY_SUFFIX.get(Path(path).suffix.lower())
    if fmt is None:
        raise BakesteerError(f"cannot tell the format of {path} from its extension; name it .svec, .gguf, .pt or "
                             ".safetensors, or pass --to.")
    return fmt


def check_expressible(fmt: str, site: str, blocks: dict, model: dict) -> None:
    """Refuse, in one sentence, what ``fmt`` cannot express."""
    n_layers = model.get("num_hidden_layers")
    if fmt in ("gguf", "ibm") and site != "resid":
        what = "a llama.cpp control vector" if fmt == "gguf" else "an IBM .svec"
        raise BakesteerError(f"{what} only holds residual-stream vectors, not {site}; write a bakesteer .svec or a "
                             "steering-vectors file instead.")
    if fmt == "gguf" and 0 in blocks:
        raise BakesteerError("block 0's output would be direction.0, which llama.cpp refuses; leave block 0 out "
                             "with --layers.")
    if fmt == "ibm" and n_layers is not None and n_layers - 1 in blocks:
        raise BakesteerError(f"IBM adds key N to the input of block N, and block {n_layers - 1} is the last, so its "
                             "output is the input of no block; leave it out with --layers.")
    missed = steering_vectors_misses(model, site, SITE_SV[site]) if fmt == "steering-vectors" else None
    if missed:
        raise BakesteerError(f"the {site} site is {missed}, which steering-vectors' {SITE_SV[site]} does not "
                             "name; keep this vector in a bakesteer .svec.")


def _is_vector_file(path: Path) -> bool:
    try:
        load_vector_file(path)
        return True
    except BakesteerError:
        return False


def check_vector_output(path: str | Path, force: bool, inputs: Iterable[str | Path] = ()) -> None:
    """The path policy for a vector file: never an input, a folder, a symlink or the working folder; an existing
    file is replaced only with ``force`` and only when it is a vector file."""
    path = Path(path)
    check_output(path, inputs)
    check_replaceable(path, force, _is_vector_file, kind="file")
    if not path.parent.is_dir():
        raise BakesteerError(f"folder {path.parent} does not exist; create it first.")


def write_vectors(path: str | Path, fmt: str, site: str, blocks: dict[int, np.ndarray], model: dict | None = None,
                  explained: dict[int, float] | None = None, coef: float | None = None, method: str | None = None,
                  extra: dict | None = None, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write (site, block -> vector) as ``fmt``; refuses what the format cannot express, and an output that the
    path policy refuses (``inputs``: the files it was made from). Returns the path."""
    if site not in SITES:
        raise BakesteerError(f"unknown site {site!r}; use one of {', '.join(SITES)}.")
    path, model = Path(path), dict(model or {})
    if not blocks:
        raise BakesteerError("no vectors to write; check --layers.")
    check_vector_output(path, force, inputs)
    check_expressible(fmt, site, blocks, model)
    f32 = {b: np.asarray(v, dtype=np.float64).astype(np.float32) for b, v in sorted(blocks.items())}
    explained = explained or {}
    writers = {
        "bakesteer": lambda p: write_bakesteer(p, f32, site, model, coef, method, extra, explained or None),
        "ibm": lambda p: write_ibm(p, f32, model, explained),
        "gguf": lambda p: write_control(p, f32, model.get("model_type") or ""),
        "steering-vectors": lambda p: write_sv(p, f32, site),
    }
    atomic(path, writers[fmt])
    return path
