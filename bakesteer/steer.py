"""What a steering addition is, with no heavy imports (the bake path never needs torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Steer:
    """One addition: ``coef * vector`` at ``site`` of decoder block ``layer`` (0-based).

    ``vector`` is a (hidden,) numpy array or CPU torch tensor.
    """

    site: str
    layer: int
    vector: Any
    coef: float


def as_f64(v: Any) -> np.ndarray:
    """A vector as a float64 numpy array, from numpy or torch."""
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)
