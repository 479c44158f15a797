"""Test helper, kept for the tests that import it by this name."""

from overlayfuse.compare.trees import *  # noqa: F401,F403
from overlayfuse.compare.trees import build_layer, build_stack, describe, raw_snapshot, snapshot  # noqa: F401
