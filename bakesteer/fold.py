"""Fold arithmetic: new bias values from a steering vector. Pure functions, no I/O, numpy only.

W v is computed in float64 from the stored dtype, a chunk of rows at a time; a new bias is summed
in float64 and cast once to the checkpoint's dtype (through float32 for 16-bit types, which is how
torch rounds a float64 to float16/bfloat16).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .arch import Layout
from .errors import BakesteerError

ROWS_BYTES = 32 << 20  # float64 working set per chunk of weight rows
DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
          "BF16": np.dtype(ml_dtypes.bfloat16)}


def through_delta(weight: np.ndarray, v: np.ndarray, coef: float, layout: Layout) -> np.ndarray:
    """Bias change for ``v`` added to a linear layer's input: ``coef * W v``, float64 of shape (out,).

    nn.Linear stores W as (out, in) and computes x @ W.T + b; GPT-2's Conv1D stores (in, out) and
    computes x @ W + b. Rows are upcast a chunk at a time, so memory stays near one chunk.
    """
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN (even signalling) is refused by check_cast
        return _through(weight, v, coef, layout)


def _through(weight: np.ndarray, v: np.ndarray, coef: float, layout: Layout) -> np.ndarray:
    rows = max(1, ROWS_BYTES // (8 * weight.shape[1]))
    if layout == "linear":
        assert weight.shape[1] == v.shape[0], (weight.shape, v.shape)
        parts = [weight[i:i + rows].astype(np.float64) @ v for i in range(0, weight.shape[0], rows)]
        return coef * np.concatenate(parts)  # (out, in) @ (in,) -> (out,)
    assert weight.shape[0] == v.shape[0], (weight.shape, v.shape)
    acc = np.zeros(weight.shape[1], dtype=np.float64)
    for i in range(0, weight.shape[0], rows):
        acc += v[i:i + rows] @ weight[i:i + rows].astype(np.float64)  # (rows,) @ (rows, out)
    return coef * acc  # (in,) @ (in, out) -> (out,)


def direct_delta(v: np.ndarray, coef: float, scale: float = 1.0) -> np.ndarray:
    """Bias change for ``v`` added to a linear layer's output: ``coef * v / scale``.

    ``scale`` is what the model multiplies that output by before the residual add (Granite's
    residual_multiplier); dividing by it makes the residual stream move by exactly ``coef * v``.
    """
    return coef * np.asarray(v, dtype=np.float64) / scale


def apply_delta(bias: np.ndarray | None, delta: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """New bias = old bias (zeros when the slot is new) + summed delta, cast once to ``dtype``."""
    base = np.zeros_like(delta) if bias is None else bias.astype(np.float64)
    assert base.shape == delta.shape, (base.shape, delta.shape)
    total = base + delta
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused by check_cast (with what fits)
        if np.dtype(dtype).itemsize == 2:
            total = total.astype(np.float32)
        return total.astype(dtype)


def _finfo_max(dtype: np.dtype) -> float:
    return float(ml_dtypes.finfo(dtype).max if dtype == DTYPES["BF16"] else np.finfo(dtype).max)


def check_cast(key: str, bias: np.ndarray | None, delta: np.ndarray, new: np.ndarray, coefs: list[float]) -> None:
    """Refuse a folded bias that is not finite in its dtype, naming the largest coefficient that fits."""
    if np.isfinite(new.astype(np.float64)).all():
        return
    if bias is not None and not np.isfinite(bias.astype(np.float64)).all():
        raise BakesteerError(f"the checkpoint's {key} already holds NaN or infinite values; re-download the model.")
    if not np.isfinite(delta).all():
        raise BakesteerError(f"the fold into {key} is not finite: the weight it reads holds NaN or infinite values "
                             "(or the coefficient is beyond float64); re-download the model or use a smaller --coef.")
    top = _finfo_max(new.dtype)
    base = np.zeros_like(delta) if bias is None else np.abs(bias.astype(np.float64))
    grow = np.abs(delta)
    scale = float(np.min(np.where(grow > 0, np.maximum(top - base, 0) / np.where(grow > 0, grow, 1), np.inf)))
    scale *= 0.99  # margin for rounding in the cast
    fits = (f"the largest coefficient that fits is about {abs(coefs[0]) * scale:.3g}" if len(coefs) == 1
            else f"scale the coefficients down by a factor of at least {1 / scale:.3g}" if scale > 0
            else "the bias is already at the dtype's limit")
    raise BakesteerError(f"the folded bias {key} overflows {new.dtype} (largest finite value {top:.4g}); {fits}, "
                         "so pass a smaller --coef or a smaller vector.")
