"""Progress bars: tqdm on a terminal, silent when told to be."""
from tqdm.auto import tqdm


def bar(**kwargs) -> tqdm:
    kwargs.setdefault("leave", False)
    return tqdm(**kwargs)
