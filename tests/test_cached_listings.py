"""Directory listings cached by the kernel (with a pyfuse3 that lets opendir ask for it): a
warm listing costs the daemon no READDIR, and every change made through the mount shows in
the next listing, as on kernel overlayfs."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from overlayfuse import KernelOverlay, capabilities

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LOWERS = [{"d/a": "file:a", "d/b": "file:b", "d/sub/x": "file:x", "e/y": "file:y",
           "gone": "dir", "gone/z": "file:z", "hl": "file:h", "hl2": "link:hl"},
          {"d/low": "file:low", "d/wh": "file:wh", "e/deep/w": "file:w"}]
UPPER = {"d/u": "file:u", "u": "dir", "u/in": "file:in"}


def _listings(merged: Path) -> dict[str, list[tuple[str, bool]]]:
    """Every dir's listing (names and whether each is a dir), read with readdir."""
    result = {}
    for dirpath, _, _ in os.walk(merged):
        with os.scandir(dirpath) as entries:
            result[os.path.relpath(dirpath, merged)] = sorted(
                (e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    return result


CHANGES = [
    ("create", lambda m: (m / "d/new").write_bytes(b"n")),
    ("unlink lower (whiteout)", lambda m: os.unlink(m / "d/low")),
    ("unlink upper", lambda m: os.unlink(m / "d/u")),
    ("rename lower within", lambda m: os.rename(m / "d/a", m / "d/a2")),
    ("rename across dirs", lambda m: os.rename(m / "d/b", m / "e/b")),
    ("rename over", lambda m: os.rename(m / "d/a2", m / "d/wh")),
    ("mkdir", lambda m: os.mkdir(m / "d/newdir")),
    ("rmdir lower (whiteout)", lambda m: (os.unlink(m / "gone/z"), os.rmdir(m / "gone"))),
    ("mkdir over whiteout (opaque)", lambda m: os.mkdir(m / "gone")),
    ("symlink", lambda m: os.symlink("t", m / "e/sl")),
    ("hard link", lambda m: os.link(m / "hl", m / "e/hl3")),
    ("mknod fifo", lambda m: os.mkfifo(m / "u/fifo")),
    ("copy-up of a dir", lambda m: os.chmod(m / "e/deep", 0o700)),
    ("create in a copied-up dir", lambda m: (m / "e/deep/new").write_bytes(b"")),
    ("rename a dir", lambda m: os.rename(m / "u", m / "u2")),
    ("rmdir upper", lambda m: (os.unlink(m / "u2/in"), os.unlink(m / "u2/fifo"),
                               os.rmdir(m / "u2"))),
]


def test_listings_follow_every_change_as_on_the_kernel(both) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        for stack in (kernel, ofs):
            _listings(stack["merged"])      # warm: every listing cached
        for what, change in CHANGES:
            for stack in (kernel, ofs):
                change(stack["merged"])
            assert _listings(ofs["merged"]) == _listings(kernel["merged"]), what


def _readdirs(log: Path) -> int:
    return log.read_text().count("readdir(")


@pytest.mark.skipif(not capabilities.CACHED_LISTINGS,
                    reason="stock pyfuse3: opendir cannot ask the kernel to cache listings")
@pytest.mark.parametrize("option", ["relatime", "noatime"])
def test_a_warm_listing_reaches_the_daemon_only_after_a_change(make_stack, mount_ofs,
                                                                tmp_path: Path, option) -> None:
    """With a pyfuse3 that can do without OPENDIR, a warm listing costs no request at all,
    under relatime too (the listing that moved the upper dir's atime is not due again)."""
    stack = make_stack(LOWERS, UPPER)
    log = tmp_path / "overlayfuse.log"
    with mount_ofs(stack, debug=True, options=(option,)):
        d = stack["merged"] / "d"
        first = sorted(os.listdir(d))
        cold = _readdirs(log)
        assert cold > 0
        opens = log.read_text().count("opendir(")
        assert sorted(os.listdir(d)) == first
        assert _readdirs(log) == cold
        no_opendir = capabilities.NO_OPENDIR
        assert (log.read_text().count("opendir(") == opens) == no_opendir
        (d / "new").write_bytes(b"")
        assert sorted(os.listdir(d)) == sorted([*first, "new"])
        assert _readdirs(log) > cold


SYS_GETDENTS64 = 217 if os.uname().machine == "x86_64" else 61     # aarch64: 61
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _getdents(fd: int, size: int) -> list[str]:
    """One getdents64(2) call with a `size`-byte buffer: the names it returned."""
    buffer = ctypes.create_string_buffer(size)
    got = _libc.syscall(SYS_GETDENTS64, fd, buffer, size)
    if got < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    names, at = [], 0
    while at < got:
        reclen = int.from_bytes(buffer.raw[at + 16:at + 18], "little")
        names.append(buffer.raw[at + 19:at + reclen].split(b"\0", 1)[0].decode())
        at += reclen
    return names


def _read_rest(fd: int) -> list[str]:
    names: list[str] = []
    while batch := _getdents(fd, 4096):
        names += batch
    return names


@pytest.mark.parametrize("option", ["noatime", "relatime"])
def test_a_listing_read_across_a_change_shows_each_name_once(make_stack, mount_ofs,
                                                               kernel_available, option) -> None:
    """One reader fills the kernel's cache part way, a name is created, a second reader lists
    the dir to its end (the cache's end too, if it took the first reader's offsets), then the
    first reads on: it sees its own listing, each name once, as on the kernel. Per-handle
    listings, each with offsets counted from 0, put the new (upper, so first) name in the
    second listing and the first reader's last name twice. (Under relatime the second open
    drops the cache anyway: the new name moved the upper dir's mtime past its atime.)"""
    lower = {f"d/lower-file-with-a-long-name-{n:03}": "file:x" for n in range(120)}
    everything = [".", "..", *(name.split("/")[1] for name in lower)]
    for kind in ("kernel", "ofs"):
        stack = make_stack([lower], {}, name=kind)
        mount = mount_ofs(stack, options=(option,)) if kind == "ofs" else KernelOverlay(
            stack["lowers"], stack["upper"], stack["work"], stack["merged"], options=(option,))
        with mount:
            d = stack["merged"] / "d"
            first = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                seen = _getdents(first, 512)
                assert 2 < len(seen) < 20
                (d / "new").write_bytes(b"")
                second = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    assert sorted(_read_rest(second)) == sorted([*everything, "new"])
                finally:
                    os.close(second)
                seen += _read_rest(first)
            finally:
                os.close(first)
        assert sorted(name for name in seen if name != "new") == sorted(everything), kind


@pytest.mark.parametrize("option", ["relatime", "noatime"])
def test_fsync_of_an_open_dir_succeeds(make_stack, mount_ofs, option) -> None:
    """Also where dirs are opened without OPENDIR (noatime): FSYNCDIR then names the dir by
    its inode, not by a handle."""
    stack = make_stack(LOWERS, UPPER)
    with mount_ofs(stack, options=(option,)):
        for rel in ("u", "d", "e"):     # upper only, merged, lower only
            fd = os.open(stack["merged"] / rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
