"""Bake straight into a GGUF file: quantized weights stay byte for byte, F32 biases are added.

llama.cpp users often have only a quantized GGUF. The fold needs a weight only for sites whose
vector enters a linear layer (``attn_in``, ``mlp_in``); that weight alone is dequantized with the
``gguf`` package. llama.cpp stores q/k rows permuted for its RoPE layout, and adds a bias after the
matmul with the stored weight, so a bias computed from the stored (permuted) weight is already in
llama.cpp's order. The recipe is kept in the file's metadata (``bakesteer.recipe``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import __version__
from .arch import ARCHS, Arch, check_site
from .bake import Item, check_items
from .errors import BakesteerError
from .fold import check_cast, direct_delta, through_delta
from .formats import gguf_field as _field, gguf_module
from .paths import is_regular
from .staging import Staging
from .steer import as_f64

RECIPE_KEY = "bakesteer.recipe"


def gguf_arch(name: str) -> Arch:
    for a in ARCHS.values():
        if a.gguf and a.gguf[0] == name:
            return a
    known = ", ".join(a.gguf[0] for a in ARCHS.values() if a.gguf)
    raise BakesteerError(f"GGUF architecture {name!r} is not in bakesteer's table (it bakes GGUF files of: {known}); "
                         "bake the Hugging Face checkpoint instead and convert it with llama.cpp.")


def _dequantized(gguf, tensor) -> np.ndarray:
    """A weight as float64 (out, in); refuses a type the gguf package cannot dequantize."""
    try:
        with np.errstate(all="ignore"):  # a damaged weight's NaN is refused by check_cast, not warned about
            w = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float64)
    except (NotImplementedError, ValueError, KeyError) as e:
        raise BakesteerError(f"the gguf package cannot dequantize {tensor.name} ({tensor.tensor_type.name}: {e}); "
                             "bake a GGUF with another quantization, or the Hugging Face checkpoint.")
    return w.reshape(int(tensor.shape[1]), int(tensor.shape[0]))


def bake_gguf(src: str | os.PathLike, items: list[Item], out: str | os.PathLike, force: bool = False) -> dict:
    """Write ``out``: ``src`` with every fold of ``items`` as added (or updated) F32 bias tensors."""
    gguf = gguf_module()
    src, out = Path(src), Path(out)
    staging = Staging(out, force, inputs=[src], kind="file", is_ours=is_baked_gguf)
    reader = open_gguf(src)
    name = _field(reader, "general.architecture")
    arch = gguf_arch(name)
    tensors = {t.name: t for t in reader.tensors}
    try:
        hidden, n_layers = int(_field(reader, f"{name}.embedding_length")), int(_field(reader, f"{name}.block_count"))
    except (TypeError, ValueError):
        raise BakesteerError(f"{src} lacks {name}.embedding_length or {name}.block_count; it is not a complete "
                             f"{name} GGUF.")
    check_items(items, hidden, n_layers)
    if _field(reader, RECIPE_KEY):
        raise BakesteerError(f"{src} is already baked; bake the original GGUF with every vector in one run.")

    biases: dict[str, np.ndarray] = {}
    for it in items:
        s = it.steer
        check_site(s.site)
        site = arch.sites[s.site]
        for module in site.fold:
            gname = f"blk.{s.layer}.{arch.gguf[1][module]}"
            if site.rule == "through":
                if f"{gname}.weight" not in tensors:
                    raise BakesteerError(f"{src} has no tensor {gname}.weight; it is not a complete {name} GGUF.")
                d = through_delta(_dequantized(gguf, tensors[f"{gname}.weight"]), as_f64(s.vector), s.coef, "linear")
            else:
                d = direct_delta(as_f64(s.vector), s.coef, 1.0)
            biases[f"{gname}.bias"] = biases.get(f"{gname}.bias", 0) + d
    for key, d in biases.items():  # an existing bias is updated, in float32 like the new ones
        old = tensors.get(key)
        if old is not None and old.tensor_type != gguf.GGMLQuantizationType.F32:
            raise BakesteerError(f"{src} stores {key} as {old.tensor_type.name}; only F32 biases can be updated.")
        base = np.asarray(old.data, np.float64) if old is not None else None
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below, with the coefficient that fits
            biases[key] = (base + d if base is not None else d).astype(np.float32)
        check_cast(key, base, d, biases[key], [it.steer.coef for it in items])

    recipe = {"bakesteer_version": __version__, "exact": True, "source": {"path": str(src.resolve())},
              "convention": "layer L = decoder block L (0-based); resid = residual stream after block L",
              "steers": [{"site": it.steer.site, "layer": it.steer.layer, "coef": it.steer.coef,
                          "norm": float(np.linalg.norm(as_f64(it.steer.vector))), **it.origin} for it in items],
              "tensors_changed": sorted(k for k in biases if k in tensors),
              "tensors_added": sorted(k for k in biases if k not in tensors)}
    with staging as tmp:
        write_copy(reader, tmp, biases, {RECIPE_KEY: json.dumps(recipe)})
    return recipe


def open_gguf(path: Path):
    """A GGUFReader over ``path``, or one sentence saying why it cannot be read."""
    gguf = gguf_module()
    if not is_regular(path):
        raise BakesteerError(f"{path} is not a GGUF file; pass the path of a .gguf model.")
    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise BakesteerError(f"{path} is not a readable GGUF file ({type(e).__name__}); check the file.")


def is_baked_gguf(path: Path) -> bool:
    """A GGUF file this command wrote (its metadata holds a bakesteer recipe)."""
    try:
        return bool(_field(gguf_module().GGUFReader(str(path)), RECIPE_KEY))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, BakesteerError):
        return False


def write_copy(reader, path: Path, tensors: dict[str, np.ndarray], strings: dict[str, str] | None = None) -> None:
    """Write ``reader``'s GGUF to ``path`` with ``tensors`` replacing (or added after) its own, every other
    tensor's bytes as they are (quantized or not), and ``strings`` added to its metadata."""
    gguf = gguf_module()
    w = gguf.GGUFWriter(str(path), _field(reader, "general.architecture"))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        w.add_key_value(key, field.contents(), vtype,
                        sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for key, value in (strings or {}).items():
        w.add_key_value(key, value, gguf.GGUFValueType.STRING)
    for t in reader.tensors:
        if t.name in tensors:
            w.add_tensor(t.name, tensors[t.name])
        else:
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    have = {t.name for t in reader.tensors}
    for key, value in tensors.items():
        if key not in have:
            w.add_tensor(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
