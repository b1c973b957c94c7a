"""Fold arithmetic: new bias values from a steering vector. Pure functions, no I/O.

All sums are taken in float64 from the stored dtype and cast once to the checkpoint's dtype.
"""
from __future__ import annotations

import torch

from .arch import Layout


ROWS_BYTES = 32 << 20  # float64 working set per chunk of weight rows


def through_delta(weight: torch.Tensor, v: torch.Tensor, coef: float, layout: Layout) -> torch.Tensor:
    """Bias change for ``v`` added to a linear layer's input: ``coef * W v``.

    nn.Linear stores W as (out, in) and computes x @ W.T + b; GPT-2's Conv1D stores (in, out)
    and computes x @ W + b. Rows are upcast a chunk at a time, so memory stays near one chunk
    whatever the weight's size. Returns float64 of shape (out,).
    """
    v = v.to(torch.float64)
    rows = max(1, ROWS_BYTES // (8 * weight.shape[1]))
    if layout == "linear":
        assert weight.shape[1] == v.shape[0], (weight.shape, v.shape)
        parts = [weight[i:i + rows].to(torch.float64) @ v for i in range(0, weight.shape[0], rows)]
        return coef * torch.cat(parts)  # (out, in) @ (in,) -> (out,)
    assert weight.shape[0] == v.shape[0], (weight.shape, v.shape)
    acc = torch.zeros(weight.shape[1], dtype=torch.float64)
    for i in range(0, weight.shape[0], rows):
        acc += v[i:i + rows] @ weight[i:i + rows].to(torch.float64)  # (rows,) @ (rows, out)
    return coef * acc  # (in,) @ (in, out) -> (out,)


def direct_delta(v: torch.Tensor, coef: float, scale: float = 1.0) -> torch.Tensor:
    """Bias change for ``v`` added to a linear layer's output: ``coef * v / scale``.

    ``scale`` is what the model multiplies that output by before the residual add (Granite's
    residual_multiplier); dividing by it makes the residual stream move by exactly ``coef * v``.
    """
    return coef * v.to(torch.float64) / scale


def apply_delta(bias: torch.Tensor | None, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """New bias = old bias (zeros when the slot is new) + summed delta, cast once to ``dtype``."""
    base = torch.zeros_like(delta) if bias is None else bias.to(torch.float64)
    assert base.shape == delta.shape, (base.shape, delta.shape)
    return (base + delta).to(dtype)
