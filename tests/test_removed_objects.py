"""An object whose last name goes away while it is still in use (an open file or dir, a
working directory) can still be stat'ed, with st_nlink 0, as on kernel overlayfs: whether
unlink/rmdir removed the name or rename() replaced it. Differential against the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LOWERS = [{"lowfile": "file:lower", "lowdir": "dir", "merged": "dir", "merged2": "dir",
           "copied": "file:lower"}]
UPPER = {"upfile": "file:upper", "updir": "dir", "merged": "dir", "merged2": "dir"}


def _seen(st: os.stat_result) -> tuple[int, int, int, int, int]:
    size = 0 if (st.st_mode & 0o170000) == 0o040000 else st.st_size
    return st.st_mode, st.st_nlink, size, st.st_uid, st.st_gid


def _replace(merged: Path, victim: str, how: str) -> tuple | str:
    """Open `victim`, take its name away by `how`, and fstat the fd."""
    path = merged / victim
    is_dir = path.is_dir()
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0))
    try:
        if how == "rename":
            source = merged / f"new-{victim}"
            if is_dir:
                source.mkdir()
            else:
                source.write_text("new")
            os.rename(source, path)
        elif is_dir:
            os.rmdir(path)
        else:
            os.unlink(path)
        try:
            return _seen(os.fstat(fd))
        except OSError as e:
            return os.strerror(e.errno)
    finally:
        os.close(fd)


def _prepare(merged: Path) -> None:
    # A copied-up file, and a dir made through the mount (pure upper).
    with open(merged / "copied", "a") as f:
        f.write("+")
    (merged / "made").mkdir()


VICTIMS = ["lowfile", "upfile", "copied", "lowdir", "updir", "made", "merged"]


@pytest.mark.parametrize("how", ["rename", "remove"])
def test_fstat_after_name_is_gone_matches_kernel(both, how: str) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        results = {}
        for name, stack in (("kernel", kernel), ("ofs", ofs)):
            _prepare(stack["merged"])
            results[name] = {victim: _replace(stack["merged"], victim, how)
                             for victim in VICTIMS}
        assert results["ofs"] == results["kernel"]
    # Not vacuous: the upper objects are gone, and fstat still answers with no link.
    assert results["kernel"]["upfile"][1] == 0 and results["kernel"]["updir"][1] == 0


STAT_CWD = """
import os, sys
os.chdir(sys.argv[1])
os.rmdir(sys.argv[1])
st = os.stat(".")
print(oct(st.st_mode), st.st_nlink)
"""


def test_stat_of_removed_working_directory_matches_kernel(both) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        outputs = [subprocess.run([sys.executable, "-c", STAT_CWD, str(stack["merged"] / "merged2")],
                                  capture_output=True, text=True)
                   for stack in (kernel, ofs)]
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert (outputs[1].returncode, outputs[1].stdout) == (0, outputs[0].stdout), outputs[1].stderr


def _change_removed(merged: Path, victim: str, how: str) -> dict[str, object]:
    """Open `victim` read-write, take its name away, then change it through the fd."""
    path = merged / victim
    fd = os.open(path, os.O_RDWR)
    try:
        if how == "rename":
            (merged / f"new-{victim}").write_text("new")
            os.rename(merged / f"new-{victim}", path)
        else:
            os.unlink(path)
        done: dict[str, object] = {}
        for call, act in (("fchmod", lambda: os.fchmod(fd, 0o600)),
                          ("ftruncate", lambda: os.ftruncate(fd, 2)),
                          ("futimens", lambda: os.utime(fd, (1, 2))),
                          ("fsetxattr", lambda: os.setxattr(fd, "user.k", b"v"))):
            try:
                act()
                done[call] = "ok"
            except OSError as e:
                done[call] = os.strerror(e.errno)
        st = os.fstat(fd)
        done["after"] = (oct(st.st_mode), st.st_size, st.st_atime, st.st_mtime, st.st_nlink,
                         os.getxattr(fd, "user.k"))
        return done
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["rename", "remove"])
def test_changes_through_the_fd_of_a_removed_file_match_kernel(both, how: str) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        results = {name: {victim: _change_removed(stack["merged"], victim, how)
                          for victim in ("upfile", "copied")}
                   for name, stack in (("kernel", kernel), ("ofs", ofs))}
    assert results["ofs"] == results["kernel"]
    assert results["kernel"]["upfile"]["after"] == ("0o100600", 2, 1, 2, 0, b"v")
