"""llama.cpp / repeng control-vector GGUF files: ``direction.N`` is added to the output of decoder block N
(llama.cpp's ``l_out``, repeng's ControlModule); llama.cpp refuses N = 0."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import BakesteerError
from ..gguf_io import field, finish, gguf_module, open_gguf, string
from .core import VectorFile, as_vector

ARCH = "controlvector"


def _direction(path: Path, t) -> np.ndarray:
    with warnings.catch_warnings():  # a crafted type or count casts with a warning before it is refused
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            data = np.array(t.data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            raise BakesteerError(f"{path} {t.name} cannot be read as numbers ({type(e).__name__}); "
                                 "regenerate it.") from e
    return as_vector(data, f"{path} {t.name}")


def read(path: Path) -> VectorFile:
    """A control vector, checked as llama.cpp checks it (direction.N, F32, 1-D)."""
    reader = open_gguf(path, "a control-vector .gguf")
    arch = string(reader, "general.architecture")
    if arch != ARCH:
        raise BakesteerError(
            f"{path} is a GGUF of architecture {arch!r}, not a control vector (general.architecture must be "
            f"'{ARCH}'); give a file written by repeng's export_gguf or bakesteer convert."
        )
    vecs: dict[int, np.ndarray] = {}
    types = set()
    for t in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if m is None:
            raise BakesteerError(f"{path} holds a tensor {t.name!r}; a control vector holds only direction.N tensors "
                                 "(llama.cpp refuses any other name).")
        types.add(t.tensor_type.name)
        v, k = _direction(path, t), int(m.group(1))
        if k in vecs and vecs[k].shape != v.shape:
            raise BakesteerError(f"{path} repeats direction.{k} with another size; regenerate it.")
        vecs[k] = vecs[k] + v if k in vecs else v  # llama.cpp sums repeated layers
    if not vecs:
        raise BakesteerError(f"{path} is a control vector with no direction tensors; regenerate it.")
    if len({v.shape for v in vecs.values()}) > 1:
        raise BakesteerError(f"{path} mixes direction sizes; every direction must have the model's hidden size.")
    count = field(reader, f"{ARCH}.layer_count")
    meta = {"layer_count": count if isinstance(count, int) else None, "tensor_types": sorted(types)}
    return VectorFile(path, "gguf", vecs, "resid", 0, string(reader, f"{ARCH}.model_hint"), meta=meta)


def write(path: Path, vecs: dict[int, np.ndarray], model_hint: str) -> None:
    """The file repeng's export_gguf writes and llama.cpp's --control-vector reads."""
    gguf = gguf_module()
    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_string(f"{ARCH}.model_hint", model_hint)
    w.add_uint32(f"{ARCH}.layer_count", len(vecs))
    for b, v in vecs.items():
        w.add_tensor(f"direction.{b}", v)
    finish(w)
