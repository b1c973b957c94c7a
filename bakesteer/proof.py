"""Part one of verify's proof: every tensor the recipe does not name is byte-identical to the source.

Each baked shard is read once beside the source shard it came from, in lockstep, in 16 MB chunks:
both are hashed (the source must still hash as it did at bake time) and compared, and every byte
that differs must lie inside a tensor the recipe says the bake changed. Biases the bake added (in
its own shard) must be zero outside the blocks the recipe steers; those blocks are proven by
running them (``bakesteer.verify``).
"""
from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arch import find_arch
from .checkpoint import CHUNK, Checkpoint
from .errors import BakesteerError
from .fused import split_keys


@dataclass
class ByteProof:
    """What the byte comparison found."""

    tensors: int = 0  # untouched tensors compared
    bytes: int = 0  # bytes read from the baked folder
    differing: list[str] = field(default_factory=list)  # untouched tensors (or headers) that differ
    nonzero_added: list[str] = field(default_factory=list)  # added biases that should be zero and are not
    changed_after_bake: list[str] = field(default_factory=list)  # baked shards whose sha256 is not the recorded
    unchecked: str = ""  # why the comparison could not run, if it could not

    @property
    def passed(self) -> bool:
        return not self.differing and not self.nonzero_added and not self.unchecked


def block_of(name: str, layers: str) -> int | None:
    """The decoder block a tensor belongs to, or None."""
    m = re.match(re.escape(layers) + r"\.(\d+)\.", name) or re.match(r"(?:.*\.)?(?:h|layers)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _spans(ckpt: Checkpoint, shard: str) -> tuple[list[int], list[tuple[int, int, str]]]:
    """The shard's tensors as (begin, end, name), offsets relative to its data section."""
    base = ckpt.data_start[shard]
    spans = sorted((i.start - base, i.end - base, k) for k, i in ckpt.tensors.items() if i.shard == shard)
    return [s for s, _, _ in spans], spans


def _differing(a: bytes, b: bytes, pos: int, starts: list[int], spans: list[tuple[int, int, str]]) -> set[str]:
    """Names of the tensors (or "the file size") whose bytes differ in chunks ``a``, ``b`` of the data
    sections that start at data offset ``pos``."""
    n = min(len(a), len(b))
    out = {"the file size"} if len(a) != len(b) else set()
    k = max(bisect.bisect_right(starts, pos) - 1, 0)
    while k < len(spans) and spans[k][0] < pos + n:
        lo, hi = max(spans[k][0], pos) - pos, min(spans[k][1], pos + n) - pos
        if lo < hi and a[lo:hi] != b[lo:hi]:
            out.add(spans[k][2])
        k += 1
    return out


def _compare(src: Path, out: Path, allowed: set[str], baked: Checkpoint, shard: str, src_header: int,
             expected: bytes | None, proof: ByteProof) -> tuple[str, str]:
    """Stream both files: the baked header must be ``expected`` (None: the source's own), and tensors outside
    ``allowed`` must have the bytes they have in the source's data section. Returns both sha256."""
    starts, spans = _spans(baked, shard)
    h_src, h_out = hashlib.sha256(), hashlib.sha256()
    pos, bad = 0, set()
    try:
        with open(src, "rb") as fs, open(out, "rb") as fo:
            head_src, head_out = fs.read(src_header), fo.read(baked.data_start[shard])
            h_src.update(head_src)
            h_out.update(head_out)
            proof.bytes += len(head_out)
            if head_out != (head_src if expected is None else expected):
                bad.add("the shard header")
            while True:
                a, b = fs.read(CHUNK), fo.read(CHUNK)
                if not a and not b:
                    break
                h_src.update(a)
                h_out.update(b)
                if a != b:
                    bad |= _differing(a, b, pos, starts, spans) - allowed
                pos += len(b)
                proof.bytes += len(b)
    except OSError as e:
        raise BakesteerError(f"cannot read {e.filename or out} ({e.strerror}); check the file and the disk, "
                             "then run verify again.") from None
    proof.differing += sorted(bad)
    return h_src.hexdigest(), h_out.hexdigest()


def _split_headers(src: Path, recipe: dict) -> tuple[Checkpoint, dict[str, bytes]]:
    """The source, and the header each of its shards must have in the bake where a relabel split fused
    linears (the same data under the parts' names; ``bakesteer.fused``)."""
    source = Checkpoint(src)
    arch = find_arch(source.config)
    split = arch.relabel.split if arch.relabel is not None else None
    if not recipe["written"].get("relabelled_from") or split is None:
        return source, {}
    cfg = arch.config(source.config)
    n_layers = arch.hidden_and_layers(cfg)[1]
    return source, source.split(split_keys(source, arch, split(cfg), n_layers)).headers


def prove_bytes(folder: Path, recipe: dict, src: Path, proven_blocks: set[int], layers: str) -> ByteProof:
    """Compare every baked shard with its source shard, and check the added biases outside ``proven_blocks``."""
    proof = ByteProof()
    baked = Checkpoint(folder)
    changed = set(recipe["tensors_changed"])
    recorded_src = recipe["source"].get("sha256") or {}
    recorded_out = recipe.get("sha256") or {}
    shards = recipe["shards"]
    if set(shards) != set(baked.shard_meta):
        raise BakesteerError(f"{folder}'s shards are not the ones its bakesteer.json names; bake it again.")
    for src_name in shards.values():
        if src_name is not None and not (src / src_name).is_file():
            raise BakesteerError(f"the source shard {src / src_name} recorded in the bake is gone; verify needs "
                                 "the source as it was at bake time.")
    source, headers = _split_headers(src, recipe)
    for out_name, src_name in sorted(shards.items(), key=lambda kv: str(kv[1])):
        if src_name is None:
            continue
        if src_name not in source.data_start:
            raise BakesteerError(f"{folder}'s bakesteer.json names a source shard {src_name} that {src} does not "
                                 "have; verify against the source it was baked from.")
        s_sha, o_sha = _compare(src / src_name, folder / out_name, changed, baked, out_name,
                                source.data_start[src_name], headers.get(src_name), proof)
        if src_name in recorded_src and recorded_src[src_name] != s_sha:
            raise BakesteerError(f"the source changed since the bake: {src / src_name} no longer hashes as it did "
                                 "then; bake again from the source as it is now.")
        if out_name in recorded_out and recorded_out[out_name] != o_sha:
            proof.changed_after_bake.append(out_name)
        proof.tensors += sum(1 for k, i in baked.tensors.items() if i.shard == out_name and k not in changed)
    for key in recipe["tensors_added"]:
        blk = block_of(key, layers)
        if blk in proven_blocks or key not in baked.tensors:
            continue
        if np.any(np.asarray(baked.read(key), dtype=np.float64) != 0):
            proof.nonzero_added.append(key)
    outside = [k for k in changed if block_of(k, layers) is None]
    proof.differing += [f"{k} (changed outside any decoder block)" for k in outside]
    return proof
