"""On-disk markers: whiteouts and opaque directories, in the kernel's and the OCI forms."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection

from .syscalls import open_path, proc_path

OCI_WHITEOUT_PREFIX = b".wh."
OCI_OPAQUE_MARKER = b".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")
# Kernel >= 6.7 "xwhiteouts": in a lower dir marked opaque=x (not opaque, but holding such
# whiteouts), an empty regular file with this xattr is a whiteout. Overlays nest that way: a
# chardev whiteout cannot be stored inside another overlay's layer.
XWHITEOUT_XATTRS = (b"trusted.overlay.whiteout", b"user.overlay.whiteout")
OPAQUE = b"y"
HOLDS_XWHITEOUTS = b"x"
WHITEOUT_MODE = stat.S_IFCHR  # chardev 0/0, mode 0000, as kernel overlayfs makes it


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def oci_target(name: bytes) -> bytes | None:
    """The name an OCI `.wh.NAME` entry hides, or None if `name` is not such an entry."""
    if name.startswith(OCI_WHITEOUT_PREFIX) and name != OCI_OPAQUE_MARKER:
        return name[len(OCI_WHITEOUT_PREFIX):]
    return None


def is_reserved_name(name: bytes) -> bool:
    """Names that would be read back as markers: they cannot be created through the mount."""
    return name.startswith(OCI_WHITEOUT_PREFIX)


def opaque_marker(fd: int, name: bytes | None = None,
                  present: Collection[bytes] | None = None) -> bytes | None:
    """A dir's opaque xattr: OPAQUE, HOLDS_XWHITEOUTS, or None (or another value, which
    means neither). `present`: the names of the xattrs it has, if known."""
    path, follow = proc_path(fd, name)
    marker = None
    for attr in OPAQUE_XATTRS:
        if present is not None and attr not in present:
            continue
        try:
            value = os.getxattr(path, attr, follow_symlinks=follow)
        except OSError:
            continue
        if value == OPAQUE:
            return value
        marker = marker or value
    return marker


def has_opaque_xattr(fd: int, name: bytes | None = None,
                     present: Collection[bytes] | None = None) -> bool:
    return opaque_marker(fd, name, present) == OPAQUE


def is_xwhiteout(dir_fd: int, name: bytes, st: os.stat_result) -> bool:
    """Whether a file in a dir that holds xwhiteouts is one."""
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    path, follow = proc_path(dir_fd, name)
    for attr in XWHITEOUT_XATTRS:
        try:
            os.getxattr(path, attr, follow_symlinks=follow)
        except OSError:
            continue
        return True
    return False


def make_whiteout(dir_fd: int, name: bytes) -> None:
    os.mknod(name, WHITEOUT_MODE, os.makedev(0, 0), dir_fd=dir_fd)


class Whiteouts:
    """Whiteouts as links of one whiteout inode, as the kernel has made them since 5.8: on
    the ext4 measured a link cost a twentieth of the CPU of a new inode (bench/notes.md).
    The inode shared is the first whiteout made, held by an O_PATH fd; another is made when
    it has all the links its filesystem allows or has lost all its names. Where links are
    refused, each whiteout is an inode of its own (the kernel also stops sharing then)."""

    def __init__(self) -> None:
        self._shared: int | None = None     # O_PATH fd on the whiteout the next is linked to
        self._sharing = True

    def make(self, dir_fd: int, name: bytes) -> None:
        if self._shared is not None:
            try:
                os.link(proc_path(self._shared)[0], name, dst_dir_fd=dir_fd)
                return
            except FileExistsError:
                raise
            except OSError as e:
                # EMLINK: it is full; ENOENT: it has no name left (or the dir went away).
                self._sharing = e.errno in (errno.EMLINK, errno.ENOENT)
                self.close()
        make_whiteout(dir_fd, name)
        if self._sharing:
            try:
                self._shared = open_path(name, dir_fd)
            except OSError:
                self._sharing = False       # the whiteout is made: that is what counts

    def close(self) -> None:
        if self._shared is not None:
            os.close(self._shared)
            self._shared = None


def set_opaque(fd: int, name: bytes | None, xattr_prefix: bytes) -> None:
    path, follow = proc_path(fd, name)
    os.setxattr(path, xattr_prefix + b"opaque", b"y", follow_symlinks=follow)
