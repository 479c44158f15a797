"""`podman diff` output made comparable between runs, for the podman tests (root and
rootless)."""

from __future__ import annotations


def stable_changes(diff: str) -> str:
    """podman diff, sorted, without "C DIR" for a directory that only holds other changes:
    podman reports those by comparing the upper dir's mtime with a lower layer's, so they
    come and go with the seconds a step took."""
    lines = sorted(diff.splitlines())
    paths = [line.split(maxsplit=1)[1] for line in lines]
    return "\n".join(line for line in lines
                     if not (line.startswith("C ")
                             and any(p.startswith(line[2:] + "/") for p in paths)))
