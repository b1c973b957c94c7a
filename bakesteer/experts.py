"""Stacked expert projections (GPT-OSS): every expert of a block in one parameter.

transformers builds ``mlp.experts.gate_up_proj`` as (E, in, out) and computes ``x @ W[e] + b[e]`` with the bias
``mlp.experts.gate_up_proj_bias`` (E, out). A checkpoint stores that parameter as is, or MXFP4-packed as
``<name>_blocks`` (E, out, in/32, 16) uint8, two 4-bit values a byte, and ``<name>_scales`` (E, out, in/32) uint8
exponents (transformers' ``integrations/mxfp4.py``). A through-fold reads each expert's weights (decoded one expert at
a time, by transformers' own decoder, where packed); a direct fold reads none, so packed weights stay untouched.
"""
from __future__ import annotations

import numpy as np

from .checkpoint import TensorSource
from .errors import BakesteerError
from .fold import through_delta

BLOCKS, SCALES = "_blocks", "_scales"


def is_packed(ckpt: TensorSource, name: str) -> bool:
    return name not in ckpt.tensors and name + BLOCKS in ckpt.tensors and name + SCALES in ckpt.tensors


def dims(ckpt: TensorSource, name: str) -> tuple[int, int, int]:
    """(experts, in, out) of a stacked projection, as stored or as packed."""
    if is_packed(ckpt, name):
        shape = tuple(ckpt.tensors[name + BLOCKS].shape)
        if len(shape) != 4 or shape[3] != 16 or tuple(ckpt.tensors[name + SCALES].shape) != shape[:3]:
            raise BakesteerError(f"{ckpt.where} stores {name}{BLOCKS}/{SCALES} in shapes MXFP4 does not have; "
                                 "re-download the checkpoint.")
        e, out, groups, _ = shape
        return e, groups * 32, out
    if name not in ckpt.tensors:
        raise BakesteerError(f"{ckpt.where} has no tensor {name} (nor its MXFP4 blocks and scales); is this a "
                             f"{ckpt.config.get('model_type')} checkpoint saved by transformers?")
    shape = ckpt.tensors[name].shape
    if len(shape) != 3:
        raise BakesteerError(f"{ckpt.where} stores {name} with shape {list(shape)}, not (experts, in, out); the "
                             "checkpoint does not match its config.")
    return shape


def _decoded(ckpt: TensorSource, name: str, e: int) -> np.ndarray:
    """Expert ``e``'s packed weight as (in, out) float32, decoded by transformers."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    blocks = torch.from_numpy(np.array(ckpt.read_bytes(name + BLOCKS)[e:e + 1]))
    scales = torch.from_numpy(np.array(ckpt.read_bytes(name + SCALES)[e:e + 1]))
    return convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)[0].numpy()  # (1, in, out) -> (in, out)


def through(ckpt: TensorSource, name: str, v: np.ndarray, coef: float) -> np.ndarray:
    """``coef * v @ W[e]`` for every expert: (E, out) float64, one expert's weights in memory at a time."""
    e_count = dims(ckpt, name)[0]
    if is_packed(ckpt, name):
        return np.stack([through_delta(_decoded(ckpt, name, e), v, coef, "conv1d") for e in range(e_count)])
    w = ckpt.read(name)
    return np.stack([through_delta(w[e], v, coef, "conv1d") for e in range(e_count)])  # W[e] is (in, out)
