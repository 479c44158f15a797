from __future__ import annotations

from overlayfuse.compare.trees import snapshot

STACK = [
    {"f": "file:top", "d/y": "file:y", "g": "whiteout", ".": "dir", "h": "oci-whiteout",
     "link": "symlink:/etc/passwd", "op": "opaque", "op/new": "file:n"},
    {"f": "file:bottom", "g": "file:g", "h": "file:h", "d/x": "file:x", "d/sub/z": "file:z",
     "op/old": "file:o"},
]


def test_merged_view_matches_kernel(both) -> None:
    with both(STACK) as (kernel, ofs):
        expected = snapshot(kernel["merged"])
        # The kernel does not know OCI whiteouts: it shows both the marker and the name.
        del expected["h"], expected[".wh.h"]
        assert snapshot(ofs["merged"]) == expected
        assert not (ofs["merged"] / "h").exists()
