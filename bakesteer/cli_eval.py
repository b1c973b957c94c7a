"""CLI commands that show what a bake does (compare, eval): registered into the main parser."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``func`` to a handler returning an exit code."""
