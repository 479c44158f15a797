"""Differential testing against kernel overlayfs (the `overlayfuse-compare` command)."""

from __future__ import annotations

import sys


def main() -> int:
    """The command's entry point: one clear line when the `compare` extra is missing."""
    try:
        from .run import main as run
    except ModuleNotFoundError as e:
        if e.name != "hypothesis":
            raise
        print("overlayfuse-compare: needs hypothesis; install overlayfuse[compare]",
              file=sys.stderr)
        return 2
    return run()
