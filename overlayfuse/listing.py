"""One directory of one layer, read once: its entries, what it whites out, whether it is opaque.

Lower layers never change while mounted, so their listings are cached (bounded by the number
of entries held); a lookup in a lower layer is then a dict probe, not a syscall."""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from dataclasses import dataclass

from . import redirect
from .precedence import DIR, NONDIR, NOT_SAID, WHITED_OUT, Said
from .syscalls import open_noatime, open_readable_dir, xattr_names
from .whiteout import (HOLDS_XWHITEOUTS, OCI_OPAQUE_MARKER, OPAQUE, is_whiteout, is_xwhiteout,
                       oci_target, opaque_marker)


@dataclass(frozen=True, slots=True)
class Listing:
    entries: dict[bytes, int]       # visible name -> d_ino (markers and whiteouts left out)
    dirs: frozenset[bytes]          # the entries that are directories
    whiteouts: frozenset[bytes]     # names this layer hides in the layers below
    opaque: bool
    oci_markers: frozenset[bytes]   # `.wh.*` entries themselves, removed when a name is re-used
    xwhiteouts: frozenset[bytes]    # the whiteouts that are xattr whiteouts
    redirect: bytes | None = None   # a lower dir's own redirect, as stored (unchecked)

    def says(self, name: bytes) -> Said:
        """What this directory says about `name`, in the terms of precedence.py."""
        d_ino = self.entries.get(name)
        if d_ino is not None:
            return (DIR if name in self.dirs else NONDIR), d_ino, None
        return WHITED_OUT if name in self.whiteouts else NOT_SAID


def read_listing(dir_fd: int, lower: bool, touch_atime: bool = False) -> Listing:
    """Read the directory behind an O_PATH fd, without moving its atime unless asked to.
    Only in a `lower` layer are xwhiteouts honoured (the kernel's readdir does not honour
    them in the upper layer)."""
    entries: dict[bytes, int] = {}
    dirs: set[bytes] = set()
    whiteouts: set[bytes] = set()
    oci_markers: set[bytes] = set()
    xwhiteouts: set[bytes] = set()
    xattrs = xattr_names(dir_fd)
    marker = opaque_marker(dir_fd, None, xattrs)
    opaque = marker == OPAQUE
    holds_xwhiteouts = lower and marker == HOLDS_XWHITEOUTS
    if touch_atime:
        fd = open_readable_dir(dir_fd)
    else:
        fd = open_noatime(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd)
    # os.fsencode without its Python call per entry
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    try:
        with os.scandir(fd) as scan:
            for entry in scan:
                name = entry.name.encode(encoding, errors)
                if name.startswith(b".wh."):
                    oci_markers.add(name)
                    if name == OCI_OPAQUE_MARKER:
                        opaque = True
                    else:
                        whiteouts.add(oci_target(name))  # type: ignore[arg-type]
                    continue
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(name)
                elif entry.is_file(follow_symlinks=False):
                    if holds_xwhiteouts and is_xwhiteout(dir_fd, name, entry.stat(
                            follow_symlinks=False)):
                        whiteouts.add(name)
                        xwhiteouts.add(name)
                        continue
                elif not entry.is_symlink() and is_whiteout(entry.stat(follow_symlinks=False)):
                    whiteouts.add(name)
                    continue
                entries[name] = entry.inode()
    finally:
        os.close(fd)
    # A `.wh.NAME` beside a real NAME in the same layer: the real entry wins.
    whiteouts.difference_update(entries)
    return Listing(entries, frozenset(dirs), frozenset(whiteouts), opaque, frozenset(oci_markers),
                   frozenset(xwhiteouts),
                   redirect.read_unchecked(dir_fd, None, xattrs) if lower else None)


class ListingCache:
    """LRU of lower-layer listings keyed by (layer index, directory inode)."""

    def __init__(self, max_entries: int = 2_000_000) -> None:
        self._max_entries = max_entries
        self._held = 0
        self._cache: OrderedDict[tuple[int, int], Listing] = OrderedDict()

    def get(self, key: tuple[int, int]) -> Listing | None:
        listing = self._cache.get(key)
        if listing is not None:
            self._cache.move_to_end(key)
        return listing

    def put(self, key: tuple[int, int], listing: Listing) -> None:
        self._cache[key] = listing
        self._held += len(listing.entries) + 1
        while self._held > self._max_entries and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._held -= len(old.entries) + 1
