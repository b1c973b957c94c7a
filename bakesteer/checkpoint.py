"""Checkpoint I/O: read a safetensors checkpoint tensor by tensor, write an edited copy atomically.

Nothing here loads a model or a whole shard. Weights are read zero-copy from a memory map. When
writing, a shard no edit touches is copied by the kernel (or hard-linked); a shard whose existing
tensors change is kernel-copied and then patched in place at those tensors' byte ranges (its header
is unchanged, since only values change); tensors that did not exist go into one new shard, and the
shards are then renumbered the Hugging Face way with an index.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors.numpy import save_file

from .errors import BakesteerError
from .fold import DTYPES

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
NAMES = {v: k for k, v in DTYPES.items()}  # numpy dtype -> safetensors dtype name
# weights in other formats would be stale copies of the unbaked model: never carried over
_STALE_WEIGHTS = (".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".ckpt", ".safetensors")
OWN_FILES = ("bakesteer.json", "bakesteer")
CHUNK = 1 << 30  # per copy_file_range call: large, like cp, yet the progress bar still moves


@dataclass(frozen=True)
class TensorInfo:
    shard: str  # file name inside the checkpoint folder ("" for tensors of a loaded model)
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offset of the data in the shard
    end: int = 0

    @property
    def np_dtype(self) -> np.dtype:
        if self.dtype not in DTYPES:
            raise BakesteerError(
                f"a tensor bakesteer must fold is stored as {self.dtype}; only float32/float16/bfloat16/float64 "
                "weights can be folded exactly, so dequantize the checkpoint first."
            )
        return DTYPES[self.dtype]


class TensorSource:
    """What the bake planner reads: a config, tensor metadata, and one tensor at a time."""

    config: dict
    tensors: dict[str, TensorInfo]
    where: str

    def resolve(self, key: str) -> str:
        """The stored name of ``key``; some checkpoints drop the base-model prefix (GPT-2's 'transformer.')."""
        if key in self.tensors:
            return key
        short = key.split(".", 1)[1]
        if short in self.tensors:
            return short
        raise BakesteerError(
            f"{self.where} has no tensor {key}; is this a {self.config.get('model_type')} checkpoint saved by "
            "transformers?"
        )

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError


def read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header: (header dict, absolute offset where the data starts)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ValueError("header length runs past the end of the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        for name, meta in header.items():
            if name != "__metadata__":
                b, e = meta["data_offsets"]
                if not 0 <= b <= e or 8 + n + e > size:
                    raise ValueError(f"tensor {name} runs past the end of the file")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BakesteerError(f"{path} is truncated or corrupt ({e}); re-download or re-save it.")
    return header, 8 + n


class Checkpoint(TensorSource):
    """A Hugging Face model folder with safetensors weights: its config and a map of its tensors."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.where = str(self.root)
        if not (self.root / "config.json").is_file():
            raise BakesteerError(f"{self.root} has no config.json; pass a Hugging Face model folder with --model.")
        try:
            self.config = json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise BakesteerError(f"{self.root / 'config.json'} is not valid JSON ({e}); fix or re-download it.")
        self.tensors: dict[str, TensorInfo] = {}
        self.shard_meta: dict[str, dict] = {}
        self._maps: dict[str, mmap.mmap] = {}
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
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise BakesteerError(f"{self.root / INDEX} is not a valid index ({e}); re-download it.")
        if (self.root / SINGLE).is_file():
            return [SINGLE]
        raise BakesteerError(
            f"{self.root} holds no safetensors weights (model.safetensors or {INDEX}); "
            "save the model with save_pretrained(...) first."
        )

    @property
    def sharded(self) -> bool:
        return (self.root / INDEX).is_file()

    def read(self, key: str) -> np.ndarray:
        """One tensor, zero-copy and read-only from a memory map of its shard."""
        info = self.tensors[key]
        dtype = info.np_dtype
        if info.shard not in self._maps:
            with open(self.root / info.shard, "rb") as f:
                self._maps[info.shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = (info.end - info.start) // dtype.itemsize
        return np.frombuffer(self._maps[info.shard], dtype=dtype, count=count, offset=info.start).reshape(info.shape)


def copy_file(src: Path, dst: Path, progress=None) -> None:
    """Copy by the kernel (copy_file_range), reporting bytes to ``progress``."""
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        size, done = os.fstat(fs.fileno()).st_size, 0
        os.posix_fadvise(fs.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        try:
            while done < size:
                n = os.copy_file_range(fs.fileno(), fd.fileno(), min(CHUNK, size - done))
                if n == 0:
                    raise BakesteerError(f"{src} ended early while copying; re-download it.")
                done += n
                if progress is not None:
                    progress.update(n)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or done:
                raise
            shutil.copyfileobj(fs, fd, CHUNK)  # file systems without copy_file_range
            if progress is not None:
                progress.update(size)


def link_file(src: Path, dst: Path) -> None:
    try:
        os.link(src.resolve(), dst)  # resolve: Hub-cache files are symlinks to blobs
    except OSError as e:
        raise BakesteerError(
            f"cannot hard-link {src} into the output ({e.strerror}); drop --link or write the output on the same "
            "file system as the model."
        )


def patch_file(path: Path, writes: list[tuple[int, bytes]]) -> None:
    """Overwrite byte ranges of a file in place."""
    with open(path, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def tensor_bytes(t: np.ndarray) -> bytes:
    return np.ascontiguousarray(t).tobytes()


def shard_names(ckpt: Checkpoint, adds_shard: bool) -> dict[str, str | None]:
    """Output shard name -> source shard name (None for the new shard). Renumbered when a shard is added."""
    old = sorted(ckpt.shard_meta)
    if not adds_shard:
        return {s: s for s in old}
    n = len(old) + 1
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": s for i, s in enumerate([*old, None])}


def write_checkpoint(ckpt: Checkpoint, out: Path, updates: Mapping[str, np.ndarray], config: dict,
                     link: bool = False, progress=None) -> tuple[dict[str, str | None], list[str]]:
    """Write ``ckpt`` with ``updates`` (existing tensors replaced, new ones added) into the empty folder ``out``.

    Returns (output shard -> source shard, files of the source left out).
    """
    changed = {k: t for k, t in updates.items() if k in ckpt.tensors}
    added = {k: t for k, t in updates.items() if k not in ckpt.tensors}
    names = shard_names(ckpt, bool(added))
    touched: dict[str, list[tuple[int, bytes]]] = {}
    for key, t in changed.items():
        info = ckpt.tensors[key]
        assert (info.np_dtype, info.shape) == (t.dtype, t.shape), (key, info, t.dtype, t.shape)
        touched.setdefault(info.shard, []).append((info.start, tensor_bytes(t)))
    for new, old in names.items():
        if old is None:
            save_file({k: np.ascontiguousarray(t) for k, t in sorted(added.items())}, str(out / new),
                      metadata={"format": "pt"})
        elif old in touched or not link:
            copy_file(ckpt.root / old, out / new, progress)
            patch_file(out / new, touched.get(old, []))
        else:
            link_file(ckpt.root / old, out / new)
    if ckpt.sharded or added:
        where = {k: i.shard for k, i in ckpt.tensors.items()}
        to_new = {old: new for new, old in names.items()}
        index = json.loads((ckpt.root / INDEX).read_text()) if ckpt.sharded else {}
        index["weight_map"] = dict(sorted({**{k: to_new[s] for k, s in where.items()},
                                           **{k: to_new[None] for k in added}}.items()))
        total = sum(i.end - i.start for i in ckpt.tensors.values())
        total += sum(t.nbytes for t in added.values())
        index["metadata"] = {**index.get("metadata", {}), "total_size": total}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    left_out = copy_other_files(ckpt.root, out, skip=set(ckpt.shard_meta))
    return names, left_out


def copy_other_files(src: Path, out: Path, skip: set[str]) -> list[str]:
    """Copy tokenizer, generation config and the like; leave out folders and weights in other formats."""
    left_out = []
    for p in sorted(src.iterdir()):
        if p.name in ("config.json", INDEX, *OWN_FILES) or p.name in skip:
            continue
        if p.is_dir() or p.name.endswith(_STALE_WEIGHTS):
            left_out.append(p.name)
            continue
        shutil.copyfile(p, out / p.name)  # follows symlinks: Hub-cache blobs are copied, not linked
    return left_out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Staging:
    """An output folder written under a temporary name and renamed into place only when complete.

    Leftovers of a killed run (``.NAME.bakesteer-tmp-PID`` with PID gone) are removed on the next run.
    """

    target: Path
    force: bool = False

    def __post_init__(self):
        self.target = Path(self.target)
        if self.target.exists() and not self.force:
            raise BakesteerError(f"{self.target} already exists; choose another -o or pass --force to replace it.")
        self.tmp = self.target.parent / f".{self.target.name}.bakesteer-tmp-{os.getpid()}"

    def _clean_leftovers(self) -> None:
        for p in self.target.parent.glob(f".{self.target.name}.bakesteer-*-*"):
            pid = p.name.rsplit("-", 1)[1]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            if _alive(int(pid)):
                raise BakesteerError(f"another bakesteer process (pid {pid}) is writing {self.target}; wait for it.")
            shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise BakesteerError(
                    f"no space left on the device while writing {self.target}; free some space and run again."
                ) from None
            return
        old = self.target.parent / f".{self.target.name}.bakesteer-old-{os.getpid()}"
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        shutil.rmtree(old, ignore_errors=True)

