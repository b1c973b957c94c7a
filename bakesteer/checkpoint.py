"""Checkpoint I/O: read a safetensors checkpoint tensor by tensor, write an edited copy atomically.

Nothing here loads a model or a whole shard. A shard no edit touches is copied by the kernel;
a touched shard is rewritten from a new header plus the untouched byte ranges of the source.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open

from .errors import BakesteerError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
# weights in other formats would be stale copies of the unbaked model: never carried over
_STALE_WEIGHTS = (".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".ckpt", ".safetensors")
OWN_FILES = ("bakesteer.json", "bakesteer")


@dataclass(frozen=True)
class TensorInfo:
    shard: str  # file name inside the checkpoint folder
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the shard
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header: (header dict, absolute offset where the data starts)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > size - 8:
                raise ValueError("header length runs past the end of the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BakesteerError(f"{path} is not a readable safetensors file ({e}); re-download or re-save it.")
    data_start = 8 + n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        if data_start + e > size or b > e:
            raise BakesteerError(f"{path} is truncated or corrupt (tensor {name} runs past its end); re-download it.")
    return header, data_start


class Checkpoint:
    """A Hugging Face model folder with safetensors weights: its config and a map of its tensors."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not (self.root / "config.json").is_file():
            raise BakesteerError(f"{self.root} has no config.json; pass a Hugging Face model folder with --model.")
        try:
            self.config: dict = json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise BakesteerError(f"{self.root / 'config.json'} is not valid JSON ({e}); fix or re-download it.")
        self.tensors: dict[str, TensorInfo] = {}
        self.shard_meta: dict[str, dict] = {}
        for shard in self._shard_names():
            path = self.root / shard
            if not path.is_file():
                raise BakesteerError(f"{self.root} names {shard} in its index but the file is missing; re-download it.")
            header, start = read_header(path)
            self.shard_meta[shard] = header.get("__metadata__") or {}
            for name, meta in header.items():
                if name != "__metadata__":
                    b, e = meta["data_offsets"]
                    self.tensors[name] = TensorInfo(shard, meta["dtype"], tuple(meta["shape"]), start + b, start + e)

    def _shard_names(self) -> list[str]:
        if (self.root / INDEX).is_file():
            try:
                index = json.loads((self.root / INDEX).read_text())
                return sorted(set(index["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise BakesteerError(f"{self.root / INDEX} is not a valid index ({e}); re-download it.")
        if (self.root / SINGLE).is_file():
            return [SINGLE]
        raise BakesteerError(
            f"{self.root} holds no safetensors weights (model.safetensors or {INDEX}); "
            "save the model with save_pretrained(..., safe_serialization=True) first."
        )

    @property
    def sharded(self) -> bool:
        return (self.root / INDEX).is_file()

    def resolve(self, key: str) -> str:
        """The stored name of ``key``; some checkpoints drop the base-model prefix (GPT-2's 'transformer.')."""
        if key in self.tensors:
            return key
        short = key.split(".", 1)[1]
        if short in self.tensors:
            return short
        raise BakesteerError(
            f"{self.root} has no tensor {key}; is this a {self.config.get('model_type')} checkpoint saved by transformers?"
        )

    def read(self, key: str) -> torch.Tensor:
        """One tensor, memory-mapped from its shard."""
        info = self.tensors[key]
        with safe_open(self.root / info.shard, framework="pt") as f:
            return f.get_tensor(key)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _copy_range(src, dst, start: int, end: int, chunk: int = 64 << 20) -> None:
    src.seek(start)
    left = end - start
    while left:
        buf = src.read(min(chunk, left))
        if not buf:
            raise BakesteerError(f"{src.name} ended early while copying; re-download it.")
        dst.write(buf)
        left -= len(buf)


def _rewrite_shard(ckpt: Checkpoint, shard: str, out: Path, updates: Mapping[str, torch.Tensor]) -> None:
    """Write ``shard`` with ``updates`` replacing or adding tensors; untouched bytes are copied."""
    names = [n for n, i in ckpt.tensors.items() if i.shard == shard]
    names.sort(key=lambda n: ckpt.tensors[n].start)
    names += sorted(k for k in updates if k not in ckpt.tensors)
    header: dict = {"__metadata__": ckpt.shard_meta[shard]} if ckpt.shard_meta[shard] else {}
    pos = 0
    for n in names:
        if n in updates:
            t = updates[n]
            nbytes, dtype, shape = t.numel() * t.element_size(), _NAMES[t.dtype], list(t.shape)
        else:
            i = ckpt.tensors[n]
            nbytes, dtype, shape = i.end - i.start, i.dtype, list(i.shape)
        header[n] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned
    with open(ckpt.root / shard, "rb") as src, open(out / shard, "wb") as dst:
        dst.write(struct.pack("<Q", len(blob)) + blob)
        for n in names:
            if n in updates:
                dst.write(_tensor_bytes(updates[n]))
            else:
                _copy_range(src, dst, ckpt.tensors[n].start, ckpt.tensors[n].end)


def write_checkpoint(
    ckpt: Checkpoint, out: Path, updates: Mapping[str, torch.Tensor], config: dict, progress=None
) -> list[str]:
    """Write ``ckpt`` with ``updates`` (existing tensors replaced, new ones added) into the empty ``out``.

    A new tensor goes into the shard that holds its module's weight. Returns the files left out.
    """
    placed: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in updates.items():
        if key in ckpt.tensors:
            old = ckpt.tensors[key]
            assert (old.torch_dtype, old.shape) == (t.dtype, tuple(t.shape)), (key, old, t.dtype, t.shape)
            shard = old.shard
        else:
            sibling = key.rsplit(".", 1)[0] + ".weight"
            shard = ckpt.tensors[sibling].shard if sibling in ckpt.tensors else sorted(ckpt.shard_meta)[0]
        placed.setdefault(shard, {})[key] = t
    for shard in sorted(ckpt.shard_meta):
        if shard in placed:
            _rewrite_shard(ckpt, shard, out, placed[shard])
        else:
            shutil.copyfile(ckpt.root / shard, out / shard)  # sendfile: the kernel copies
        if progress is not None:
            progress.update(1)
    if ckpt.sharded:
        index = json.loads((ckpt.root / INDEX).read_text())
        for shard, ts in placed.items():
            for key in ts:
                index["weight_map"][key] = shard
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        index.setdefault("metadata", {})["total_size"] = sum(
            (out / s).stat().st_size - 8 - struct.unpack("<Q", (out / s).open("rb").read(8))[0]
            for s in ckpt.shard_meta
        )
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    left_out = []
    for p in sorted(ckpt.root.iterdir()):
        if p.name in ("config.json", INDEX, *OWN_FILES) or p.name in ckpt.shard_meta:
            continue
        if p.is_dir() or p.name.endswith(_STALE_WEIGHTS):
            left_out.append(p.name)
            continue
        shutil.copyfile(p, out / p.name)  # follows symlinks: Hub-cache blobs are copied, not linked
    return left_out


@dataclass
class Staging:
    """An output folder written under a temporary name and renamed into place only when complete."""

    target: Path
    force: bool = False

    def __post_init__(self):
        self.target = Path(self.target)
        if self.target.exists() and not self.force:
            raise BakesteerError(f"{self.target} already exists; choose another -o or pass --force to replace it.")
        self.tmp = self.target.parent / f".{self.target.name}.bakesteer-tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.target.parent / f".{self.target.name}.bakesteer-old-{os.getpid()}"
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        shutil.rmtree(old, ignore_errors=True)


def iter_files(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*") if p.is_file())
