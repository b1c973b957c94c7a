"""Progress bars: tqdm on a terminal only (captured output gets no bar leftovers), silent when told to be."""
from tqdm.auto import tqdm


def bar(**kwargs) -> tqdm:
    kwargs.setdefault("leave", False)
    kwargs["disable"] = True if kwargs.get("disable") else None  # None: tqdm shows the bar only on a TTY
    return tqdm(**kwargs)
