"""Copy-up origins: which lower object an upper one was copied from, recorded on disk the way
kernel overlayfs records it, so that inode numbers survive a remount and layers keep them when
they move between overlayfuse and the kernel.

The record is the `origin` xattr (trusted.overlay.origin) holding the kernel's `struct ovl_fb`:
version 0, magic 0xfb, total length, flags, the lower file handle's type, the lower
filesystem's UUID, then the handle itself. Reading it back needs open_by_handle_at, so it is
used only where overlayfuse may call that (as root); without it a copied-up object shows its
upper inode number after a remount, as before.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
from collections import Counter

from .layers import TRUSTED_PREFIX, Stack
from .syscalls import (filesystem_uuid, name_to_handle_at, open_by_handle_at, open_readable_dir,
                       proc_path)

HEADER = struct.Struct("<BBBBB16s")     # version, magic, len, flags, type, uuid
VERSION = 0
MAGIC = 0xFB
FLAG_BIG_ENDIAN = 1 << 0
FLAG_ANY_ENDIAN = 1 << 1
FLAG_PATH_UPPER = 1 << 2
FLAGS_CPU_ENDIAN = FLAG_BIG_ENDIAN if sys.byteorder == "big" else 0
TRUSTED_ORIGIN = TRUSTED_PREFIX + b"origin"


def encode(handle_type: int, handle: bytes, uuid: bytes) -> bytes:
    return HEADER.pack(VERSION, MAGIC, HEADER.size + len(handle), FLAGS_CPU_ENDIAN,
                       handle_type, uuid) + handle


def decode(value: bytes) -> tuple[bytes, int, bytes] | None:
    """(uuid, handle type, handle) of a lower origin, or None for anything the kernel would
    not follow either (another version, a foreign byte order, an upper origin)."""
    if len(value) < HEADER.size:
        return None
    version, magic, length, flags, handle_type, uuid = HEADER.unpack_from(value)
    if version != VERSION or magic != MAGIC or length != len(value) or \
            flags & ~(FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER) or \
            flags & FLAG_PATH_UPPER:
        return None
    if not flags & FLAG_ANY_ENDIAN and flags & FLAG_BIG_ENDIAN != FLAGS_CPU_ENDIAN:
        return None
    return uuid, handle_type, value[HEADER.size:]


class Origins:
    """Writes the origin of each copy-up and follows it back to the lower inode number."""

    def __init__(self, stack: Stack) -> None:
        self._uuids: dict[int, bytes] = {}             # st_dev of a lower layer -> its UUID
        self._decode_fds: dict[bytes, int] = {}        # UUID -> a readable lower dir fd
        if stack.upper is None or stack.xattr_prefix != TRUSTED_PREFIX:
            return      # origins live in trusted xattrs: only a writable mount as root
        layer_of: dict[int, int] = {}
        for layer in stack.layers[1:]:
            if layer.dev in layer_of:
                continue
            layer_of[layer.dev] = layer.fd
            try:
                self._uuids[layer.dev] = filesystem_uuid(layer.fd)
            except OSError:
                continue    # no origins for this filesystem; copy-ups go on without
        # Lower filesystems that share a UUID: a handle cannot say which one it came from,
        # so the kernel records no origin for them, nor do we.
        owners = Counter(self._uuids.values())
        self._uuids = {dev: uuid for dev, uuid in self._uuids.items() if owners[uuid] == 1}
        if os.geteuid() == 0:   # open_by_handle_at needs CAP_DAC_READ_SEARCH
            self._decode_fds = {uuid: open_readable_dir(layer_of[dev])
                                for dev, uuid in self._uuids.items()}

    def close(self) -> None:
        while self._decode_fds:
            os.close(self._decode_fds.popitem()[1])

    @property
    def followed(self) -> bool:
        """Whether origins are read back at all on this mount."""
        return bool(self._decode_fds)

    def record(self, lower: tuple[int, bytes | None], lower_dev: int,
               copy: tuple[int, bytes | None]) -> None:
        """Store on the staged `copy` the origin of the `lower` object it was made from.
        A filesystem that cannot encode handles gets no origin, as with the kernel."""
        uuid = self._uuids.get(lower_dev)
        if uuid is None:
            return
        try:
            handle_type, handle = name_to_handle_at(*lower)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EOVERFLOW, errno.ENOSYS):
                return
            raise
        path, follow = proc_path(*copy)
        os.setxattr(path, TRUSTED_ORIGIN, encode(handle_type, handle, uuid),
                    follow_symlinks=follow)

    def lower_inode(self, upper_dir_fd: int, name: bytes, st: os.stat_result
                    ) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the lower object the upper non-directory `name` was copied
        from, where the kernel would number it after that object: the origin still exists,
        has the same type, and is not a hard link (whose links copy-up may have split)."""
        path, follow = proc_path(upper_dir_fd, name)
        try:
            value = os.getxattr(path, TRUSTED_ORIGIN, follow_symlinks=follow)
        except OSError:
            return None
        parsed = decode(value)
        if parsed is None:
            return None
        uuid, handle_type, handle = parsed
        mount_fd = self._decode_fds.get(uuid)
        if mount_fd is None:
            return None
        try:
            fd = open_by_handle_at(mount_fd, handle_type, handle, os.O_PATH)
        except OSError:
            return None         # the lower object is gone (ESTALE) or the handle is bad
        try:
            origin = os.fstat(fd)
        finally:
            os.close(fd)
        if stat.S_IFMT(origin.st_mode) != stat.S_IFMT(st.st_mode) or origin.st_nlink != 1:
            return None
        return origin.st_dev, origin.st_ino
