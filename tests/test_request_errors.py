"""The daemon never dies from a request (hardening item 5).

The daemon runs from a small wrapper script (like tests/planted_bug.py) that monkeypatches
bugs into it: exceptions that are not OSError, raised in the event loop (lookup, readlink,
readdir, unlink, rename, a create half-way through) and in the copy-up worker thread. Each
poisoned syscall gets EIO; the log holds one traceback per bug site (later hits of the same
site log one `(repeated)` line); nothing half-made is left (staging area empty, view
unchanged); other requests go on being served, and the daemon exits cleanly at unmount.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

import pytest

from hardening import errno_of
from layerspec import snapshot
from overlayfuse import Overlay

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

INJECTED = r'''
# overlayfuse with bugs planted for tests/test_request_errors.py. Only the leading arguments
# of each patched function are named, so the code may evolve under the patches.
import overlayfuse.copyup
import overlayfuse.namespace
from overlayfuse.cli import main
from overlayfuse.namespace import Namespace
from overlayfuse.tree import Tree


def patch(owner, attribute, bug):
    real = getattr(owner, attribute)
    def patched(*args, **kwargs):
        bug(*args)
        return real(*args, **kwargs)
    setattr(owner, attribute, patched)


def readlink_bug(self, node, *rest):
    if node.name == b"poison-link":
        raise RuntimeError("injected readlink bug")

def lookup_bug(self, parent, name, *rest):
    if name == b"poison-lookup":
        raise AssertionError("injected lookup bug")

def readdir_bug(self, node, *rest):
    if node.name == b"poison-dir":
        raise KeyError("injected readdir bug")

def copy_bug(src, dst, st, *rest):
    if st.st_size == 7777:
        raise ValueError("injected copy-up bug in the worker thread")

def create_bug(old_fd, old_name, new_fd, new_name, *rest):
    if new_name == b"poison-create":
        raise ZeroDivisionError("injected bug after the object was staged")

def unlink_bug(self, parent, name, *rest):
    if name == b"poison-unlink":
        raise TypeError("injected unlink bug")

def rename_bug(self, old_parent, old_name, *rest):
    if old_name == b"poison-rename":
        raise LookupError("injected rename bug after the copy-up")

patch(Tree, "readlink", readlink_bug)
patch(Tree, "resolve", lookup_bug)
patch(Tree, "list_names", readdir_bug)
patch(overlayfuse.copyup, "_stage_regular", copy_bug)       # runs in the worker thread
patch(overlayfuse.namespace, "renameat2", create_bug)
patch(Namespace, "_remove_name", unlink_bug)
patch(Namespace, "_move", rename_bug)

raise SystemExit(main())
'''

SITES = {
    "readlink": "injected readlink bug",
    "lookup": "injected lookup bug",
    "readdir": "injected readdir bug",
    "open": "injected copy-up bug in the worker thread",
    "create": "injected bug after the object was staged",
    "unlink": "injected unlink bug",
    "rename": "injected rename bug after the copy-up",
}


@pytest.fixture
def injected(tmp_path: Path) -> list[str]:
    """The command that runs overlayfuse with the bugs injected."""
    script = tmp_path / "injected_bugs.py"
    script.write_text(INJECTED)
    return [sys.executable, str(script)]


@pytest.mark.overlayfuse_log_allows(*(re.escape(message) for message in SITES.values()))
def test_unexpected_exceptions_become_eio_and_the_daemon_goes_on(make_stack, injected: list[str],
                                                                 tmp_path: Path) -> None:
    lower = {"p/poison-link": "symlink:target", "p/poison-dir/x": "file:x",
             "p/poison-unlink": "file:stays", "p/poison-rename": "file:not moved",
             "p/poison-create": "file:whited out",
             "g/good-link": "symlink:elsewhere", "g/dir/y": "file:y", "g/f": "file:f",
             "g/other": "file:other"}
    stack = make_stack([lower])
    (stack["lowers"][0] / "p/poison-copy").write_bytes(b"p" * 7777)
    log = tmp_path / "daemon.log"
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                 log_file=log, program=injected) as overlay:
        process = overlay.process
        assert process is not None
        merged = stack["merged"]
        p = merged / "p"

        def view() -> tuple:
            return (snapshot(merged / "g"), sorted(os.listdir(p)),
                    (p / "poison-unlink").read_text(), (p / "poison-rename").read_text(),
                    (p / "poison-copy").read_bytes() == b"p" * 7777,
                    os.lstat(p / "poison-link").st_mode)

        def poisoned() -> dict[str, int]:
            return {
                "readlink": errno_of(lambda: os.readlink(p / "poison-link")),
                "lookup": errno_of(lambda: os.lstat(p / "poison-lookup")),
                "readdir": errno_of(lambda: os.listdir(p / "poison-dir")),
                "open": errno_of(lambda: os.close(os.open(p / "poison-copy", os.O_WRONLY))),
                "create": errno_of(lambda: os.close(os.open(p / "poison-create",
                                                            os.O_WRONLY | os.O_CREAT, 0o644))),
                "unlink": errno_of(lambda: os.unlink(p / "poison-unlink")),
                "rename": errno_of(lambda: os.rename(p / "poison-rename", p / "renamed")),
            }

        # A create over a whiteout is staged in the work dir (elsewhere a file is made in
        # place): the injected bug comes after the staging.
        os.unlink(p / "poison-create")
        before = view()
        assert poisoned() == {site: errno.EIO for site in SITES}
        assert process.poll() is None
        # Nothing half-made, and every other request is served.
        assert os.listdir(stack["work"] / "work") == []
        assert view() == before
        g = merged / "g"
        assert os.readlink(g / "good-link") == "elsewhere"
        assert os.listdir(g / "dir") == ["y"]
        with open(g / "f", "a") as f:                       # a copy-up
            f.write("+")
        os.rename(g / "other", g / "moved")
        os.unlink(g / "moved")
        (g / "created").write_text("c")
        assert sorted(os.listdir(g)) == ["created", "dir", "f", "good-link"]
        assert (g / "f").read_text() == "f+"
        # The same bugs again: EIO again, and no second traceback.
        assert poisoned() == {site: errno.EIO for site in SITES}
        assert process.poll() is None
        assert os.listdir(stack["work"] / "work") == []
    assert process.returncode == 0
    text = log.read_text()
    assert text.count("Traceback (most recent call last)") == len(SITES), text
    for site, message in SITES.items():
        assert text.count(message) >= 2, f"{site}: {message!r} not logged twice"
    assert text.count("(repeated)") >= len(SITES)
