"""Raw tensor files (.safetensors, .npy, .pt): one vector, rows = blocks, or a dict keyed by layer.
A steering-vectors dump in one of these containers is handed to its own reader."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from ..errors import BakesteerError
from .sv import is_dump, read as read_sv
from .core import VectorFile, as_vector, by_layer

# what the tensor readers raise on a damaged or crafted file
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError, OverflowError,
                RuntimeError, zipfile.BadZipFile, MemoryError, SafetensorError)


def _load(path: Path, suffix: str):
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary code


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return f.metadata() or {}


def read(path: Path) -> VectorFile:
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".npy", ".pt", ".pth"):
        raise BakesteerError(f"{path} has an unknown extension; give a .svec/.json, .safetensors, .npy or .pt "
                             "vector file.")
    try:
        obj = _load(path, suffix)
    except pickle.UnpicklingError:  # weights_only refused a pickled object
        raise BakesteerError(
            f"{path} could not be read: it holds pickled Python objects, which bakesteer never unpickles; save "
            "plain tensors (a steering-vectors SteeringVector: torch.save(dataclasses.asdict(sv), path))."
        ) from None
    except _READ_ERRORS as e:
        raise BakesteerError(f"{path} could not be read as a {suffix} tensor file ({type(e).__name__}); "
                             "check the file.") from e
    if is_dump(obj):
        return read_sv(path, obj, _metadata(path) if suffix == ".safetensors" else None)
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    is_array = isinstance(obj, np.ndarray) or hasattr(obj, "detach")  # numpy, or a torch tensor from .pt
    if isinstance(obj, dict):
        vecs = by_layer(obj.items(), str(path))
    elif is_array and obj.ndim == 2 and obj.shape[0] > 1:
        vecs = {i: as_vector(row, f"{path} row {i}") for i, row in enumerate(obj)}
    elif is_array:
        vecs = {None: as_vector(obj, str(path))}
    else:
        raise BakesteerError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict of tensors.")
    return VectorFile(path, "raw", vecs, None, meta={"rows": len(vecs)} if None not in vecs else {})
