"""bakesteer: fold activation-steering vectors into the biases of a normal checkpoint."""
__version__ = "0.1.0"

from .errors import BakesteerError  # noqa: E402
from .hooks import Steer, steering  # noqa: E402

__all__ = ["BakesteerError", "Steer", "steering", "__version__"]
