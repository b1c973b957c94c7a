"""Fold arithmetic: new bias values from a steering vector. Pure functions, no I/O.

All sums are taken in float64 from the stored dtype and cast once to the checkpoint's dtype.
"""
from __future__ import annotations

import torch

from .arch import Layout


def through_delta(weight: torch.Tensor, v: torch.Tensor, coef: float, layout: Layout) -> torch.Tensor:
    """Bias change for ``v`` added to a linear layer's input: ``coef * W v``.

    nn.Linear stores W as (out, in) and computes x @ W.T + b; GPT-2's Conv1D stores (in, out)
    and computes x @ W + b. Returns float64 of shape (out,).
    """
    w = weight.to(torch.float64)
    v = v.to(torch.float64)
    if layout == "linear":
        assert w.shape[1] == v.shape[0], (w.shape, v.shape)
        return coef * (w @ v)  # (out, in) @ (in,) -> (out,)
    assert w.shape[0] == v.shape[0], (w.shape, v.shape)
    return coef * (v @ w)  # (in,) @ (in, out) -> (out,)


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
