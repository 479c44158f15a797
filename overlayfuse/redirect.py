"""Directory redirects in kernel overlayfs's on-disk format (`overlay.redirect`).

A directory that was renamed while it had a lower part keeps that part where it was, and its
upper dir records where to find it: a relative redirect (one name: the lower dir is in the same
parent, under that name) or an absolute one (`/a/b`: a path from the root of each lower layer).
A lower layer can carry redirects too, when it was once an upper layer.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection, Iterable

from .syscalls import proc_path

REDIRECT_XATTRS = (b"trusted.overlay.redirect", b"user.overlay.redirect")
# The kernel's redirect_max module parameter (its default): a rename that would need a longer
# redirect is refused with EXDEV, so that `mv` copies instead.
REDIRECT_MAX = 256


def check(value: bytes) -> bytes:
    """`value` if it is a redirect the kernel accepts: one name, or `/` and non-empty names
    separated by single slashes; otherwise EINVAL, as a lookup through it gets there."""
    if value.startswith(b"/"):
        valid = all(value[1:].split(b"/"))
    else:
        valid = bool(value) and b"/" not in value
    if not valid or b"\0" in value:
        raise OSError(errno.EINVAL, "invalid redirect", value)
    return value


def read(fd: int, name: bytes | None = None, present: Collection[bytes] | None = None
         ) -> bytes | None:
    """The redirect of the dir behind `fd` (or `name` in it), checked; None if it has none.
    `present`: the names of the xattrs it has, if known."""
    value = read_unchecked(fd, name, present)
    return None if value is None else check(value)


def read_unchecked(fd: int, name: bytes | None = None,
                   present: Collection[bytes] | None = None) -> bytes | None:
    """`read` without the check, for a listing that keeps it until a lookup goes through it
    (the kernel refuses a bad redirect only where it would follow it)."""
    path, follow = proc_path(fd, name)
    for attr in REDIRECT_XATTRS:
        if present is not None and attr not in present:
            continue
        try:
            return os.getxattr(path, attr, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
    return None


def write(target: tuple[int, bytes | None], xattr_prefix: bytes, value: bytes) -> None:
    """Store `value` as the redirect of the object behind `target` (fd, name in it)."""
    path, follow = proc_path(*target)
    try:
        os.setxattr(path, xattr_prefix + b"redirect", value, follow_symlinks=follow)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:     # as the kernel: the rename falls back to a copy
            raise OSError(errno.EXDEV, "cannot store a redirect") from None
        raise


def absolute(chain: Iterable[tuple[bytes, bytes | None]]) -> bytes:
    """The absolute redirect of a dir, from (name, redirect) of the dir and each ancestor up
    to (not including) the root: an ancestor's relative redirect stands for its name, and an
    absolute one ends the path. EXDEV when longer than REDIRECT_MAX, as in the kernel."""
    parts: list[bytes] = []
    for name, redirect in chain:
        if redirect is not None and redirect.startswith(b"/"):
            parts.append(redirect[1:])
            break
        parts.append(redirect if redirect is not None else name)
    value = b"/" + b"/".join(reversed(parts))
    if len(value) > REDIRECT_MAX:
        raise OSError(errno.EXDEV, "redirect would be too long")
    return value


def relative(name: bytes, redirect: bytes | None) -> bytes:
    """The redirect of a dir renamed within its parent: the one it has, or its name (a
    name is never longer than REDIRECT_MAX)."""
    return redirect if redirect is not None else name
