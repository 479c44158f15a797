"""Every cache (the kernel's dentry/attribute/page caches, the daemon's listings and nodes)
stays exact after each change: the result is checked at once through another path -- another
name, another process, a fresh readdir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from overlayfuse.syscalls import RENAME_EXCHANGE, AT_FDCWD, renameat2

LOWERS = [{"d/a": "file:a", "d/sub/s": "file:s", "hl1": "file:linked", "hl2": "link:hl1",
           "f": "file:lower", "ldir": "dir", "ldir/x": "file:x"}]


def other_process(*argv: str) -> str:
    """Run a command in another process and return its stdout (its errors as text)."""
    done = subprocess.run(argv, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else f"error:{done.returncode}"


def ls(path: Path) -> list[str]:
    return sorted(other_process("ls", "-A", str(path)).split())


def stat_field(path: Path, fmt: str) -> str:
    return other_process("stat", "-c", fmt, str(path)).strip()


@pytest.fixture
def merged(make_stack, mount_ofs):
    stack = make_stack(LOWERS, {"u": "file:upper"})
    with mount_ofs(stack):
        yield stack["merged"]


def test_negative_entry_then_create(merged: Path) -> None:
    assert not (merged / "d/new").exists()        # cached as a negative entry
    (merged / "d/new").write_text("n")
    assert stat_field(merged / "d/new", "%s") == "1"
    assert "new" in ls(merged / "d")
    assert "new" in os.listdir(merged / "d")


def test_unlink_lower_file_seen_everywhere(merged: Path) -> None:
    os.stat(merged / "d/a")
    os.unlink(merged / "d/a")
    assert ls(merged / "d") == ["sub"]
    assert other_process("cat", str(merged / "d/a")).startswith("error")
    assert not (merged / "d/a").exists()


def test_rename_seen_by_another_process(merged: Path) -> None:
    (merged / "f").read_text()
    os.rename(merged / "f", merged / "d/g")
    assert other_process("cat", str(merged / "d/g")) == "lower"
    assert other_process("cat", str(merged / "f")).startswith("error")
    assert "f" not in ls(merged)


def test_exchange_seen_by_another_process(merged: Path) -> None:
    assert (merged / "u").read_text() == "upper"
    renameat2(AT_FDCWD, os.fsencode(merged / "u"), AT_FDCWD, os.fsencode(merged / "f"),
              RENAME_EXCHANGE)
    assert other_process("cat", str(merged / "u")) == "lower"
    assert other_process("cat", str(merged / "f")) == "upper"


def test_chmod_chown_seen_by_another_process(merged: Path) -> None:
    os.stat(merged / "d/a")
    os.chmod(merged / "d/a", 0o600)
    os.chown(merged / "d/a", 7, 8)
    assert stat_field(merged / "d/a", "%a %u %g") == "600 7 8"


def test_write_through_one_name_read_through_the_other(merged: Path) -> None:
    (merged / "one").write_text("1")
    os.link(merged / "one", merged / "two")
    with open(merged / "two", "w") as f:
        f.write("written via two")
    assert other_process("cat", str(merged / "one")) == "written via two"
    assert stat_field(merged / "one", "%h") == "2"
    os.unlink(merged / "two")
    assert stat_field(merged / "one", "%h") == "1"


def test_lower_hard_link_breaks_on_copy_up(merged: Path) -> None:
    assert stat_field(merged / "hl1", "%h") == "2"
    with open(merged / "hl1", "a") as f:
        f.write("+")
    assert other_process("cat", str(merged / "hl1")) == "linked+"
    assert other_process("cat", str(merged / "hl2")) == "linked"
    assert stat_field(merged / "hl1", "%h") == "1"


def test_dir_copy_up_changes_nlink(merged: Path) -> None:
    assert stat_field(merged / "ldir", "%h") == "2"
    (merged / "ldir/new").write_text("n")        # copies ldir up: now a merged dir
    assert stat_field(merged / "ldir", "%h") == "1"
    assert ls(merged / "ldir") == ["new", "x"]


def test_rmdir_then_mkdir_is_empty(merged: Path) -> None:
    assert ls(merged / "ldir") == ["x"]
    os.unlink(merged / "ldir/x")
    os.rmdir(merged / "ldir")
    os.mkdir(merged / "ldir")
    assert ls(merged / "ldir") == []
    assert os.listdir(merged / "ldir") == []


def test_renamed_dir_children_follow(merged: Path) -> None:
    os.makedirs(merged / "p/q")
    (merged / "p/q/r").write_text("r")
    os.rename(merged / "p", merged / "p2")
    assert other_process("cat", str(merged / "p2/q/r")) == "r"
    assert other_process("ls", str(merged / "p")).startswith("error")
    (merged / "p2/q/r2").write_text("r2")
    assert ls(merged / "p2/q") == ["r", "r2"]


def test_truncate_seen_by_stat_elsewhere(merged: Path) -> None:
    with open(merged / "f", "r+") as f:
        f.truncate(2)
        assert stat_field(merged / "f", "%s") == "2"
    assert (merged / "f").read_text() == "lo"
