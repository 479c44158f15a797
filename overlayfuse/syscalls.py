"""Raw system calls and the fds they open: the one place that opens an fd by name, builds a
/proc/self/fd path, or calls libc for what the os module lacks.

Every fd opened here is close-on-exec, and a name inside a layer is never followed if it
is a symlink. Whoever gets an fd from an `open_*` function owns it and closes it (`OwnedFd`
does so on leaving a block); fds borrowed from a cache (`Tree.dir_fd`) are only valid
until the next request may run, so never across an `await`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

AT_FDCWD = -100
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

# The C library is already loaded into the interpreter: no search for it (ctypes.util's
# find_library runs ldconfig in a child process).
_libc = ctypes.CDLL(None, use_errno=True)
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


DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class OwnedFd:
    """`with OwnedFd(fd) as fd:` closes `fd` when the block ends, however it ends."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


def proc_path(fd: int, name: bytes | None = None) -> tuple[bytes, bool]:
    """(path, follow_symlinks) reaching the object behind an O_PATH fd, or `name` inside that
    directory, for calls that take no fd. The /proc magic link itself is followed (it names
    the exact inode); `name` is not."""
    if name is None:
        return b"/proc/self/fd/%d" % fd, True
    return b"/proc/self/fd/%d/%s" % (fd, name), False


def xattr_names(fd: int, name: bytes | None = None) -> frozenset[bytes]:
    """The names of the xattrs of the object behind `fd` (or `name` in it), in one call: a
    caller that wants several markers asks only for those present."""
    path, follow = proc_path(fd, name)
    return frozenset(map(os.fsencode, os.listxattr(path, follow_symlinks=follow)))


def open_given_dir(path: str) -> int:
    """An O_PATH fd on a directory the user named (a layer, the workdir): symlinks in
    `path` are followed, as mount(8) follows them."""
    return os.open(path, DIR_PATH_FLAGS)


def open_dir_path(name: bytes | str, dir_fd: int) -> int:
    """An O_PATH fd on the directory `name` inside `dir_fd`; a symlink is not followed."""
    return os.open(name, DIR_PATH_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)


def open_dir_walk(path: bytes, dir_fd: int) -> int:
    """open_dir_path of each component of `path` in turn ("a/b/c"): no symlink is followed
    anywhere on the way."""
    fd = os.dup(dir_fd)
    try:
        for part in path.split(b"/"):
            next_fd = open_dir_path(part, fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_path(name: bytes, dir_fd: int) -> int:
    """An O_PATH fd on the object `name` inside `dir_fd`, whatever its type (a symlink
    itself): it pins the inode, for fstat and /proc/self/fd paths."""
    return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def open_in(name: bytes, flags: int, dir_fd: int, mode: int = 0o600) -> int:
    """open(2) of `name` inside `dir_fd` with `flags`, never through a symlink."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


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


_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int
MNT_DETACH = 2


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags,
              os.fsencode(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def umount2(target: str, flags: int) -> None:
    if _umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


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


_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_void_p]
_mount.restype = ctypes.c_int
MS_REMOUNT = 32


def remount(target: str, flags: int) -> None:
    """mount(2) with MS_REMOUNT: set the VFS flags (MS_RDONLY, MS_NOSUID, ...) of the mount
    at `target` and of its superblock. Needs CAP_SYS_ADMIN."""
    if _mount(None, os.fsencode(target), None, MS_REMOUNT | flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


_SYS_MOUNT_SETATTR = 442        # x86_64 and the generic syscall table alike
MOUNT_ATTR_ATIME_MASK = 0x70    # MOUNT_ATTR__ATIME: relatime (0), noatime, strictatime
MOUNT_ATTR_RELATIME, MOUNT_ATTR_NOATIME, MOUNT_ATTR_STRICTATIME = 0x00, 0x10, 0x20
MOUNT_ATTR_NODIRATIME = 0x80


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def set_atime_attrs(detached_fd: int, attrs: int) -> None:
    """mount_setattr(2): give the mount behind `detached_fd` the atime mode in `attrs`
    (MOUNT_ATTR_RELATIME, _NOATIME or _STRICTATIME, maybe | _NODIRATIME). Only ever called
    on a detached copy from open_tree_clone: on any other fd it would change a mount the
    whole system sees."""
    attr = _MountAttr(attr_set=attrs, attr_clr=MOUNT_ATTR_ATIME_MASK | MOUNT_ATTR_NODIRATIME)
    if _syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(detached_fd), ctypes.c_char_p(b""),
                ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr))) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
