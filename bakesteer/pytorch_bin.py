"""PyTorch ``pytorch_model*.bin`` checkpoints: read safely and converted once to safetensors."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .checkpoint import INDEX, SINGLE, copy_other_files
from .errors import BakesteerError
from .paths import plain_name, regular_file

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_bin_checkpoint(root: Path) -> bool:
    """A folder whose weights exist only as PyTorch pickles."""
    has_st = (root / SINGLE).is_file() or (root / INDEX).is_file()
    return not has_st and ((root / BIN_SINGLE).is_file() or (root / BIN_INDEX).is_file())


def convert_bin(src: Path, dst: Path, progress: bool = False) -> None:
    """Write a safetensors copy of a ``pytorch_model*.bin`` checkpoint into the new folder ``dst``.

    Each shard is memory-mapped with ``weights_only=True`` (no code in the pickle runs); tensors that
    share storage with an earlier one (tied weights) are written once, as ``save_pretrained`` does.
    """
    import torch
    from safetensors.torch import save_file as save_torch

    from .progress import bar

    if (src / BIN_INDEX).is_file():
        try:
            names = json.loads((src / BIN_INDEX).read_text())["weight_map"].values()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BakesteerError(f"{src / BIN_INDEX} is not a valid index ({e}); re-download it.") from e
        shards = sorted({plain_name(n, str(src / BIN_INDEX)) for n in names})
    else:
        shards = [BIN_SINGLE]
    dst.mkdir()
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(bar(iterable=shards, desc="converting .bin", unit="shard", disable=not progress)):
        path = regular_file(src, shard, str(src / BIN_INDEX))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for damaged or unsafe pickles
            raise BakesteerError(f"{src / shard} could not be read safely ({type(e).__name__}); re-download it.") from e
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                  for k, t in state.items()):
            raise BakesteerError(f"{path} does not hold a state dict of named tensors; re-download it.")
        seen, tensors = set(), {}
        for k, t in state.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                tensors[k] = t.contiguous()
        name = SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_torch(tensors, str(dst / name), metadata={"format": "pt"})
        os.chmod(dst / name, 0o666 & ~_umask())  # safetensors writes 0600; the bake links these into its output
        weight_map.update({k: name for k in tensors})
    if n > 1:
        (dst / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}))
    shutil.copyfile(src / "config.json", dst / "config.json")
    copy_other_files(src, dst, skip={BIN_INDEX})
