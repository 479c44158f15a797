"""The guided tour (scripts/demo) runs to the end and explains each overlay marker it shows
by what it means: a copied-up file's origin is not called an opaque dir, and no marker is
printed as raw bytes."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import needs_fuse
from overlayfuse.demo import marker_meaning


@needs_fuse
def test_the_tour_names_each_marker_by_its_meaning() -> None:
    done = subprocess.run([sys.executable, "-m", "overlayfuse.demo"], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    upper_now = done.stdout.split("== 7.")[1].split("lower2 (unchanged)")[0]
    lines = {line.split()[2].rstrip("/"): line for line in upper_now.splitlines()
             if len(line.split()) > 2 and line.split()[0][0] in "-dc"}
    assert "copied up" in lines["notes.txt"] and "opaque" not in lines["notes.txt"]
    assert "opaque dir" in lines["cache"]
    assert "whiteout" in lines["remove-me.txt"]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]", done.stdout)


def test_each_marker_kind_has_its_meaning() -> None:
    assert "opaque dir" in marker_meaning("user.overlay.opaque", b"y")
    assert "copied up" in marker_meaning("trusted.overlay.origin", b"\x00\xfb\x21" + b"\x00" * 26)
    assert "renamed dir" in marker_meaning("trusted.overlay.redirect", b"/a/b")
    assert "impure" in marker_meaning("trusted.overlay.impure", b"y")
    assert "3 bytes" in marker_meaning("trusted.overlay.nlink", b"U+1")
