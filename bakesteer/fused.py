"""A relabel that splits fused linears (Phi-3's ``qkv_proj`` into q/k/v, ``gate_up_proj`` into gate/up).

A fused (out, in) weight stores its parts' rows one after another, so each part is a contiguous byte range of
the fused tensor. Splitting a checkpoint is therefore a rewrite of its shard headers: the same data bytes under
new names. The bake writes the split header in place of the source's and copies the data section as it is
(biases aside); the record keeps the source header, which unbake writes back; verify's byte proof compares the
data sections and checks the baked header against ``split_header`` of the source.
"""
from __future__ import annotations

import json
import struct
from typing import Mapping

from .archtypes import Arch
from .checkpoint import Checkpoint, TensorInfo, TensorSource
from .errors import BakesteerError

Parts = Mapping[str, tuple[tuple[str, int], ...]]  # fused module -> ((part module, rows), ...) in row order
Keys = dict[str, list[tuple[str, int, int]]]  # fused key -> [(part key, first row, end row)]


def split_keys(ckpt: TensorSource, arch: Arch, parts: Parts, n_layers: int) -> Keys:
    """Every fused weight (and bias, where stored) of every block, as the keys of its parts and their rows."""
    out: Keys = {}
    for layer in range(n_layers):
        for fused, pieces in parts.items():
            for i, name in enumerate(arch.names(layer, fused)):
                try:
                    key = ckpt.resolve(name, arch.stored_names(name))
                except BakesteerError:
                    if i == 1:  # a fused linear without a stored bias
                        continue
                    raise
                tail = name[len(f"{arch.layers}.{layer}."):]  # "<fused module>.weight": replaced by each part
                stem, suffix = key[:-len(tail)], tail.rsplit(".", 1)[1]
                rows, lo = [], 0
                for part, n in pieces:
                    rows.append((f"{stem}{part}.{suffix}", lo, lo + n))
                    lo += n
                out[key] = rows
    return out


def split_infos(tensors: Mapping[str, TensorInfo], keys: Keys, where: str) -> dict[str, TensorInfo]:
    """``tensors`` with every fused entry replaced by its parts: sub-ranges of the same bytes."""
    new = dict(tensors)
    for key, rows in keys.items():
        info = new.pop(key)
        total = rows[-1][2]
        if not info.shape or info.shape[0] != total:
            raise BakesteerError(f"{where} stores {key} as {list(info.shape)}, but the config makes it {total} rows; "
                                 "the checkpoint does not match its config.")
        row = (info.end - info.start) // total
        for part, lo, hi in rows:
            if part in new:
                raise BakesteerError(f"{where} stores both {key} and {part}; re-save the checkpoint.")
            new[part] = TensorInfo(info.shard, info.dtype, (hi - lo, *info.shape[1:]), info.start + lo * row,
                                   info.start + hi * row)
    return new


def split_header(meta: dict, tensors: Mapping[str, TensorInfo], shard: str, data_start: int) -> bytes:
    """The safetensors header (length prefix included) of ``shard`` naming ``tensors`` at the offsets they
    have in the shard's unchanged data section; padded to 8 bytes as the format recommends."""
    entries = sorted((i.start, k, i) for k, i in tensors.items() if i.shard == shard)
    head: dict = {"__metadata__": meta} if meta else {}
    head.update({k: {"dtype": i.dtype, "shape": list(i.shape),
                     "data_offsets": [i.start - data_start, i.end - data_start]} for _, k, i in entries})
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def split_checkpoint(ckpt: Checkpoint, keys: Keys) -> Checkpoint:
    """A view of ``ckpt`` with the fused tensors split: reads and folds see the parts; ``headers`` holds the new
    header of every shard it renames (the writer puts it in place of the source's)."""
    view = object.__new__(Checkpoint)
    view.__dict__.update(ckpt.__dict__)
    view.tensors = split_infos(ckpt.tensors, keys, ckpt.where)
    shards = sorted({ckpt.tensors[k].shard for k in keys})
    view.headers = {s: split_header(ckpt.shard_meta[s], view.tensors, s, ckpt.data_start[s]) for s in shards}
    return view


def source_header(ckpt: Checkpoint, shard: str) -> bytes:
    """The source shard's header as stored (length prefix included)."""
    with open(ckpt.root / shard, "rb") as f:
        return f.read(ckpt.data_start[shard])
