"""The podman tests' reading of `podman diff` (tests/podman_diff.py)."""

from __future__ import annotations

from podman_diff import stable_changes


def test_a_directory_changed_only_through_its_entries_is_left_out() -> None:
    diff = "C /d\nA /d/new\nD /f2\nC /etc\nA /x\nC /dd\nA /ddx"
    assert stable_changes(diff) == "A /d/new\nA /ddx\nA /x\nC /dd\nC /etc\nD /f2"
