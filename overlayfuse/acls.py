"""POSIX ACLs for new objects: what a directory's default ACL passes on to an object made in
it, as the kernel's `posix_acl_create` computes it.

New objects are made in the work dir and then moved, so the upper filesystem never applies
the real parent's default ACL itself: the daemon reads it from the upper parent and sets the
result on the staged object. ACLs are the `system.posix_acl_access` / `_default` xattrs, in
the kernel's format: a 4-byte version (2), then (tag u16, perm u16, id u32) entries.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

from .xattrs import optional_attr

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True)
class Inherited:
    """What a new object gets from its parent's default ACL."""
    mode: int                   # permission bits (and the caller's other mode bits)
    access: bytes | None        # its access ACL; None when the mode says it all
    default: bytes | None       # its own default ACL (directories only)


def read_default(path: bytes) -> bytes | None:
    """The default ACL of the directory at `path` (a /proc/self/fd path), or None."""
    return optional_attr(path, DEFAULT)


def inherit(default_acl: bytes, mode: int) -> Inherited:
    """The kernel's `posix_acl_create_masq`: the default ACL's permissions limited by the
    requested `mode`, and the mode limited by them; no umask (the ACL replaces it)."""
    entries = _parse(default_acl)
    perms = stat.S_IMODE(mode) & 0o777
    group_like = None       # the entry the group class bits go to: the mask if there is one
    extended = False
    for index, (tag, perm, _) in enumerate(entries):
        if tag == USER_OBJ:
            perm &= perms >> 6
            perms &= (perm << 6) | ~0o700
        elif tag == OTHER:
            perm &= perms & 7
            perms &= perm | ~0o007
        elif tag == GROUP_OBJ:
            if group_like is None:
                group_like = index
        elif tag == MASK:
            group_like = index
            extended = True
        elif tag in (USER, GROUP):
            extended = True
        entries[index] = (tag, perm, entries[index][2])
    if group_like is None:
        raise OSError(errno.EINVAL, "default ACL without a group entry")
    tag, perm, ident = entries[group_like]
    perm &= (perms >> 3) & 7
    perms &= (perm << 3) | ~0o070
    entries[group_like] = (tag, perm, ident)
    new_mode = (mode & ~0o777) | perms
    return Inherited(new_mode, _serialize(entries) if extended else None,
                     default_acl if stat.S_ISDIR(mode) else None)


def _parse(value: bytes) -> list[tuple[int, int, int]]:
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size \
            or _HEADER.unpack_from(value)[0] != _VERSION:
        raise OSError(errno.EINVAL, "malformed ACL")
    return [_ENTRY.unpack_from(value, offset)
            for offset in range(_HEADER.size, len(value), _ENTRY.size)]


def _serialize(entries: list[tuple[int, int, int]]) -> bytes:
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(*entry) for entry in entries)
