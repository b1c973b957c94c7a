"""The record a bake leaves in its output, composition of bakes, and unbake.

``bakesteer.json`` says what was done; the ``bakesteer/`` folder keeps what is needed to check and
undo it: the vectors as baked, every changed bias's value before any bake, and the original
config and index. Baking onto a baked folder merges the records, so one unbake always returns
to the original source, bit for bit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .checkpoint import INDEX, Checkpoint, Staging, copy_file, copy_other_files, link_file, patch_file, tensor_bytes
from .card import render
from .errors import BakesteerError
from .progress import bar
from .steer import Steer

RECIPE = "bakesteer.json"
SIDE = "bakesteer"  # a subfolder, so no loader mistakes these files for weights
HELDOUT = "heldout.txt"
README_ORIG = "original_README.md"
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

    @property
    def steers(self) -> list[Steer]:
        return [Steer(s["site"], int(s["layer"]), v, float(s["coef"]))
                for s, v in zip(self.recipe["steers"], self.vectors)]

    def write(self, out: Path) -> None:
        (out / SIDE).mkdir()
        for i, s in enumerate(self.recipe["steers"]):
            s["vector"] = f"steer.{i}"
        save_file({f"steer.{i}": np.array(v, dtype=np.float64) for i, v in enumerate(self.vectors)},
                  str(out / SIDE / "vectors.safetensors"))
        save_file({k: np.ascontiguousarray(v) for k, v in self.originals.items()},
                  str(out / SIDE / "original_biases.safetensors"))
        (out / SIDE / "original_config.json").write_bytes(self.config)
        if self.index is not None:
            (out / SIDE / "original_index.json").write_bytes(self.index)
        if self.heldout is not None:
            (out / SIDE / HELDOUT).write_text("".join(line + "\n" for line in self.heldout))
        if self.readme is not None:
            (out / SIDE / README_ORIG).write_bytes(self.readme)
        (out / RECIPE).write_text(json.dumps(self.recipe, indent=2) + "\n")
        (out / "README.md").write_text(render(self.recipe))


def has_record(folder: Path) -> bool:
    return (Path(folder) / RECIPE).is_file()


def load_record(folder: str | Path) -> Record:
    out = Path(folder)
    if not has_record(out):
        raise BakesteerError(f"{out} has no {RECIPE}; give a folder written by `bakesteer bake`.")
    side = out / SIDE
    try:
        recipe = json.loads((out / RECIPE).read_text())
        vecs = load_file(str(side / "vectors.safetensors"))
        vectors = [vecs[s["vector"]] for s in recipe["steers"]]
        originals = load_file(str(side / "original_biases.safetensors"))
        index = (side / "original_index.json").read_bytes() if (side / "original_index.json").is_file() else None
        held = (side / HELDOUT).read_text().splitlines() if (side / HELDOUT).is_file() else None
        readme = (side / README_ORIG).read_bytes() if (side / README_ORIG).is_file() else None
        return Record(recipe, vectors, originals, (side / "original_config.json").read_bytes(), index, held, readme)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BakesteerError(f"{out}'s bake record is damaged ({type(e).__name__}: {e}); bake it again.")


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
    recipe = {**n, "source": p["source"], "written": written, "steers": p["steers"] + n["steers"],
              "tensors_changed": changed, "tensors_added": added, "shards": shards,
              "bakes": p.get("bakes", 1) + 1}
    return Record(recipe, prev.vectors + new.vectors, originals, prev.config, prev.index, readme=prev.readme)


def unbake(folder: str | Path, out: str | Path, force: bool = False, link: bool = False,
           progress: bool = False) -> dict:
    """Restore the original source of a baked folder: every tensor and the config bit for bit."""
    rec = load_record(folder)
    baked = Checkpoint(folder)
    missing = [k for k in rec.recipe["tensors_changed"] if k not in rec.originals]
    if missing:
        raise BakesteerError(f"{folder}'s record lacks the original values of {missing[0]}; it cannot be unbaked.")
    patches = {name: [(baked.tensors[k].start, tensor_bytes(v)) for k, v in rec.originals.items()
                      if baked.tensors[k].shard == name] for name in rec.recipe["shards"]}
    size = sum((baked.root / n).stat().st_size for n, o in rec.recipe["shards"].items()
               if o is not None and (patches[n] or not link))
    with Staging(Path(out), force) as tmp, bar(total=size, desc="writing", unit="B", unit_scale=True,
                                                unit_divisor=1024, disable=not progress) as pbar:
        for name, orig in rec.recipe["shards"].items():
            if orig is None:
                continue  # the shard that holds only biases the bake added
            if patches[name] or not link:
                copy_file(baked.root / name, tmp / orig, pbar)
                patch_file(tmp / orig, patches[name])
            else:
                link_file(baked.root / name, tmp / orig)
        (tmp / "config.json").write_bytes(rec.config)
        if rec.index is not None:
            (tmp / INDEX).write_bytes(rec.index)
        copy_other_files(baked.root, tmp, skip=set(rec.recipe["shards"]) | {"README.md"})
        if rec.readme is not None:
            (tmp / "README.md").write_bytes(rec.readme)
    return rec.recipe
