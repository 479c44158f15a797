"""Helpers shared by the hardening tests (containment, crash, concurrency, faults, resources,
run-time input): errno capture, full-metadata snapshots of directories outside the layers,
scratch filesystems that are always unmounted, and the daemon's resource counters."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from overlayfuse import mounts

SOAK = os.environ.get("OVERLAYFUSE_SOAK", "") not in ("", "0")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def errno_of(call: Callable[[], object]) -> int:
    """0 if `call` succeeds, else the errno it failed with."""
    try:
        call()
    except OSError as e:
        return e.errno or -1
    return 0


def full_snapshot(root: Path, atime: bool = True) -> dict[str, tuple]:
    """Everything about a tree, access and change times included: for a canary that the
    daemon must never read or write (relatime moves atime on any read when atime < mtime).
    atime=False leaves access times out (e.g. symlinks that a mount command resolves)."""
    result: dict[str, tuple] = {}

    def add(path: Path) -> None:
        st = os.lstat(path)
        xattrs = ()
        with contextlib.suppress(OSError):
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)))
        # Read the data without touching atime (we are root: O_NOATIME is allowed).
        data: object = None
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW)
            try:
                data = hashlib.sha256(os.pread(fd, st.st_size + 1, 0)).hexdigest()
            finally:
                os.close(fd)
        elif stat.S_ISLNK(st.st_mode):
            data = os.readlink(path)
        result[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                               st.st_nlink, st.st_ino,
                                               st.st_atime_ns if atime else None,
                                               st.st_mtime_ns, st.st_ctime_ns, xattrs, data)

    def walk(directory: Path) -> None:
        # listdir with O_NOATIME so that the snapshot itself leaves atime alone.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME | os.O_NOFOLLOW)
        try:
            names = sorted(os.listdir(fd))
        finally:
            os.close(fd)
        for name in names:
            child = directory / name
            add(child)
            if stat.S_ISDIR(os.lstat(child).st_mode):
                walk(child)

    add(root)
    walk(root)
    return result


def make_canary(root: Path) -> dict[str, tuple]:
    """A directory tree outside every layer, with atimes older than mtimes (so that under
    relatime any read of it would move them); returns its full snapshot."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "secret").write_bytes(b"canary secret\n")
    (root / "sub" / "file").write_bytes(b"canary sub file\n")
    (root / "sub" / "deeper" / "x").write_bytes(b"x")
    os.setxattr(root / "secret", "user.canary", b"1")
    for path in [root / "sub" / "deeper" / "x", root / "sub" / "file", root / "secret",
                 root / "sub" / "deeper", root / "sub", root]:
        os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    return full_snapshot(root)


@contextlib.contextmanager
def tmpfs(path: Path, options: str = "size=2m") -> Iterator[Path]:
    """A scratch tmpfs mounted on `path` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "hardening-tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def ext4_image(path: Path, image: Path, size_mb: int = 32) -> Iterator[Path]:
    """A fresh ext4 on a loop device mounted on `path`; the loop device is always detached."""
    path.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", device, str(path)], check=True, capture_output=True)
        try:
            yield path
        finally:
            _umount(path)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def remount_ext4(path: Path, image: Path) -> None:
    """Unmount and mount again an ext4_image (clears a shutdown); same loop file."""
    _umount(path)
    device = subprocess.run(["losetup", "-j", str(image)], check=True, capture_output=True,
                            text=True).stdout.split(":")[0]
    subprocess.run(["mount", device, str(path)], check=True, capture_output=True)


def _umount(path: Path) -> None:
    if mounts.is_mounted(path):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_LOGFLUSH = 1


def shutdown_ext4(path: Path) -> None:
    """Make every later operation on that ext4 fail with EIO (as a dying disk would)."""
    import fcntl
    import struct
    os.sync()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_LOGFLUSH))
    finally:
        os.close(fd)


def daemon_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def daemon_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def c_getxattr(path: Path, name: bytes, size: int) -> int:
    """getxattr(2) with a buffer of exactly `size` bytes: returns the length or -errno."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(os.fsencode(path), name, buf if size else None, ctypes.c_size_t(size))
    return n if n >= 0 else -ctypes.get_errno()


def c_lgetxattr(path: Path, name: bytes, size: int) -> int:
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.lgetxattr(os.fsencode(path), name, buf if size else None, ctypes.c_size_t(size))
    return n if n >= 0 else -ctypes.get_errno()


def c_listxattr(path: Path, size: int) -> int:
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.listxattr(os.fsencode(path), buf if size else None, ctypes.c_size_t(size))
    return n if n >= 0 else -ctypes.get_errno()


def c_setxattr(path: Path, name: bytes, value: bytes, flags: int = 0) -> int:
    """setxattr(2) with raw bytes (Python's os.setxattr refuses some names): 0 or -errno."""
    n = _libc.setxattr(os.fsencode(path), name, value, ctypes.c_size_t(len(value)), flags)
    return 0 if n == 0 else -ctypes.get_errno()


def c_lsetxattr(path: Path, name: bytes, value: bytes, flags: int = 0) -> int:
    n = _libc.lsetxattr(os.fsencode(path), name, value, ctypes.c_size_t(len(value)), flags)
    return 0 if n == 0 else -ctypes.get_errno()


def c_renameat2(old: Path, new: Path, flags: int) -> int:
    AT_FDCWD = -100
    n = _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                        ctypes.c_uint(flags))
    return 0 if n == 0 else -ctypes.get_errno()


ENOTCONN_LIKE = (errno.ENOTCONN, errno.ECONNABORTED)
