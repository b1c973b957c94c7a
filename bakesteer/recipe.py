"""The record a bake leaves in its output, composition of bakes, and unbake.

``bakesteer.json`` says what was done and the sha256 of every file the bake wrote (and of the
source's shards); the ``bakesteer/`` folder keeps what is needed to check and undo it: the
vectors as baked, every changed bias's value before any bake, and the original config and index.
Baking onto a baked folder merges the records, so one unbake always returns to the original
source, bit for bit. A record comes from a file that may have been downloaded: every name in it
passes the path policy, and a folder whose files no longer hash as recorded is refused.
"""
from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .card import render
from .checkpoint import (INDEX, Checkpoint, copy_other_files, hash_file, link_file, stream_copy, tensor_bytes,
                         write_safetensors)
from .errors import BakesteerError
from .paths import regular_file
from .progress import bar
from .schema import check_recipe
from .staging import RECIPE_FILE, Staging
from .steer import Steer

RECIPE = RECIPE_FILE
SIDE = "bakesteer"  # a subfolder, so no loader mistakes these files for weights
HELDOUT = "heldout.txt"
README_ORIG = "original_README.md"
HEADERS = "original_headers.json"  # the source shard headers a splitting relabel rewrote
VERIFIED = "verify.json"  # the figures of the last `bakesteer verify`, for the model card


@dataclass
class Record:
    recipe: dict
    vectors: list[np.ndarray]  # one per recipe["steers"] entry, float64
    originals: dict[str, np.ndarray]  # changed bias -> value in the original source
    config: bytes  # the original config.json
    index: bytes | None = None  # the original index, if the source was sharded
    heldout: list[str] | None = None  # an approximate bake's held-out passages, so verify can re-measure
    readme: bytes | None = None  # the source's README.md, which the written model card replaces
    headers: dict[str, str] | None = None  # source shard -> its header's JSON, where the bake rewrote it (fused.py)

    @property
    def steers(self) -> list[Steer]:
        return [Steer(s["site"], int(s["layer"]), v, float(s["coef"]))
                for s, v in zip(self.recipe["steers"], self.vectors)]

    def write(self, out: Path) -> None:
        (out / SIDE).mkdir()
        for i, s in enumerate(self.recipe["steers"]):
            s["vector"] = f"steer.{i}"
        write_safetensors(out / SIDE / "vectors.safetensors",
                          {f"steer.{i}": np.array(v, dtype=np.float64) for i, v in enumerate(self.vectors)})
        write_safetensors(out / SIDE / "original_biases.safetensors", self.originals)
        (out / SIDE / "original_config.json").write_bytes(self.config)
        if self.index is not None:
            (out / SIDE / "original_index.json").write_bytes(self.index)
        if self.heldout is not None:
            (out / SIDE / HELDOUT).write_text("".join(line + "\n" for line in self.heldout))
        if self.readme is not None:
            (out / SIDE / README_ORIG).write_bytes(self.readme)
        if self.headers:
            (out / SIDE / HEADERS).write_text(json.dumps(self.headers, indent=1) + "\n")
        (out / RECIPE).write_text(json.dumps(self.recipe, indent=2) + "\n")
        (out / "README.md").write_text(render(self.recipe))


def has_record(folder: Path) -> bool:
    return (Path(folder) / RECIPE).is_file()


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def load_record(folder: str | Path) -> Record:
    out = Path(folder)
    if not has_record(out):
        raise BakesteerError(f"{out} has no {RECIPE}; give a folder written by `bakesteer bake`.")
    side = out / SIDE
    optional = lambda name: side / name if (side / name).is_file() else None  # noqa: E731
    try:
        recipe = json.loads(regular_file(out, RECIPE, str(out)).read_text())
        check_recipe(recipe)
        vecs = load_file(str(regular_file(side, "vectors.safetensors", str(out / RECIPE))))
        vectors = [vecs[s["vector"]] for s in recipe["steers"]]
        _need(all(v.ndim == 1 and v.dtype == np.float64 and np.isfinite(v).all() for v in vectors)
              and len({v.shape for v in vectors}) == 1, "a vector is not a finite float64 [hidden] array")
        originals = load_file(str(regular_file(side, "original_biases.safetensors", str(out / RECIPE))))
        _need(set(originals) <= set(recipe["tensors_changed"]),
              "an original bias is of a tensor the bake did not change")
        config = regular_file(side, "original_config.json", str(out / RECIPE)).read_bytes()
        index = optional("original_index.json")
        held, readme, heads = optional(HELDOUT), optional(README_ORIG), optional(HEADERS)
        headers = json.loads(heads.read_text()) if heads else None
        _need(headers is None or (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
                                  and set(headers) <= set(recipe["shards"].values())),
              "its original headers are not of the source shards it names")
        return Record(recipe, vectors, originals, config, index.read_bytes() if index else None,
                      held.read_text().splitlines() if held else None, readme.read_bytes() if readme else None,
                      headers)
    except BakesteerError as e:
        raise BakesteerError(f"{out}'s bake record is damaged: {str(e)[0].lower()}{str(e)[1:]}") from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, SafetensorError) as e:
        raise BakesteerError(f"{out}'s bake record is damaged ({type(e).__name__}: {e}); bake it again.") from None


def check_untampered(folder: Path, recipe: dict) -> bool:
    """Every file the bake wrote still hashes as recorded (False: the bake predates hashes; nothing checked)."""
    hashes = recipe.get("sha256")
    if hashes is None:
        return False
    for name, sha in hashes.items():
        path = regular_file(folder, name, f"{folder / RECIPE}")
        if hash_file(path) != sha:
            raise BakesteerError(f"this folder was changed after the bake: {path} is not the file the bake wrote; "
                                 "bake it again from the source.")
    return True


def warn_unchecked(folder: Path) -> None:
    print(f"bakesteer: warning: {folder} was baked before bakesteer recorded hashes, so it cannot be checked for "
          "changes made after the bake.", file=sys.stderr)


def merge(prev: Record, new: Record) -> Record:
    """A bake onto a baked folder, recorded relative to the original source."""
    p, n = prev.recipe, new.recipe
    added = sorted(set(p["tensors_added"]) | set(n["tensors_added"]))
    changed = sorted((set(p["tensors_changed"]) | set(n["tensors_changed"])) - set(added))
    originals = dict(prev.originals)
    for k, v in new.originals.items():
        if k not in originals and k not in p["tensors_added"]:
            originals[k] = v
    shards = {out: (p["shards"].get(mid) if mid is not None else None) for out, mid in n["shards"].items()}
    written = dict(n["written"])
    written["flags_switched_on"] = sorted(set(p["written"]["flags_switched_on"]) | set(written["flags_switched_on"]))
    written["relabelled_from"] = p["written"]["relabelled_from"] or written["relabelled_from"]
    if "caveat" in p["written"]:
        written.setdefault("caveat", p["written"]["caveat"])
    given = n["source"].get("base_model")  # --base-model on this bake names the original source's base model
    source = {**p["source"], "base_model": given} if given else p["source"]
    recipe = {**n, "source": source, "written": written, "steers": p["steers"] + n["steers"],
              "tensors_changed": changed, "tensors_added": added, "shards": shards,
              "bakes": p.get("bakes", 1) + 1}
    return Record(recipe, prev.vectors + new.vectors, originals, prev.config, prev.index, readme=prev.readme,
                  headers=prev.headers)


def _damaged(folder, what: str) -> BakesteerError:
    return BakesteerError(f"{folder}'s bake record is damaged ({what}); it cannot be unbaked, so bake again.")


def _unbake_patches(rec: Record, baked: Checkpoint, folder) -> dict[str, list[tuple[int, bytes]]]:
    """Per baked shard, the byte ranges that get their original values back."""
    shards = rec.recipe["shards"]
    if set(shards) != set(baked.shard_meta):
        raise _damaged(folder, "its shards are not the ones the record names")
    missing = [k for k in rec.recipe["tensors_changed"] if k not in rec.originals]
    if missing:
        raise _damaged(folder, f"the original value of {missing[0]} is missing")
    patches: dict[str, list[tuple[int, bytes]]] = {name: [] for name in shards}
    for k, v in rec.originals.items():
        info = baked.tensors.get(k)
        if info is None or (info.np_dtype, info.shape) != (v.dtype, v.shape) or shards[info.shard] is None:
            raise _damaged(folder, f"the original value of {k} does not fit the baked tensor")
        patches[info.shard].append((info.start, tensor_bytes(v)))
    return patches


def unbake(folder: str | Path, out: str | Path, force: bool = False, link: bool = False,
           progress: bool = False) -> tuple[dict, bool]:
    """Restore the original source of a baked folder: every tensor and the config bit for bit.

    Returns (recipe, checked): ``checked`` when every restored shard hashes as the source did at bake
    time. A folder changed after the bake is refused, and nothing is written.
    """
    folder = Path(folder)
    rec = load_record(folder)
    shards, wrote = rec.recipe["shards"], rec.recipe.get("sha256")
    source_sha = rec.recipe["source"].get("sha256") or {}
    if wrote is None:
        warn_unchecked(folder)
    else:  # the small files now; each shard while it is copied, so the bake is read once
        check_untampered(folder, {"sha256": {n: h for n, h in wrote.items() if n not in shards}})
    baked = Checkpoint(folder)
    patches = _unbake_patches(rec, baked, folder)
    size = sum((baked.root / n).stat().st_size for n, o in shards.items() if o is not None)
    with Staging(Path(out), force, inputs=[folder]) as tmp, bar(total=size, desc="writing", unit="B",
                                                                 unit_scale=True, unit_divisor=1024,
                                                                 disable=not progress) as pbar:
        for name, orig in shards.items():
            if orig is None:
                continue  # the shard that holds only biases the bake added
            header = rec.headers.get(orig) if rec.headers else None
            if header is not None:  # the source's own header, in place of the split one
                raw = header.encode(errors="surrogateescape")  # the stored bytes, even if not UTF-8
                header = (baked.data_start[name], struct.pack("<Q", len(raw)) + raw)
            if patches[name] or header or not link:
                had, restored = stream_copy(baked.root / name, tmp / orig, patches[name], pbar, header)
            else:
                link_file(baked.root / name, tmp / orig)
                had = restored = hash_file(tmp / orig, pbar)
            if wrote is not None and wrote.get(name) != had:
                raise BakesteerError(f"this folder was changed after the bake: {baked.root / name} is not the file "
                                     "the bake wrote; bake it again from the source.")
            if orig in source_sha and source_sha[orig] != restored:
                raise _damaged(folder, f"the restored {orig} does not hash as the source's did at bake time")
        (tmp / "config.json").write_bytes(rec.config)
        if rec.index is not None:
            (tmp / INDEX).write_bytes(rec.index)
        copy_other_files(baked.root, tmp, skip=set(shards) | {"README.md"})
        if rec.readme is not None:
            (tmp / "README.md").write_bytes(rec.readme)
    checked = bool(source_sha) and all(o in source_sha for o in shards.values() if o is not None)
    return rec.recipe, checked
