"""The system calls of the hot file requests, without a mount: a read of a lower file, a
create, a small copy-up. Each call left out here must leave the result as it was."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlayfuse import copyup, namespace, ops
from overlayfuse.namespace import Caller, Namespace
from unit_stack import core

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown, trusted xattrs")


def _count(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], owner: Any, name: str,
           replacement: Callable[..., Any] | None = None) -> None:
    """Count the calls of `owner.name` (and make them call `replacement` instead, if given)."""
    real = replacement or getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


async def test_a_read_of_a_lower_file_needs_no_fstat_or_fadvise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its size is known from the lookup and cannot change, so a short read is its end; and
    a file this small gains nothing from a larger readahead."""
    data = bytes(range(256)) * 20
    with core(tmp_path, [{"d/f": "file:" + "x"}]) as ov:
        (ov.paths["lowers"][0] / "d/f").write_bytes(data)
        operations = ops.Operations(ov.tree)
        node = ov.node("d/f")
        calls: Counter[str] = Counter()
        _count(monkeypatch, calls, os, "fstat")
        _count(monkeypatch, calls, os, "posix_fadvise")
        info = await operations.open(node.ino, os.O_RDONLY, None)
        try:
            assert bytes(await operations.read(info.fh, 0, 8192)) == data
            assert bytes(await operations.read(info.fh, 4096, 4096)) == data[4096:]
            assert bytes(await operations.read(info.fh, len(data), 4096)) == b""
        finally:
            await operations.release(info.fh)
    assert calls == Counter()


async def test_a_read_after_a_copy_up_sees_the_size_of_the_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size kept for a lower file is dropped when its handle moves to the upper copy."""
    monkeypatch.setattr(ops, "_invalidate_attrs", lambda node: None)    # no kernel here
    with core(tmp_path, [{"d/f": "file:lower"}]) as ov:
        operations = ops.Operations(ov.tree)
        node = ov.node("d/f")
        reader = await operations.open(node.ino, os.O_RDONLY, None)
        writer = await operations.open(node.ino, os.O_WRONLY | os.O_APPEND, None)
        try:
            await operations.write(writer.fh, 5, b" and more")
            assert bytes(await operations.read(reader.fh, 0, 4096)) == b"lower and more"
        finally:
            await operations.release(writer.fh)
            await operations.release(reader.fh)


def _namespace(ov: Any) -> Namespace:
    return Namespace(ov.tree, ov.copy_up)


def test_a_new_file_is_made_in_place_when_one_call_makes_it_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter[str] = Counter()
    with core(tmp_path, [{"d/f": "file:lower"}]) as ov:
        names = _namespace(ov)
        _count(monkeypatch, calls, namespace, "renameat2")
        node, st, fd = names.create(ov.node("d"), b"new", 0o644,
                                    Caller(os.geteuid(), os.getegid(), names.umask))
        os.close(fd)
        made = ov.paths["upper"] / "d/new"
        assert os.stat(made).st_ino == st.st_ino
        assert stat.S_IMODE(st.st_mode) == 0o644 & ~names.umask
        assert os.listdir(ov.paths["work"] / "work") == []
    assert calls == Counter()


def test_a_new_file_whose_mode_the_umask_would_cut_is_staged(tmp_path: Path) -> None:
    """The daemon's own umask would cut bits the caller's leaves: made in the work dir,
    given its mode, then moved."""
    old_umask = os.umask(0o022)
    try:
        with core(tmp_path, [{"d/f": "file:lower"}]) as ov:
            names = _namespace(ov)
            _, st, fd = names.create(ov.node("d"), b"new", 0o666,
                                     Caller(os.geteuid(), os.getegid(), 0))
            os.close(fd)
            assert stat.S_IMODE(os.stat(ov.paths["upper"] / "d/new").st_mode) == 0o666
            assert stat.S_IMODE(st.st_mode) == 0o666
    finally:
        os.umask(old_umask)


def test_a_new_file_replaces_a_whiteout(tmp_path: Path) -> None:
    with core(tmp_path, [{"d/f": "file:lower"}], upper={"d/f": "whiteout"}) as ov:
        names = _namespace(ov)
        _, st, fd = names.create(ov.node("d"), b"f", 0o644,
                                 Caller(os.geteuid(), os.getegid(), names.umask))
        os.write(fd, b"new")
        os.close(fd)
        assert (ov.paths["upper"] / "d/f").read_bytes() == b"new"
        assert stat.S_ISREG(st.st_mode)
        assert os.listdir(ov.paths["work"] / "work") == []


@needs_root
def test_a_new_file_of_another_owner_is_staged_with_its_owner(tmp_path: Path) -> None:
    with core(tmp_path, [{"d/f": "file:lower"}]) as ov:
        names = _namespace(ov)
        _, st, fd = names.create(ov.node("d"), b"new", 0o4755, Caller(1234, 5678, 0))
        os.close(fd)
        made = os.stat(ov.paths["upper"] / "d/new")
        assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (1234, 5678, 0o4755)


@needs_root
async def test_a_small_copy_up_asks_once_for_a_reflink_and_makes_no_needless_calls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No dup of the source, no truncate after data that reaches the end, no chown to the
    owner the copy was made with, and no second FICLONE once the filesystem refused one."""
    def no_reflink(fd: int, request: int, arg: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "no reflinks here")

    lowers = [{"d/a": "file:" + "a" * 3000, "d/b": "file:" + "b" * 5000}]
    calls: Counter[str] = Counter()
    with core(tmp_path, lowers) as ov:
        nodes = [ov.node("d/a"), ov.node("d/b")]
        _count(monkeypatch, calls, copyup.fcntl, "ioctl", no_reflink)
        for name in ("dup", "ftruncate", "fchown"):
            _count(monkeypatch, calls, os, name)
        assert ov.copy_up is not None
        for node in nodes:
            await ov.copy_up.ensure_upper(node)
        upper = ov.paths["upper"]
        assert (upper / "d/a").read_text() == "a" * 3000
        assert (upper / "d/b").read_text() == "b" * 5000
    assert calls == Counter({"ioctl": 1})


@needs_root
def test_whiteouts_share_one_inode_as_the_kernels_do(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A link costs far less than a new inode; a whiteout made where the shared one has
    lost all its names, or has all the links it can take, is a new one to share."""
    lowers = [{f"d/f{i}": "file:lower" for i in range(6)}]
    with core(tmp_path, lowers) as ov:
        names = _namespace(ov)
        upper = ov.paths["upper"] / "d"
        for i in range(3):
            names.unlink(ov.node("d"), b"f%d" % i)
        inodes = {os.lstat(upper / f"f{i}").st_ino for i in range(3)}
        assert len(inodes) == 1
        assert os.lstat(upper / "f0").st_nlink == 3
        for i in range(3):
            os.unlink(upper / f"f{i}")      # the shared inode has no name left
        names.unlink(ov.node("d"), b"f3")
        real_link = os.link

        def full(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EMLINK, "too many links")

        monkeypatch.setattr(os, "link", full)
        names.unlink(ov.node("d"), b"f4")
        monkeypatch.setattr(os, "link", real_link)
        names.unlink(ov.node("d"), b"f5")
        made = [os.lstat(upper / f"f{i}") for i in (3, 4, 5)]
        assert all(stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 for st in made)
        assert made[0].st_ino != made[1].st_ino == made[2].st_ino
        assert ov.names("d") == ["f0", "f1", "f2"]     # only their whiteouts were removed
        names.whiteouts.close()
