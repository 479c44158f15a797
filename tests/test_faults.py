"""Faults in the upper filesystem (hardening item 4).

- ENOSPC: the upper and work dirs on a small tmpfs (`size=2m`, or few inodes). A copy-up,
  create, mkdir, symlink, whiteout or rename that does not fit fails with ENOSPC, as with
  kernel overlayfs on the same kind of tmpfs; the view is unchanged, nothing is left in the
  staging area, and the daemon goes on serving (and succeeds once space is freed).
- EIO: the upper and work dirs on an ext4 image on a loop device, which is then shut down
  (EXT4_IOC_SHUTDOWN, what ext4 does on a dying disk): every write fails with EIO, the daemon
  goes on answering, and after the filesystem is mounted again the view is the one before the
  failure, with an empty staging area.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hardening import errno_of, ext4_image, remount_ext4, shutdown_ext4, tmpfs
from layerspec import build_layer, snapshot
from overlayfuse import KernelOverlay, Overlay

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MIB = 1 << 20


@contextlib.contextmanager
def small_upper_stack(base: Path, lower: dict[str, str], fs_options: str, who: str,
                      big: dict[str, int] | None = None) -> Iterator[dict]:
    """Lower on the test's disk; upper and work on a fresh tmpfs; mounted by `who`."""
    build_layer(base / "lower0", lower)
    for name, size in (big or {}).items():
        (base / "lower0" / name).write_bytes(b"L" * size)
    merged = base / "merged"
    merged.mkdir()
    with tmpfs(base / "fs", fs_options) as fs:
        (fs / "upper").mkdir()
        (fs / "work").mkdir()
        stack = {"lowers": [base / "lower0"], "upper": fs / "upper", "work": fs / "work",
                 "merged": merged, "fs": fs}
        context = (KernelOverlay(stack["lowers"], stack["upper"], stack["work"], merged)
                   if who == "kernel"
                   else Overlay(stack["lowers"], stack["upper"], stack["work"],
                                merged, log_file=base / "daemon.log"))
        with context as overlay:
            stack["process"] = getattr(overlay, "process", None)
            yield stack


def staging(stack: dict) -> list[str]:
    work = stack["work"] / "work"
    return sorted(os.listdir(work)) if work.exists() else []


def write_file(path: Path, size: int, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        written = 0
        chunk = b"w" * (256 << 10)
        while written < size:
            written += os.write(fd, chunk[:size - written])
    finally:
        os.close(fd)


def open_for_write(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


def serving(stack: dict) -> bool:
    process = stack.get("process")
    if process is not None and process.poll() is not None:
        return False
    return bool(os.listdir(stack["merged"]))


@pytest.mark.parametrize("who", ["kernel", "ofs"])
def test_copy_up_that_does_not_fit_is_enospc(who: str, kernel_available, tmp_path: Path
                                             ) -> None:
    lower = {"small": "file:small", "d/sub/f": "file:deep"}
    with small_upper_stack(tmp_path, lower, "size=2m", who, big={"big": 3 * MIB,
                                                                 "d/sub/big": 3 * MIB}) as stack:
        merged = stack["merged"]
        before = snapshot(merged)
        assert errno_of(lambda: open_for_write(merged / "big")) == errno.ENOSPC
        assert errno_of(lambda: os.chmod(merged / "big", 0o600)) == errno.ENOSPC
        assert errno_of(lambda: os.rename(merged / "big", merged / "moved")) == errno.ENOSPC
        assert errno_of(lambda: os.link(merged / "d/sub/big", merged / "l")) == errno.ENOSPC
        assert snapshot(merged) == before
        assert not (stack["upper"] / "big").exists()
        assert staging(stack) == []
        assert serving(stack)
        # Room for a small one: it works, and so does a write that fits. (Contents are
        # checked on disk: reads through the mount are test_reads_from_layers_on_tmpfs's.)
        open_for_write(merged / "small")
        with open(merged / "small", "a") as f:
            f.write("+more")
        assert (stack["upper"] / "small").read_text() == "small+more"
        assert os.stat(merged / "big").st_size == 3 * MIB
    if who == "ofs":
        assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_reads_from_layers_on_tmpfs(kernel_available, tmp_path: Path) -> None:
    contents = {}
    for who in ("kernel", "ofs"):
        with tmpfs(tmp_path / who / "fs", "size=4m") as fs:
            build_layer(fs / "lower0", {"lowerfile": "file:from the lower layer"})
            build_layer(fs / "upper", {"upperfile": "file:from the upper layer"})
            (fs / "work").mkdir()
            merged = tmp_path / who / "merged"
            merged.mkdir()
            context = (KernelOverlay([fs / "lower0"], fs / "upper", fs / "work", merged)
                       if who == "kernel"
                       else Overlay([fs / "lower0"], fs / "upper", fs / "work",
                                    merged))
            with context:
                contents[who] = [errno_of(lambda: (merged / name).read_bytes())
                                 for name in ("lowerfile", "upperfile")]
    assert contents["ofs"] == contents["kernel"] == [0, 0]


@pytest.mark.parametrize("who", ["kernel", "ofs"])
def test_writing_past_the_end_of_space_is_enospc(who: str, kernel_available, tmp_path: Path
                                                 ) -> None:
    with small_upper_stack(tmp_path, {"keep": "file:keep"}, "size=2m", who) as stack:
        merged = stack["merged"]
        assert errno_of(lambda: write_file(merged / "huge", 4 * MIB)) == errno.ENOSPC
        assert serving(stack)
        assert 0 < os.stat(merged / "huge").st_size < 4 * MIB     # as on any filesystem
        os.unlink(merged / "huge")
        write_file(merged / "fits", MIB)                             # the space came back
        assert os.stat(merged / "fits").st_size == MIB
        assert staging(stack) == []


def _inode_case(merged: Path) -> dict[str, object]:
    """Fill the upper's inodes through the mount, then try everything that needs one more."""
    made = 0
    while made < 10_000:
        failure = errno_of(lambda: write_file(merged / f"fill{made}", 0))
        if failure:
            break
        made += 1
    result: dict[str, object] = {"fill stopped with": failure}
    before = snapshot(merged)
    ops: dict[str, Callable[[], object]] = {
        "create": lambda: write_file(merged / "new", 0),
        "mkdir": lambda: os.mkdir(merged / "newdir"),
        "symlink": lambda: os.symlink("x", merged / "newlink"),
        "mkfifo": lambda: os.mkfifo(merged / "newfifo"),
        "copy-up": lambda: open_for_write(merged / "lowerfile"),
        "copy-up in a lower dir": lambda: open_for_write(merged / "ld/inner"),
        "create in a lower dir": lambda: write_file(merged / "ld/new", 0),
        "unlink a lower file": lambda: os.unlink(merged / "lowerfile"),
        "rename a lower file": lambda: os.rename(merged / "lowerfile", merged / "renamed"),
        "rmdir a lower dir": lambda: os.rmdir(merged / "empty"),
    }
    result.update({name: errno_of(op) for name, op in ops.items()})
    result["view unchanged"] = snapshot(merged) == before
    # One inode freed: a copy-up that needs two (the parent dir, then the file) fails
    # cleanly (the parent dir stays copied up, invisibly, as in the kernel).
    os.unlink(merged / "fill0")
    before = snapshot(merged)
    result["copy-up needing two inodes"] = errno_of(lambda: open_for_write(merged / "ld/inner"))
    result["view unchanged after"] = snapshot(merged) == before
    # Room again: everything works.
    for index in range(1, 6):
        os.unlink(merged / f"fill{index}")
    result["copy-up with room"] = errno_of(lambda: open_for_write(merged / "ld/inner"))
    result["create with room"] = errno_of(lambda: write_file(merged / "last", 0))
    result["unlink with room"] = errno_of(lambda: os.unlink(merged / "lowerfile"))
    return result


def test_running_out_of_inodes_is_enospc_like_the_kernel(kernel_available,
                                                         tmp_path: Path) -> None:
    lower = {"lowerfile": "file:lower", "ld/inner": "file:inner", "empty": "dir"}
    results = {}
    for who in ("kernel", "ofs"):
        with small_upper_stack(tmp_path / who, lower, "size=8m,nr_inodes=64", who) as stack:
            results[who] = _inode_case(stack["merged"])
            assert serving(stack)
            if who == "ofs":
                assert staging(stack) == []     # (the kernel keeps a whiteout of its own)
    assert results["ofs"]["fill stopped with"] == errno.ENOSPC
    assert results["ofs"]["create with room"] == results["ofs"]["unlink with room"] == 0
    assert results["ofs"]["view unchanged"] and results["ofs"]["view unchanged after"]
    assert results["ofs"] == results["kernel"]
    assert "Traceback" not in (tmp_path / "ofs" / "daemon.log").read_text()


# ---- EIO: the upper filesystem fails --------------------------------------------------------

def _loop_usable() -> str | None:
    if shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        return "losetup / mkfs.ext4 missing"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices"
    return None


def _eio_ops(merged: Path) -> dict[str, int]:
    ops: dict[str, Callable[[], object]] = {
        "copy-up": lambda: open_for_write(merged / "lowerfile"),
        "chmod lower": lambda: os.chmod(merged / "other", 0o600),
        "create": lambda: write_file(merged / "new", 10),
        "mkdir": lambda: os.mkdir(merged / "newdir"),
        "write upper": lambda: write_file(merged / "upperfile", 10, os.O_WRONLY | os.O_TRUNC),
        "unlink lower": lambda: os.unlink(merged / "ld/inner"),
        "rename upper": lambda: os.rename(merged / "upperfile", merged / "renamed"),
        "setxattr": lambda: os.setxattr(merged / "lowerfile", "user.x", b"1"),
        "symlink": lambda: os.symlink("t", merged / "sym"),
    }
    return {name: errno_of(op) for name, op in ops.items()}


def test_eio_from_a_failing_upper_filesystem(kernel_available, tmp_path: Path) -> None:
    reason = _loop_usable()
    if reason:
        pytest.skip(reason)
    results = {}
    views = {}
    for who in ("kernel", "ofs"):
        base = tmp_path / who
        build_layer(base / "lower0", {"lowerfile": "file:lower", "other": "file:other",
                                      "ld/inner": "file:inner", "readme": "file:read me"})
        merged = base / "merged"
        merged.mkdir()
        image = base / "upper.img"
        log = base / "daemon.log"
        with ext4_image(base / "fs", image) as fs:
            (fs / "upper").mkdir()
            (fs / "work").mkdir()
            upper, work = fs / "upper", fs / "work"

            def mount() -> contextlib.AbstractContextManager:
                if who == "kernel":
                    return KernelOverlay([base / "lower0"], upper, work, merged)
                return Overlay([base / "lower0"], upper, work, merged, log_file=log)

            with mount() as overlay:
                process = getattr(overlay, "process", None)
                write_file(merged / "upperfile", 5)
                open_for_write(merged / "ld/inner")      # a copy-up that works
                before = snapshot(merged)
                reader = os.open(merged / "readme", os.O_RDONLY)
                shutdown_ext4(fs)
                results[who] = _eio_ops(merged)
                # Still answering: an open lower file reads, the mount is listed or refused.
                results[who + " read open fd"] = os.pread(reader, 100, 0)
                os.close(reader)
                results[who + " list"] = errno_of(lambda: os.listdir(merged))
                if process is not None:
                    assert process.poll() is None, "the daemon died"
            remount_ext4(fs, image)
            with mount():
                views[who] = snapshot(merged)
                assert views[who] == before, "a failed operation left partial state"
                if who == "ofs":
                    assert os.listdir(work / "work") == []
        if who == "ofs":
            text = log.read_text()
            assert "Traceback" not in text
    assert set(results["ofs"].values()) == {errno.EIO}, results["ofs"]
    assert results["ofs"] == results["kernel"]
    assert results["ofs read open fd"] == b"read me"
    assert views["ofs"] == views["kernel"]
