"""Checkpoint I/O: read a safetensors checkpoint tensor by tensor, write an edited copy.

Nothing here loads a model or a whole shard. Headers are validated in full before use; weights
are read zero-copy from a memory map. When writing, every shard is streamed once: a chunk is
read, the byte ranges of changed tensors are replaced, and it is written, while a worker thread
hashes what was read and what was written (or, with ``link``, an untouched shard is hard-linked
and hashed). Tensors that did not exist go into one new shard, and the shards are then
renumbered the Hugging Face way with an index.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from safetensors.numpy import save

from .errors import BakesteerError
from .fold import DTYPES
from .paths import inside, is_regular, plain_name, regular_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
NAMES = {v: k for k, v in DTYPES.items()}  # numpy dtype -> safetensors dtype name
# weights in other formats would be stale copies of the unbaked model: never carried over
_STALE_WEIGHTS = (".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".ckpt", ".safetensors")
OWN_FILES = ("bakesteer.json", "bakesteer")
CHUNK = 16 << 20  # bytes per read while copying and hashing
WORKERS = max(1, min(8, os.cpu_count() or 1))  # shards streamed at once


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

    def resolve(self, key: str, aliases: Iterable[str] = ()) -> str:
        """The stored name of ``key``: as named, under one of the family's older names (``aliases``), or without
        the base-model prefix some checkpoints drop (GPT-2's 'transformer.')."""
        found = next((k for k in (key, *aliases) if k in self.tensors), None)
        if found is not None:
            return found
        short = key.split(".", 1)[1]
        if short in self.tensors:
            return short
        raise BakesteerError(
            f"{self.where} has no tensor {key}; is this a {self.config.get('model_type')} checkpoint saved by "
            "transformers?"
        )

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def split(self, keys: dict[str, list[tuple[str, int, int]]]) -> TensorSource:
        """This source with fused tensors seen as their parts (``bakesteer.fused``)."""
        raise NotImplementedError

    def read_bytes(self, key: str) -> np.ndarray:
        """A uint8 tensor (packed weights, their scales), refusing any other dtype."""
        info = self.tensors[key]
        if info.dtype != "U8":
            raise BakesteerError(f"{self.where} stores {key} as {info.dtype}, not the uint8 of packed weights; "
                                 "the checkpoint does not match its quantization_config.")
        return self._read_as(key, np.dtype(np.uint8))

    def _read_as(self, key: str, dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError

    def bias_dtype(self, weight_key: str) -> np.dtype:
        """The dtype of a bias the bake adds beside this weight: the weight's own."""
        return self.tensors[weight_key].np_dtype


# bits per element of every safetensors dtype (sub-byte types pack several elements into a byte)
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6,
              "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64}
MAX_HEADER = 100 << 20  # the safetensors format's own limit


def _entries(header: dict, data_len: int) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """Every tensor entry checked as the format requires: a known dtype, a shape of non-negative ints,
    offsets inside the data section that tile it with no gap or overlap, and bytes = elements x itemsize."""
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise ValueError("__metadata__ is not a map of strings")
            continue
        if not isinstance(meta, dict):
            raise ValueError(f"entry {name!r} is not an object")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise ValueError(f"tensor {name} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"tensor {name} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise ValueError(f"tensor {name} has data offsets {offsets!r} outside the data section")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise ValueError(f"tensor {name} is {dtype} {shape} but holds {offsets[1] - offsets[0]} bytes")
        out[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    pos = 0
    for name, (_, _, b, e) in sorted(out.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if b != pos:
            raise ValueError(f"tensor {name} {'overlaps another' if b < pos else 'leaves a gap before it'}")
        pos = e
    if pos != data_len:
        raise ValueError("the tensors do not fill the data section")
    return out


def read_header(path: Path) -> tuple[dict, dict[str, tuple[str, tuple[int, ...], int, int]], int]:
    """A safetensors header, validated entry by entry without reading any tensor data.

    Returns (metadata, name -> (dtype, shape, begin, end) relative to the data section, data start).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER):
                raise ValueError("header length runs past the end of the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        entries = _entries(header, size - 8 - n)
    except PermissionError as e:
        raise BakesteerError(f"{path} cannot be read ({e.strerror}); check its permissions.") from e
    except OSError as e:
        raise BakesteerError(f"{path} cannot be read ({e.strerror}); check the file and the disk.") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BakesteerError(f"{path} is truncated or corrupt ({e}); re-download or re-save it.") from e
    return header.get("__metadata__") or {}, entries, 8 + n


class Checkpoint(TensorSource):
    """A Hugging Face model folder with safetensors weights: its config and a map of its tensors.

    Every name the folder's index gives is checked by the path policy, and every shard header is
    validated in full (no tensor data is read).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.where = str(self.root)
        if not (self.root / "config.json").is_file():
            raise BakesteerError(f"{self.root} has no config.json; pass a Hugging Face model folder with --model.")
        self.config = read_config(self.root)
        self.tensors: dict[str, TensorInfo] = {}
        self.shard_meta: dict[str, dict] = {}
        self.data_start: dict[str, int] = {}  # per shard: where its data section begins (after the header)
        self.headers: dict[str, bytes] = {}  # per shard: a header to write in place of the source's (fused.py)
        self._maps: dict[str, mmap.mmap] = {}
        for shard in self._shard_names():
            path = regular_file(self.root, shard, f"{self.root / INDEX}")
            meta, entries, start = read_header(path)
            self.shard_meta[shard] = meta
            self.data_start[shard] = start
            for name, (dtype, shape, b, e) in entries.items():
                if name in self.tensors:
                    raise BakesteerError(f"{self.root} stores tensor {name} in two shards; re-download it.")
                self.tensors[name] = TensorInfo(shard, dtype, shape, start + b, start + e)

    def _shard_names(self) -> list[str]:
        self.index: dict | None = None
        if (self.root / INDEX).is_file():
            where = self.root / INDEX
            try:
                index = json.loads(where.read_text())
            except (OSError, ValueError) as e:
                raise BakesteerError(f"{where} is not a valid index ({type(e).__name__}: {e}); re-download it.") from e
            wmap = index.get("weight_map") if isinstance(index, dict) else None
            if (not isinstance(wmap, dict) or not wmap or not all(isinstance(k, str) for k in wmap)
                    or not isinstance(index.get("metadata", {}), dict)):
                raise BakesteerError(f"{where} is not a valid index (it needs a weight_map of tensor names to shard "
                                     "files); re-download it.")
            self.index = index
            return sorted({plain_name(n, str(where)) for n in wmap.values()})
        if (self.root / SINGLE).is_file():
            return [SINGLE]
        raise BakesteerError(
            f"{self.root} holds no safetensors weights (model.safetensors or {INDEX}); "
            "save the model with save_pretrained(...) first."
        )

    def split(self, keys: dict[str, list[tuple[str, int, int]]]) -> Checkpoint:
        from .fused import split_checkpoint

        return split_checkpoint(self, keys)

    @property
    def sharded(self) -> bool:
        return (self.root / INDEX).is_file()

    def read(self, key: str) -> np.ndarray:
        """One tensor, zero-copy and read-only from a memory map of its shard."""
        return self._read_as(key, self.tensors[key].np_dtype)

    def _read_as(self, key: str, dtype: np.dtype) -> np.ndarray:
        info = self.tensors[key]
        if info.shard not in self._maps:
            with open(self.root / info.shard, "rb") as f:
                self._maps[info.shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = (info.end - info.start) // dtype.itemsize
        return np.frombuffer(self._maps[info.shard], dtype=dtype, count=count, offset=info.start).reshape(info.shape)


def read_config(root: Path) -> dict:
    """config.json as a dict, or one sentence saying what is wrong with it."""
    path = root / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except PermissionError as e:
        raise BakesteerError(f"{path} cannot be read ({e.strerror}); check its permissions.") from e
    except (OSError, ValueError) as e:
        raise BakesteerError(f"{path} is not valid JSON ({e}); fix or re-download it.") from e
    if not isinstance(cfg, dict):
        raise BakesteerError(f"{path} holds a JSON {type(cfg).__name__}, not an object; fix or re-download it.")
    return cfg


def hash_file(path: Path, progress=None) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()


def _patched(buf: bytes, pos: int, patches: list[tuple[int, bytes]]) -> bytes | bytearray:
    """``buf`` (the file's bytes from ``pos``) with the parts of ``patches`` that fall inside it replaced."""
    out = None
    for off, data in patches:
        lo, hi = max(off, pos), min(off + len(data), pos + len(buf))
        if lo < hi:
            out = bytearray(buf) if out is None else out
            out[lo - pos:hi - pos] = data[lo - off:hi - off]
    return buf if out is None else out


def _hash_both(h_src, h_out, buf, out) -> None:
    h_src.update(buf)
    if h_out is not h_src:
        h_out.update(out)


def stream_copy(src: Path, dst: Path, patches: list[tuple[int, bytes]] = (), progress=None,
                header: tuple[int, bytes] | None = None) -> tuple[str, str]:
    """Copy ``src`` into the new file ``dst`` with byte ranges replaced, hashing as it goes.

    ``header``: (n, new bytes) writes the new bytes in place of the first n bytes of ``src`` (a rewritten
    safetensors header); ``patches`` stay at their offsets in ``src``. Returns (sha256 of ``src``, sha256 of
    ``dst``). One read of the source: the hashes run on a worker thread (hashlib releases the GIL) while the
    next chunk is read and written.
    """
    patches = sorted(patches)
    h_src = hashlib.sha256()
    h_out = hashlib.sha256() if patches or header else h_src
    with open(src, "rb") as fs, open(dst, "xb") as fd, ThreadPoolExecutor(1) as pool:
        pending, pos = None, 0
        if header is not None:
            old = fs.read(header[0])
            h_src.update(old)
            h_out.update(header[1])
            fd.write(header[1])
            pos = len(old)
            if progress is not None:
                progress.update(pos)
        while buf := fs.read(CHUNK):
            out = _patched(buf, pos, patches)
            if pending is not None:
                pending.result()
            pending = pool.submit(_hash_both, h_src, h_out, buf, out)
            fd.write(out)
            pos += len(buf)
            if progress is not None:
                progress.update(len(buf))
        if pending is not None:
            pending.result()
    return h_src.hexdigest(), h_out.hexdigest()


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}


def copy_hashed(src: Path, dst: Path, progress=None) -> str:
    """Copy ``src`` into the new file ``dst`` in the kernel (copy_file_range, as cp does) while a worker
    thread hashes ``src`` (unless its Hub-cache blob name is the hash); returns its sha256. The copy never
    passes through Python's memory."""
    known = blob_sha256(src)
    with open(src, "rb") as fs, open(dst, "xb") as fd, ThreadPoolExecutor(1) as pool:
        digest = pool.submit(lambda: known or hash_file(src, progress))
        try:
            while os.copy_file_range(fs.fileno(), fd.fileno(), CHUNK):
                pass
        except OSError as e:  # no in-kernel copy between these files: copy through user space
            if e.errno not in _NO_KERNEL_COPY:
                raise
            fs.seek(fd.tell())
            shutil.copyfileobj(fs, fd, CHUNK)
        if known and progress is not None:
            progress.update(fd.tell())
        return digest.result()


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> str:
    """A small safetensors file (biases, vectors) created with the usual file mode; returns its sha256."""
    data = save({k: np.ascontiguousarray(t) for k, t in tensors.items()}, metadata=metadata)
    with open(path, "xb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def blob_sha256(path: Path) -> str | None:
    """The sha256 a Hub-cache file carries in its name: a snapshot file links to ``blobs/<sha256>`` (LFS)."""
    if not path.is_symlink():
        return None
    blob = path.resolve()
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return blob.name
    return None


def link_file(src: Path, dst: Path) -> None:
    try:
        os.link(src.resolve(), dst)  # resolve: Hub-cache files are symlinks to blobs
    except OSError as e:
        raise BakesteerError(
            f"cannot hard-link {src} into the output ({e.strerror}); drop --link or write the output on the same "
            "file system as the model."
        ) from e


def tensor_bytes(t: np.ndarray) -> bytes:
    return np.ascontiguousarray(t).tobytes()


def shard_names(ckpt: Checkpoint, adds_shard: bool) -> dict[str, str | None]:
    """Output shard name -> source shard name (None for the new shard). Renumbered when a shard is added."""
    old = sorted(ckpt.shard_meta)
    if not adds_shard:
        return {s: s for s in old}
    n = len(old) + 1
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": s for i, s in enumerate([*old, None])}


@dataclass
class Written:
    """What ``write_checkpoint`` wrote: shard names, hashes, and the source files it left out."""

    shards: dict[str, str | None]  # output shard -> source shard (None: the new shard of added biases)
    sha256: dict[str, str]  # output file -> sha256 (every shard, config.json, the index)
    source_sha256: dict[str, str]  # source shard -> sha256
    left_out: list[str]


def write_checkpoint(ckpt: Checkpoint, out: Path, updates: Mapping[str, np.ndarray], config: dict,
                     link: bool = False, progress=None) -> Written:
    """Write ``ckpt`` with ``updates`` (existing tensors replaced, new ones added) into the empty folder ``out``."""
    changed = {k: t for k, t in updates.items() if k in ckpt.tensors}
    added = {k: t for k, t in updates.items() if k not in ckpt.tensors}
    names = shard_names(ckpt, bool(added))
    touched: dict[str, list[tuple[int, bytes]]] = {}
    for key, t in changed.items():
        info = ckpt.tensors[key]
        if (info.np_dtype, info.shape) != (t.dtype, t.shape):
            raise BakesteerError(f"{ckpt.where} stores {key} as {info.dtype} {list(info.shape)}, which does not fit "
                                 f"the model's config ({list(t.shape)}); the checkpoint does not match its config.")
        touched.setdefault(info.shard, []).append((info.start, tensor_bytes(t)))
    sha, src_sha = {}, {}

    def one(new: str, old: str) -> None:
        if old in touched or old in ckpt.headers:
            header = (ckpt.data_start[old], ckpt.headers[old]) if old in ckpt.headers else None
            src_sha[old], sha[new] = stream_copy(ckpt.root / old, out / new, touched.get(old, []), progress, header)
        elif not link:
            sha[new] = src_sha[old] = copy_hashed(ckpt.root / old, out / new, progress)
        else:
            link_file(ckpt.root / old, out / new)
            sha[new] = src_sha[old] = blob_sha256(ckpt.root / old) or hash_file(out / new, progress)

    with ThreadPoolExecutor(WORKERS) as pool:  # hashing is the bottleneck: one shard per core
        for job in [pool.submit(one, new, old) for new, old in names.items() if old is not None]:
            job.result()
    if None in names.values():
        new = next(n for n, o in names.items() if o is None)
        sha[new] = write_safetensors(out / new, dict(sorted(added.items())), {"format": "pt"})
    if ckpt.sharded or added:
        where = {k: i.shard for k, i in ckpt.tensors.items()}
        to_new = {old: new for new, old in names.items()}
        index = dict(ckpt.index or {})
        index["weight_map"] = dict(sorted({**{k: to_new[s] for k, s in where.items()},
                                           **{k: to_new[None] for k in added}}.items()))
        total = sum(i.end - i.start for i in ckpt.tensors.values())
        total += sum(t.nbytes for t in added.values())
        index["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        sha[INDEX] = hash_file(out / INDEX)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    sha["config.json"] = hash_file(out / "config.json")
    left_out = copy_other_files(ckpt.root, out, skip=set(ckpt.shard_meta))
    return Written(names, sha, src_sha, left_out)


def copy_other_files(src: Path, out: Path, skip: set[str]) -> list[str]:
    """Copy tokenizer, generation config and the like; leave out folders, weights in other formats, and
    anything that is not a regular file inside the folder (FIFOs, devices, links that leave it)."""
    left_out = []
    for p in sorted(src.iterdir()):
        if p.name in ("config.json", INDEX, *OWN_FILES) or p.name in skip:
            continue
        if p.name.endswith(_STALE_WEIGHTS) or not is_regular(p) or not inside(src, p):
            left_out.append(p.name)
            continue
        shutil.copyfile(p, out / p.name)  # follows symlinks: Hub-cache blobs are copied, not linked
    return left_out
