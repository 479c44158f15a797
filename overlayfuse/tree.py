"""The merged tree: name resolution across layers, merged listings, per-layer directory fds.

This is the hot path. Lower layers never change while mounted, so a lookup in a lower layer
is a probe of a cached listing; only the upper layer and the visible object cost a syscall.
Every path is reached one component at a time from a layer root fd, with O_NOFOLLOW, so a
symlink in a layer never leads outside it.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from . import capabilities
from .inodes import ROOT_INO, Node, NodeTable, UpperDirState
from .layers import Layer, Stack
from .listing import Listing, ListingCache, read_listing
from .origin import Origins
from .precedence import (DIR, NONDIR, NOT_SAID, WHITED_OUT, Said, resolve_name, shown,
                         visible_names)
from .syscalls import OwnedFd, open_dir_path
from .whiteout import (OCI_OPAQUE_MARKER, has_opaque_xattr, is_reserved_name, is_whiteout,
                       oci_target)

NAME_MAX = 255


@dataclass(slots=True)
class Found:
    """Where a name resolves: the layers holding it (top first) and the top object's stat."""

    layers: tuple[Layer, ...]
    real_inos: tuple[int, ...]
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class Tree:
    def __init__(self, stack: Stack, max_dir_fds: int = 4096,
                 max_listing_entries: int = 2_000_000) -> None:
        self.stack = stack
        self.upper = stack.upper        # the writable layer; None on a read-only mount
        self.writable = stack.upper is not None
        tags: dict[int, int] = {}
        for layer in stack.layers:
            tags.setdefault(layer.dev, 0 if stack.single_fs else len(tags))
        self.table = NodeTable(fs_tags=tags, writable=self.writable, on_drop=self._on_drop,
                               separate_st_ino=capabilities.ATTR_INO)
        self.origins = Origins(stack)
        self.listings = ListingCache(max_listing_entries)
        self._fds: OrderedDict[tuple[Node, Layer], int] = OrderedDict()
        self._max_fds = max_dir_fds
        self.root = Node(ino=ROOT_INO, parent=None, name=b"", is_dir=True,
                         layers=stack.layers,
                         real_inos=tuple(layer.ino for layer in stack.layers),
                         identity=("root",), nlookup=1,
                         st_ino=self.table.shared_ino(stack.layers[0].dev, stack.layers[0].ino))
        self.table.add(self.root)

    # ---- directory fds -------------------------------------------------------------------

    def dir_fd(self, node: Node, layer: Layer) -> int:
        """An O_PATH fd on `node`'s directory in `layer` (valid until the next dir_fd call
        that has to open something, so never hold one across an await)."""
        if node is self.root:
            return layer.fd
        key = (node, layer)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        if node.parent is None:
            raise OSError(errno.ENOENT, "directory was removed")
        parent_fd = self.dir_fd(node.parent, layer)
        fd = open_dir_path(node.name, parent_fd)
        self._fds[key] = fd
        if len(self._fds) > self._max_fds:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def take_dir_fd(self, node: Node, layer: Layer) -> int:
        """`dir_fd`, but taken out of the cache: the caller owns it and closes it."""
        fd = self.dir_fd(node, layer)
        del self._fds[(node, layer)]
        return fd

    def forget_dir_fd(self, node: Node, layer: Layer) -> None:
        fd = self._fds.pop((node, layer), None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close every fd the tree holds (the stack's own are the stack's)."""
        while self._fds:
            os.close(self._fds.popitem()[1])
        self.origins.close()

    def _on_drop(self, node: Node) -> None:
        if node.is_dir:
            for layer in node.layers:
                self.forget_dir_fd(node, layer)

    def parent_fd(self, node: Node) -> int:
        """An O_PATH fd on the directory holding a non-directory `node` in its top layer."""
        if node.parent is None:
            raise OSError(errno.ENOENT, "file was removed")
        return self.dir_fd(node.parent, node.top_layer)

    # ---- listings ------------------------------------------------------------------------

    def lower_listing(self, node: Node, layer: Layer) -> Listing:
        key = (layer.index, node.real_inos[node.layers.index(layer)])
        listing = self.listings.get(key)
        if listing is None:
            listing = read_listing(self.dir_fd(node, layer), lower=True)
            self.listings.put(key, listing)
        return listing

    def upper_names(self, node: Node) -> Listing | None:
        """The upper part of `node`'s listing, read now for a readdir (which moves the upper
        dir's atime as the mount's atime policy says); None if it has no upper part."""
        if node.in_upper:
            return self.upper_listing(node, touch_atime=self.stack.atime.touches_dirs)
        return None

    def upper_listing(self, node: Node, touch_atime: bool = False) -> Listing:
        listing = read_listing(self.dir_fd(node, node.top_layer), lower=False,
                               touch_atime=touch_atime)
        node.upper_state = UpperDirState(listing.opaque, _oci_whiteouts(listing))
        return listing

    def upper_state(self, node: Node) -> UpperDirState:
        if node.upper_state is None:
            self.upper_listing(node)
        assert node.upper_state is not None
        return node.upper_state

    def _listings(self, node: Node, lower_only: bool = False) -> Iterator[Listing]:
        """The listing of each layer of `node`, top first, read as they are needed."""
        for layer in node.layers:
            if not layer.upper:
                yield self.lower_listing(node, layer)
            elif not lower_only:
                yield self.upper_listing(node)

    def list_names(self, node: Node) -> list[bytes]:
        """The merged listing: upper entries first, then each lower's new names."""
        return list(visible_names(self._listings(node)))

    def is_empty_dir(self, node: Node) -> bool:
        """Whether rmdir may remove `node`. As in the kernel, a name whose topmost entry is
        a lower layer's xattr whiteout counts as an entry (ENOTEMPTY), though not listed."""
        return next(visible_names(self._listings(node), xwhiteouts_count=True), None) is None

    def lower_positive(self, parent: Node, name: bytes) -> bool:
        """Whether a lower layer would show `name` if the upper had nothing there."""
        return shown(self._listings(parent, lower_only=True), name)

    # ---- resolution ----------------------------------------------------------------------

    def resolve(self, parent: Node, name: bytes, upper_names: Listing | None = None
                ) -> Found | None:
        """Resolve `name` in the merged directory `parent`: None if it does not exist.
        `upper_names`, a listing of the parent's upper dir read in this same request, spares
        the stat of a name it does not hold."""
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        if is_reserved_name(name):
            return None         # a marker's own name, in any layer

        def ask(layer: Layer) -> Said:
            if layer.upper:
                return self._ask_upper(parent, layer, name, upper_names)
            return self.lower_listing(parent, layer).says(name)

        resolved = resolve_name(
            parent.layers, ask,
            lambda layer, ino: not self._is_opaque_child(parent, layer, name, ino))
        if resolved is None:
            return None
        is_dir, layers, inos, top_st = resolved
        top = layers[0]
        if top_st is None:
            if not is_dir:
                top_st = self._lower_stat(parent, top, name, inos[0])
            else:
                top_st = os.stat(name, dir_fd=self.dir_fd(parent, top), follow_symlinks=False)
                inos[0] = top_st.st_ino
        if is_dir:
            for layer, ino in zip(layers, inos):
                if not layer.upper and (layer.dev, ino) in self.stack.forbidden:
                    raise OSError(errno.ELOOP, "a layer root is inside a lower layer", name)
        return Found(tuple(layers), tuple(inos), top_st)

    def _ask_upper(self, parent: Node, layer: Layer, name: bytes, upper_names: Listing | None
                   ) -> Said:
        if upper_names is not None and name not in upper_names.entries:
            return WHITED_OUT if name in upper_names.whiteouts else NOT_SAID
        try:
            st = os.stat(name, dir_fd=self.dir_fd(parent, layer), follow_symlinks=False)
        except FileNotFoundError:
            return WHITED_OUT if name in self.upper_state(parent).oci_whiteouts else NOT_SAID
        if is_whiteout(st):
            return WHITED_OUT
        return (DIR if stat.S_ISDIR(st.st_mode) else NONDIR), st.st_ino, st

    def _lower_stat(self, parent: Node, layer: Layer, name: bytes, d_ino: int
                    ) -> os.stat_result:
        """A lower non-directory never changes while mounted (but for its atime): a node
        that holds it keeps its stat."""
        node = self.table.by_identity.get((layer.dev, d_ino))
        if node is not None and node.lower_st is not None:
            return unpack_stat(node.lower_st)
        return os.stat(name, dir_fd=self.dir_fd(parent, layer), follow_symlinks=False)

    def _is_opaque_child(self, parent: Node, layer: Layer, name: bytes, d_ino: int) -> bool:
        """Whether the directory `name` in `layer` (just found) is opaque."""
        if layer.upper:
            parent_fd = self.dir_fd(parent, layer)
            if has_opaque_xattr(parent_fd, name):
                return True
            try:
                os.stat(name + b"/" + OCI_OPAQUE_MARKER, dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                return False
            return True
        listing = self.listings.get((layer.index, d_ino))
        if listing is None:
            with OwnedFd(open_dir_path(name, self.dir_fd(parent, layer))) as fd:
                listing = read_listing(fd, lower=True)
            self.listings.put((layer.index, d_ino), listing)
        return listing.opaque

    def lookup(self, parent: Node, name: bytes, upper_names: Listing | None = None
               ) -> tuple[Node, os.stat_result] | None:
        """Resolve `name` and return its node (made or re-used) and stat. Does not count a
        FUSE lookup: the caller does, once the kernel has been answered."""
        found = self.resolve(parent, name, upper_names)
        if found is None:
            return None
        return self.node_for(parent, name, found), found.st

    def node_for(self, parent: Node, name: bytes, found: Found, made_here: bool = False
                 ) -> Node:
        """The node for `found` at parent/name, made or re-used. `made_here`: the object was
        just created through this mount, so it has no copy-up origin to look for."""
        table = self.table
        top = found.layers[0]
        identity = table.identity(parent, name, top, found.real_inos[0], found.is_dir,
                                  found.st.st_nlink)
        node = table.by_identity.get(identity)
        if node is not None and node.is_dir == found.is_dir:
            if node.is_dir:
                node.layers, node.real_inos = found.layers, found.real_inos
            else:
                table.add_link(node, parent, name)
                self._keep_lower_stat(node, found)
            return node
        number = table.numbered_after(found.layers, found.real_inos, found.is_dir)
        if self.origins.followed and not (made_here or found.is_dir) \
                and top.upper and number not in table.origin_ino:
            # Copied up before this mount: numbered after its lower origin, as the kernel does.
            number = self.origins.lower_inode(self.dir_fd(parent, top), name, found.st) \
                or number
        node = table.new_node(parent, name, found.is_dir, found.layers, found.real_inos,
                              identity, number)
        if not node.is_dir:
            self._keep_lower_stat(node, found)
        return node

    def _keep_lower_stat(self, node: Node, found: Found) -> None:
        if not found.layers[0].upper:
            node.lower_st = pack_stat(found.st)

    # ---- attributes ----------------------------------------------------------------------

    def stat(self, node: Node) -> os.stat_result:
        if node.lower_st is not None:
            return unpack_stat(node.lower_st)
        if node.unlinked:
            if node.orphan_fd is None:
                raise OSError(errno.ENOENT, "file was removed")
            return os.stat(node.orphan_fd)
        if node.is_dir:
            return os.stat(self.dir_fd(node, node.top_layer))
        return os.stat(node.name, dir_fd=self.parent_fd(node), follow_symlinks=False)

    def readlink(self, node: Node) -> bytes:
        return os.readlink(node.name, dir_fd=self.parent_fd(node))

    def xattr_target(self, node: Node) -> tuple[int, bytes | None]:
        """(fd, name) naming `node`'s top object for the xattr helpers (and the other calls
        that take a path); for a removed upper object still in use, the fd kept on it."""
        if node.unlinked and node.orphan_fd is not None and node.in_upper:
            return node.orphan_fd, None
        if node.is_dir:
            return self.dir_fd(node, node.top_layer), None
        return self.parent_fd(node), node.name

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.stack.layers[0].fd)


# A kept stat packed into 104 bytes: a stat_result with its float and int times takes ~600.
_PACKED_STAT = struct.Struct("=IIIIQqqqqqqQ")


def pack_stat(st: os.stat_result) -> bytes:
    return _PACKED_STAT.pack(st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                             st.st_size, st.st_blksize, st.st_blocks, st.st_atime_ns,
                             st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def unpack_stat(packed: bytes) -> os.stat_result:
    (mode, nlink, uid, gid, rdev, size, blksize, blocks, atime, mtime, ctime,
     ino) = _PACKED_STAT.unpack(packed)
    return os.stat_result(
        (mode, ino, 0, nlink, uid, gid, size, atime // 10**9, mtime // 10**9, ctime // 10**9),
        {"st_atime_ns": atime, "st_mtime_ns": mtime, "st_ctime_ns": ctime,
         "st_blksize": blksize, "st_blocks": blocks, "st_rdev": rdev})


def _oci_whiteouts(listing: Listing) -> set[bytes]:
    return {target for marker in listing.oci_markers
            if (target := oci_target(marker)) is not None}
