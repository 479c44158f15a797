"""Extended attributes seen through the mount: private markers hidden, and names in the
private namespaces escaped the way kernel overlayfs does (trusted.overlay.X is stored as
trusted.overlay.overlay.X)."""

from __future__ import annotations

import errno
import os

from .syscalls import proc_path

ESCAPE = b"overlay."
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536


PRIVATE_PREFIXES = (b"trusted.overlay.", b"user.overlay.")


class XattrNames:
    """Both overlay namespaces are private in every mode: user.overlay.opaque is honoured
    as a marker even as root (layers made by unprivileged tools carry it), so it must be
    hidden and never copied up like trusted.overlay.* (docs/behaviour.md)."""

    def __init__(self, private_prefix: bytes) -> None:
        self.prefix = private_prefix            # where our own markers go

    @staticmethod
    def _private(name: bytes) -> bytes | None:
        for prefix in PRIVATE_PREFIXES:
            if name.startswith(prefix):
                return prefix
        return None

    def to_real(self, name: bytes) -> bytes:
        """The name stored in the layer for a name asked for through the mount."""
        prefix = self._private(name)
        if prefix is not None:
            return prefix + ESCAPE + name[len(prefix):]
        return name

    def to_visible(self, real: bytes) -> bytes | None:
        """The name shown through the mount for a stored one; None for private markers."""
        prefix = self._private(real)
        if prefix is not None:
            rest = real[len(prefix):]
            if rest.startswith(ESCAPE):
                return prefix + rest[len(ESCAPE):]
            return None
        return real

    def is_copied(self, real: bytes) -> bool:
        """Whether copy-up carries this stored attribute to the upper copy."""
        return self.to_visible(real) is not None

    @staticmethod
    def check_name(name: bytes) -> None:
        if not name or len(name) > XATTR_NAME_MAX:
            raise OSError(errno.ERANGE if name else errno.EINVAL, "bad xattr name")


def get_attr(fd: int, name: bytes | None, attr: bytes) -> bytes:
    path, follow = proc_path(fd, name)
    return os.getxattr(path, attr, follow_symlinks=follow)


def optional_attr(target: int | bytes, attr: bytes) -> bytes | None:
    """The value of `attr` of the object behind an fd or a path, or None where it has no
    such attribute (or its filesystem no xattrs at all)."""
    try:
        return os.getxattr(target, attr)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def list_attrs(fd: int, name: bytes | None) -> list[bytes]:
    path, follow = proc_path(fd, name)
    return [os.fsencode(a) for a in os.listxattr(path, follow_symlinks=follow)]


def set_attr(fd: int, name: bytes | None, attr: bytes, value: bytes, flags: int = 0) -> None:
    path, follow = proc_path(fd, name)
    os.setxattr(path, attr, value, flags, follow_symlinks=follow)


def remove_attr(fd: int, name: bytes | None, attr: bytes) -> None:
    path, follow = proc_path(fd, name)
    os.removexattr(path, attr, follow_symlinks=follow)
