"""Bake straight into a GGUF file: quantized weights stay byte for byte, F32 biases are added.

llama.cpp users often have only a quantized GGUF. The GGUF is one more tensor source for the one
planner (``bake.plan``), in the family's llama.cpp form from the table (``Arch.for_gguf``): the same
sites, layout, scale and refusals as a folder bake, with llama.cpp's tensor names. The fold needs a
weight only for sites whose vector enters a linear layer (``attn_in``, ``mlp_in``); that weight alone
is dequantized with the ``gguf`` package. llama.cpp stores Llama's q/k rows permuted for its RoPE
layout and adds a bias after the matmul with the stored weight, so a bias computed from the stored
weight is already in llama.cpp's order. The recipe is kept in the file's metadata (``bakesteer.recipe``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from . import __version__
from .arch import Arch, find_arch
from .bake import Item, plan, recipe_core
from .checkpoint import TensorInfo, TensorSource
from .errors import BakesteerError
from .gguf_io import READ_ERRORS, field, gguf_module, open_gguf, write_copy
from .staging import Staging

RECIPE_KEY = "bakesteer.recipe"
_PLAIN = {"F64", "F32", "F16", "BF16"}  # GGML types with the same name as a safetensors dtype


class GgufTensors(TensorSource):
    """A GGUF model seen by the planner: a config read from its metadata through the table, tensors by
    llama.cpp name (``blk.N.<name>``), weights dequantized one at a time, new biases F32."""

    def __init__(self, path: Path, reader):
        self.where, self.reader = str(path), reader
        name = field(reader, "general.architecture")
        full = find_arch(gguf=name if isinstance(name, str) else repr(name))
        self.arch: Arch = full.for_gguf()
        self.names = full.gguf.tensors
        self.config = {"model_type": full.model_types[0]}
        for key, meta in full.gguf.config.items():
            value = field(reader, f"{name}.{meta}")
            if value is not None:
                self.config[key] = value
        if any(k not in self.config for k in full.dims):
            raise BakesteerError(f"{path} lacks {name}.embedding_length or {name}.block_count; it is not a complete "
                                 f"{name} GGUF.")
        self.by_name = {t.name: t for t in reader.tensors}
        self.tensors = {t.name: TensorInfo("", t.tensor_type.name, tuple(int(n) for n in reversed(t.shape)))
                        for t in reader.tensors}

    def resolve(self, key: str, aliases: Iterable[str] = ()) -> str:
        """``blk.N.<linear module>.weight|bias`` as llama.cpp names it (a GGUF has no older names)."""
        prefix, rest = key.split(".", 2)[:2], key.split(".", 2)[2]
        module, kind = rest.rsplit(".", 1)
        name = f"{'.'.join(prefix)}.{self.names[module]}.{kind}"
        if kind == "weight" and name not in self.tensors:
            raise BakesteerError(f"{self.where} has no tensor {name}; it is not a complete {self.arch.name} file.")
        return name

    def read(self, key: str) -> np.ndarray:
        t, info = self.by_name[key], self.tensors[key]
        if key.endswith(".bias"):
            if info.dtype != "F32":
                raise BakesteerError(f"{self.where} stores {key} as {info.dtype}; only F32 biases can be updated.")
            return np.asarray(t.data, dtype=np.float32).reshape(info.shape)
        if info.dtype in _PLAIN:
            return np.asarray(t.data).reshape(info.shape)
        gguf = gguf_module()
        try:
            with np.errstate(all="ignore"):  # a damaged weight's NaN is refused by check_cast, not warned about
                w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)
        except (NotImplementedError, ValueError, KeyError) as e:
            raise BakesteerError(f"the gguf package cannot dequantize {key} ({info.dtype}: {e}); bake a GGUF with "
                                 "another quantization, or the Hugging Face checkpoint.") from e
        return w.reshape(info.shape)

    def bias_dtype(self, weight_key: str) -> np.dtype:
        return np.dtype(np.float32)  # llama.cpp adds F32 biases to any weight type


def bake_gguf(src: str | os.PathLike, items: list[Item], out: str | os.PathLike, force: bool = False) -> dict:
    """Write ``out``: ``src`` with every fold of ``items`` as added (or updated) F32 bias tensors."""
    src, out = Path(src), Path(out)
    staging = Staging(out, force, inputs=[src], kind="file", is_ours=is_baked_gguf)
    reader = open_gguf(src)
    source = GgufTensors(src, reader)
    if field(reader, RECIPE_KEY):
        raise BakesteerError(f"{src} is already baked; bake the original GGUF with every vector in one run.")
    p = plan(source, items, arch=source.arch)
    recipe = {"bakesteer_version": __version__, "exact": True, "source": {"path": str(src.resolve())},
              "written": {"gguf_architecture": source.arch.gguf.name}, **recipe_core(items, p, source.tensors)}
    with staging as tmp:
        write_copy(reader, tmp, p.updates, {RECIPE_KEY: json.dumps(recipe)})
    return recipe


def is_baked_gguf(path: Path) -> bool:
    """A GGUF file this command wrote (its metadata holds a bakesteer recipe)."""
    try:
        return bool(field(gguf_module().GGUFReader(str(path)), RECIPE_KEY))
    except (*READ_ERRORS, BakesteerError):
        return False
