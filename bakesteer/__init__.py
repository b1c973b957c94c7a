"""bakesteer: fold activation-steering vectors into the biases of a normal checkpoint."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bakesteer")  # written once, in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from .errors import BakesteerError  # noqa: E402
from .steer import Steer  # noqa: E402

__all__ = ["BakesteerError", "Steer", "steering", "__version__"]


def __getattr__(name: str):
    if name == "steering":  # imports torch, so only on use
        from .hooks import steering

        return steering
    raise AttributeError(name)
