"""GGUF helpers shared by the control-vector files and the GGUF bake: the optional ``gguf`` import, typed
metadata reads, a reader that refuses in one sentence, and a copy-with-changes writer."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import BakesteerError
from .paths import is_regular

# what the gguf package raises on a damaged or crafted file
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError)


def gguf_module():
    try:
        import gguf
    except ImportError:
        raise BakesteerError("reading or writing GGUF files needs the gguf package; `pip install gguf`.") from None
    return gguf


def field(reader, key: str):
    """A metadata value (None when absent or empty)."""
    f = reader.get_field(key)
    if f is None or not f.data:
        return None
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()


def string(reader, key: str) -> str | None:
    """A string metadata value, decoded leniently (None when absent or not a string)."""
    f = reader.get_field(key)
    if f is None or not f.data:
        return None
    raw = f.parts[f.data[-1]]
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        return None
    return bytes(raw).decode("utf-8", errors="replace")


def open_gguf(path: Path, what: str = "a .gguf model"):
    """A GGUFReader over ``path``, or one sentence saying why it cannot be read."""
    gguf = gguf_module()
    if not is_regular(path):
        raise BakesteerError(f"{path} is not a GGUF file; pass the path of {what}.")
    try:
        with warnings.catch_warnings():  # numpy casts of crafted counts warn before they fail
            warnings.simplefilter("ignore", RuntimeWarning)
            return gguf.GGUFReader(str(path))
    except READ_ERRORS as e:
        raise BakesteerError(f"{path} is not a readable GGUF file ({type(e).__name__}); check the file.") from e


def write_copy(reader, path: Path, tensors: dict[str, np.ndarray], strings: dict[str, str] | None = None,
               drop: frozenset[str] = frozenset()) -> None:
    """Write ``reader``'s GGUF to ``path`` with ``tensors`` replacing (or added after) its own, the ``drop`` ones
    left out, every other tensor's bytes as they are (quantized or not), and ``strings`` added to its metadata."""
    gguf = gguf_module()
    w = gguf.GGUFWriter(str(path), field(reader, "general.architecture"))
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = f.types[0]
        w.add_key_value(key, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for key, value in (strings or {}).items():
        w.add_key_value(key, value, gguf.GGUFValueType.STRING)
    for t in reader.tensors:
        if t.name in drop:
            continue
        if t.name in tensors:
            w.add_tensor(t.name, tensors[t.name])
        else:
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    have = {t.name for t in reader.tensors}
    for key, value in tensors.items():
        if key not in have:
            w.add_tensor(key, value)
    finish(w)


def finish(writer) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
