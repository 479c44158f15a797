"""On-disk markers: whiteouts and opaque directories, in the kernel's and the OCI forms."""

from __future__ import annotations

import os
import stat
from collections.abc import Collection

from .syscalls import proc_path

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


def set_opaque(fd: int, name: bytes | None, xattr_prefix: bytes) -> None:
    path, follow = proc_path(fd, name)
    os.setxattr(path, xattr_prefix + b"opaque", b"y", follow_symlinks=follow)
