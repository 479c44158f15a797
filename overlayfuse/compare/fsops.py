"""Filesystem operations as data, applied through real syscalls to any mounted tree.

An operation is a tuple `(name, *args)` with paths relative to the mount root. `apply`
returns what a caller observes: "ok", "ok:VALUE" or the errno name. The same operation list
applied to kernel overlayfs and to another implementation must give the same outcomes; that
is what the differential tests and `overlayfuse-compare` check.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from ..syscalls import AT_FDCWD, renameat2, utimensat_omit_both

Op = tuple

MKNOD_KINDS = {"fifo": stat.S_IFIFO, "sock": stat.S_IFSOCK, "chr": stat.S_IFCHR,
               "blk": stat.S_IFBLK, "reg": stat.S_IFREG}


def _open(path: Path, flags: int, mode: int = 0o644) -> int:
    # O_NONBLOCK: opening a fifo must not wait for a peer.
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)


def _read(root: Path, path: str) -> str:
    fd = _open(root / path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data.decode() if len(data) <= 64 and data.isascii() else hashlib.sha256(
        data).hexdigest()[:16]


def _write(root: Path, path: str, offset: int, data: str, flags: int = 0) -> str:
    fd = _open(root / path, os.O_WRONLY | flags)
    try:
        return str(os.pwrite(fd, data.encode(), offset))
    finally:
        os.close(fd)


def _append(root: Path, path: str, data: str) -> str:
    fd = _open(root / path, os.O_WRONLY | os.O_APPEND)
    try:
        return str(os.write(fd, data.encode()))
    finally:
        os.close(fd)


def _open_close(root: Path, path: str, flags: int) -> str:
    os.close(_open(root / path, flags))
    return ""


def _create(root: Path, path: str, mode: int) -> str:
    os.close(_open(root / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    return ""


def _mknod(root: Path, path: str, kind: str, major: int = 0, minor: int = 0) -> str:
    os.mknod(root / path, MKNOD_KINDS[kind] | 0o644, os.makedev(major, minor))
    return ""


def _rename(root: Path, src: str, dst: str, flags: int = 0) -> str:
    renameat2(AT_FDCWD, os.fsencode(root / src), AT_FDCWD, os.fsencode(root / dst), flags)
    return ""


def _listdir(root: Path, path: str) -> str:
    return ",".join(sorted(os.listdir(root / path)))


def _stat(root: Path, path: str) -> str:
    st = os.lstat(root / path)
    return f"{stat.filemode(st.st_mode)}:{st.st_uid}:{st.st_gid}:{st.st_nlink}:" + (
        str(st.st_size) if not stat.S_ISDIR(st.st_mode) else "d")


def _getxattr(root: Path, path: str, name: str) -> str:
    return os.getxattr(root / path, name, follow_symlinks=False).decode(errors="replace")


def _listxattr(root: Path, path: str) -> str:
    return ",".join(sorted(os.listxattr(root / path, follow_symlinks=False)))


def _raise(code: int) -> None:
    raise OSError(code, os.strerror(code))


OPERATIONS: dict[str, Callable[..., object]] = {
    "read": _read,
    "write": _write,
    "append": _append,
    "open": _open_close,
    "create": _create,
    "truncate": lambda root, path, size: os.truncate(root / path, size),
    "chmod": lambda root, path, mode: os.chmod(root / path, mode),
    "chown": lambda root, path, uid, gid: os.chown(root / path, uid, gid,
                                                   follow_symlinks=False),
    "utime": lambda root, path, atime, mtime: os.utime(root / path, ns=(atime, mtime),
                                                       follow_symlinks=False),
    "utime_omit": lambda root, path: utimensat_omit_both(os.fsencode(root / path)),
    "access": lambda root, path, mode: None if os.access(root / path, mode) else _raise(
        errno.EACCES),
    "setxattr": lambda root, path, name, value: os.setxattr(root / path, name, value.encode(),
                                                            follow_symlinks=False),
    "removexattr": lambda root, path, name: os.removexattr(root / path, name,
                                                           follow_symlinks=False),
    "getxattr": _getxattr,
    "listxattr": _listxattr,
    "mkdir": lambda root, path, mode=0o755: os.mkdir(root / path, mode),
    "rmdir": lambda root, path: os.rmdir(root / path),
    "unlink": lambda root, path: os.unlink(root / path),
    "rename": _rename,
    "link": lambda root, src, dst: os.link(root / src, root / dst, follow_symlinks=False),
    "symlink": lambda root, target, path: os.symlink(target, root / path),
    "mknod": _mknod,
    "readlink": lambda root, path: os.readlink(root / path),
    "listdir": _listdir,
    "stat": _stat,
}


def apply(root: Path, op: Op) -> str:
    name, *args = op
    try:
        result = OPERATIONS[name](root, *args)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok" if result is None or result == "" else f"ok:{result}"


def apply_all(root: Path, ops: Sequence[Op]) -> list[str]:
    return [apply(root, op) for op in ops]
