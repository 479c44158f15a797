"""Extended attributes seen through the mount: our private markers hidden, and names in the
private namespace escaped the way kernel overlayfs does (trusted.overlay.X is stored as
trusted.overlay.overlay.X)."""

from __future__ import annotations

import errno
import os

from .whiteout import proc_path

ESCAPE = b"overlay."
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536


class XattrNames:
    def __init__(self, private_prefix: bytes) -> None:
        self.prefix = private_prefix            # trusted.overlay. or user.overlay.

    def to_real(self, name: bytes) -> bytes:
        """The name stored in the layer for a name asked for through the mount."""
        if name.startswith(self.prefix):
            return self.prefix + ESCAPE + name[len(self.prefix):]
        return name

    def to_visible(self, real: bytes) -> bytes | None:
        """The name shown through the mount for a stored one; None for our private markers."""
        if real.startswith(self.prefix):
            rest = real[len(self.prefix):]
            if rest.startswith(ESCAPE):
                return self.prefix + rest[len(ESCAPE):]
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


def list_attrs(fd: int, name: bytes | None) -> list[bytes]:
    path, follow = proc_path(fd, name)
    return [os.fsencode(a) for a in os.listxattr(path, follow_symlinks=follow)]


def set_attr(fd: int, name: bytes | None, attr: bytes, value: bytes, flags: int = 0) -> None:
    path, follow = proc_path(fd, name)
    os.setxattr(path, attr, value, flags, follow_symlinks=follow)


def remove_attr(fd: int, name: bytes | None, attr: bytes) -> None:
    path, follow = proc_path(fd, name)
    os.removexattr(path, attr, follow_symlinks=follow)
