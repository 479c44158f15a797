"""Linux calls the os module lacks, through libc."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

AT_FDCWD = -100
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def renameat2(old_dir_fd: int, old_name: bytes, new_dir_fd: int, new_name: bytes,
              flags: int = 0) -> None:
    if _renameat2(old_dir_fd, old_name, new_dir_fd, new_name, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old_name)


UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int


def utimensat_omit_both(path: bytes) -> None:
    """utimensat() with both times UTIME_OMIT: changes nothing (and copies nothing up)."""
    times = (_Timespec * 2)(_Timespec(0, UTIME_OMIT), _Timespec(0, UTIME_OMIT))
    if _utimensat(AT_FDCWD, path, times, 0x100) != 0:  # AT_SYMLINK_NOFOLLOW
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def open_noatime(name: bytes | str, flags: int, dir_fd: int) -> int:
    """Open for reading without touching the atime, as kernel overlayfs opens real files;
    without O_NOATIME where we may not use it (a file another user owns, as non-root)."""
    try:
        return os.open(name, flags | os.O_NOATIME | os.O_CLOEXEC, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, flags | os.O_CLOEXEC, dir_fd=dir_fd)


_SYS_OPEN_TREE = 428            # x86_64 and the generic syscall table alike
OPEN_TREE_CLONE = 1
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def open_tree_clone(path: str) -> int:
    """An O_PATH fd on a detached copy of the mount at `path`, without the filesystems
    mounted below it: what kernel overlayfs sees of a layer. Needs CAP_SYS_ADMIN."""
    fd = _syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD),
                  ctypes.c_char_p(os.fsencode(path)),
                  ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)
