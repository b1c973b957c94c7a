"""The one exception type bakesteer raises for bad input."""


class BakesteerError(Exception):
    """A problem with the user's input, told in one sentence that says what to do.

    The CLI prints the message and exits non-zero without a traceback.
    """
