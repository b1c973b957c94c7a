"""Bake into a model already loaded in memory (library API). The streaming bake is the default;
this path exists for callers that hold a model object, and must give the same tensors bit for bit.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

from .bake import Item, plan
from .checkpoint import TensorInfo, TensorSource
from .errors import BakesteerError
from .fused import split_infos

_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy, bfloat16 included (bit for bit)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


class ModelTensors(TensorSource):
    """A loaded model seen as a tensor source for the bake planner."""

    where = "the model"

    def __init__(self, model: torch.nn.Module):
        self.config = model.config.to_dict()
        self.state = model.state_dict()
        self.tensors = {k: TensorInfo("", _NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape))
                        for k, t in self.state.items()}

    def read(self, key: str) -> np.ndarray:
        return to_numpy(self.state[key])

    def _read_as(self, key: str, dtype: np.dtype) -> np.ndarray:
        return to_numpy(self.state[key])

    def split(self, keys: dict[str, list[tuple[str, int, int]]]) -> ModelTensors:
        view = object.__new__(ModelTensors)
        view.config, view.state = self.config, dict(self.state)
        view.tensors = split_infos(self.tensors, keys, self.where)
        for key, rows in keys.items():
            fused = view.state.pop(key)
            view.state.update({part: fused[lo:hi] for part, lo, hi in rows})
        return view


def bake_model(model: torch.nn.Module, items: list[Item]) -> torch.nn.Module:
    """Fold ``items`` into ``model``'s biases in place and return it (a new model when the family changes)."""
    source = ModelTensors(model)
    p = plan(source, items)
    if p.relabelled_from is not None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        cfg = {k: v for k, v in p.config.items() if k not in ("model_type", "transformers_version")}
        auto = AutoModelForImageTextToText if p.arch.text_key else AutoModelForCausalLM  # a wrapper keeps its class
        new = auto.from_config(AutoConfig.for_model(p.config["model_type"], **cfg),
                               dtype=next(model.parameters()).dtype)
        state = {k: v for k, v in p.source.state.items() if k in new.state_dict()}
        missing = new.load_state_dict({**state, **{k: to_torch(v) for k, v in p.updates.items()}},
                                      strict=False).missing_keys
        if missing:
            raise BakesteerError(f"relabelling left {missing[0]} unset; bake to disk instead.")
        return new.eval()
    with torch.no_grad():
        for key, array in p.updates.items():
            value = to_torch(array)
            path, name = key.rsplit(".", 1)  # "bias", or a stacked expert projection's "<name>_bias"
            module = model.get_submodule(path)
            if getattr(module, name) is None:
                setattr(module, name, torch.nn.Parameter(value.clone(), requires_grad=False))
            else:
                getattr(module, name).copy_(value)
    for flag in p.flags:
        setattr(model.config, flag, True)
    return model
