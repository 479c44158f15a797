"""Linux calls the os module lacks, through libc."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
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


_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode (os.posix_fallocate has none)."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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


def open_readable_dir(path_fd: int) -> int:
    """A readable fd on the directory behind an O_PATH fd, for the calls that refuse O_PATH
    fds (getdents, fsync, ioctl, open_by_handle_at's mount fd)."""
    return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_fd)


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


MAX_HANDLE_SZ = 128
AT_EMPTY_PATH = 0x1000


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                               ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_name_to_handle_at.restype = ctypes.c_int
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
_open_by_handle_at.restype = ctypes.c_int


def name_to_handle_at(dir_fd: int, name: bytes | None) -> tuple[int, bytes]:
    """(handle type, handle) of `name` in `dir_fd`, or of `dir_fd` itself when name is None;
    a symlink is not followed. The handle is what the filesystem's export operations encode,
    the same bytes kernel overlayfs stores as a copy-up origin."""
    handle = _FileHandle(handle_bytes=MAX_HANDLE_SZ)
    mount_id = ctypes.c_int()
    flags = AT_EMPTY_PATH if name is None else 0
    if _name_to_handle_at(dir_fd, name or b"", ctypes.byref(handle), ctypes.byref(mount_id),
                          flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    return handle.handle_type, bytes(handle.f_handle[:handle.handle_bytes])


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """Open the object a handle names on the filesystem of `mount_fd`. Needs
    CAP_DAC_READ_SEARCH."""
    if len(handle) > MAX_HANDLE_SZ:
        raise OSError(errno.EINVAL, "file handle too long")
    fh = _FileHandle(handle_bytes=len(handle), handle_type=handle_type)
    ctypes.memmove(fh.f_handle, handle, len(handle))
    fd = _open_by_handle_at(mount_fd, ctypes.byref(fh), flags | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


FS_IOC_GETFSUUID = 0x80111500   # _IOR(0x15, 0, struct fsuuid2 { u8 len; u8 uuid[16]; })
NULL_UUID = bytes(16)


def filesystem_uuid(dir_fd: int) -> bytes:
    """The superblock's UUID (s_uuid) of the filesystem holding the directory `dir_fd`;
    all zeros for a filesystem that has none, as the kernel keeps it."""
    buf = bytearray(17)
    fd = open_readable_dir(dir_fd)
    try:
        fcntl.ioctl(fd, FS_IOC_GETFSUUID, buf)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
            return NULL_UUID
        raise
    finally:
        os.close(fd)
    return bytes(buf[1:1 + min(buf[0], 16)]).ljust(16, b"\0")
