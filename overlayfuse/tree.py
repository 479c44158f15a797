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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from . import capabilities, metacopy, redirect
from .inodes import ROOT_INO, LowerData, Node, NodeTable, UpperDirState
from .layers import Layer, Stack
from .listing import Listing, ListingCache, read_listing
from .origin import Origins
from .precedence import (DIR, NONDIR, NOT_SAID, NOTHING, WHITED_OUT, WHITEOUT, Said,
                         resolve_name, shown, topmost, visible_names)
from .syscalls import OwnedFd, open_dir_path, open_dir_walk, open_noatime, xattr_names
from .whiteout import (OCI_OPAQUE_MARKER, has_opaque_xattr, is_reserved_name, is_whiteout,
                       oci_target)

NAME_MAX = 255


@dataclass(slots=True)
class Found:
    """Where a name resolves: the layers holding it (top first) and the top object's stat."""

    layers: tuple[Layer, ...]
    real_inos: tuple[int, ...]
    st: os.stat_result
    lower_paths: dict[Layer, bytes] | None = None   # see Node.lower_paths
    redirect: bytes | None = None                   # the upper object's own redirect
    lower_data: LowerData | None = None             # a metadata-only copy's data

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
        self.lower_layers = tuple(layer for layer in stack.layers if not layer.upper)
        # Redirects are read in every mode, as by the kernel; with nofollow, a lookup that
        # would go where one points is refused (EPERM) rather than followed.
        self.read_redirects = len(stack.layers) > 1
        self.follow_redirects = stack.redirect_dir != "nofollow"
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
        pinned = node.lower_paths.get(layer) if node.lower_paths else None
        if pinned is not None:
            fd = open_dir_walk(pinned, layer.fd)
        elif node.parent is None:
            raise OSError(errno.ENOENT, "directory was removed")
        else:
            fd = open_dir_path(node.name, self.dir_fd(node.parent, layer))
        self._fds[key] = fd
        if len(self._fds) > self._max_fds:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def lower_path(self, node: Node, layer: Layer) -> bytes:
        """Where `node`'s dir is in the lower `layer`, from the layer's root ("" for it)."""
        parts: list[bytes] = []
        while node.parent is not None:
            pinned = node.lower_paths.get(layer) if node.lower_paths else None
            if pinned is not None:
                parts.append(pinned)
                break
            parts.append(node.name)
            node = node.parent
        return b"/".join(reversed(parts))

    def pin_lower_paths(self, node: Node) -> None:
        """Keep `node`'s lower dirs where they are, before it moves away from them."""
        node.lower_paths = {layer: self.lower_path(node, layer) for layer in node.layers
                            if not layer.upper}

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

    def readdir_listings(self, node: Node) -> list[Listing]:
        """The listing of each layer of `node`, top first, for a readdir: the upper one read
        now (which moves the upper dir's atime as the mount's atime policy says)."""
        return [self.upper_listing(node, touch_atime=self.stack.atime.touches_dirs)
                if layer.upper else self.lower_listing(node, layer) for layer in node.layers]

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

    def resolve(self, parent: Node, name: bytes, listings: Sequence[Listing] | None = None
                ) -> Found | None:
        """Resolve `name` in the merged directory `parent`: None if it does not exist.
        `listings`, the parent's (`readdir_listings`) read in this same request, spare the
        stat of a name its upper dir does not hold."""
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        if is_reserved_name(name):
            return None         # a marker's own name, in any layer
        upper_names = listings[0] if listings is not None and parent.in_upper else None
        if listings is not None or not parent.in_upper:
            # The topmost word, asked of the listings alone, settles most names without a
            # walk: no entry or a whiteout (no such name), or a lower non-dir.
            position, (said, ino, _) = topmost(
                self._listings(parent) if listings is None else listings, name)
            if said == NOTHING or said == WHITEOUT:
                return None
            layer = parent.layers[position]
            if said == NONDIR and not layer.upper:
                st = self._lower_stat(parent, layer, name, ino)
                if not (self.read_redirects and metacopy.may_be_marked(st, self.stack.metacopy)):
                    return Found((layer,), (ino,), st)

        walk = _Walk(self, parent, name, upper_names)
        resolved = resolve_name(parent.layers, walk.ask, walk.continues_below, walk.collected)
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
        if not is_dir:
            if self.read_redirects and metacopy.may_be_marked(top_st, self.stack.metacopy):
                return self._maybe_metacopy(walk, top, inos[0], top_st)
            return Found((top,), (inos[0],), top_st)
        for layer, ino in zip(layers, inos):
            if not layer.upper and (layer.dev, ino) in self.stack.forbidden:
                raise OSError(errno.ELOOP, "a layer root is inside a lower layer", name)
        return Found(tuple(layers), tuple(inos), top_st, walk.lower_paths(layers),
                     walk.redirect)

    def _maybe_metacopy(self, walk: _Walk, layer: Layer, ino: int, st: os.stat_result
                        ) -> Found:
        """The file found in `layer`, which may be a metadata-only copy: then with where its
        data is, the data's st_blocks, and (in the upper layer) its redirect."""
        fd = self.dir_fd(walk.parent, layer)
        present = xattr_names(fd, walk.name)
        if not metacopy.is_marked(present):
            return Found((layer,), (ino,), st)
        if not self.stack.metacopy:
            # As the kernel: without metacopy=on its data is not looked for.
            raise OSError(errno.EPERM, "refusing to follow a metacopy file (metacopy=off)",
                          walk.name)
        value = redirect.read(fd, walk.name, present)
        data = self._find_data(walk, layer, value)
        return Found((layer,), (ino,), with_blocks(st, data.blocks),
                     redirect=value if layer.upper else None, lower_data=data)

    def _find_data(self, walk: _Walk, layer: Layer, value: bytes | None) -> LowerData:
        """Where the data of the metadata-only copy found in `layer` is: the next file
        below it under the same name (or where its redirect `value` points), past other
        metadata-only copies (the kernel's lookup of a metacopy file's lower data)."""
        parent = walk.parent
        layers: Sequence[Layer] = parent.layers[parent.layers.index(layer) + 1:]
        linked = None
        while True:
            if value is not None:
                layers = walk.follow(value, layer) or layers
            said = NOTHING
            for layer in layers:
                want, base = walk.want or walk.name, walk.base or parent
                said = walk.ask(layer)[0]
                if said != NOTHING:
                    break
            if said != NONDIR:
                raise OSError(errno.EIO, "metacopy file without lower data", walk.name)
            path = want[1:] if want.startswith(b"/") else _join(self.lower_path(base, layer),
                                                                 want)
            with self.at_path(layer, path) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EIO, "metacopy file's lower data is not a file",
                                  walk.name)
                if linked is None:
                    linked = st.st_nlink > 1
                present = xattr_names(fd, name) if metacopy.may_be_marked(st, True) \
                    else frozenset()
                if not metacopy.is_marked(present):
                    return LowerData(layer, path, st.st_blocks, linked)
                value = redirect.read(fd, name, present)
            layers = layers[layers.index(layer) + 1:]

    @staticmethod
    @contextmanager
    def at_path(layer: Layer, path: bytes) -> Iterator[tuple[int, bytes]]:
        """(dir fd, name) of `path` in `layer` (from its root), its dirs walked without
        following symlinks; the fd is valid inside the block."""
        head, _, name = path.rpartition(b"/")
        if not head:
            yield layer.fd, name
            return
        with OwnedFd(open_dir_walk(head, layer.fd)) as fd:
            yield fd, name

    def open_lower_data(self, data: LowerData, flags: int) -> int:
        with self.at_path(data.layer, data.path) as (fd, name):
            return open_noatime(name, flags | os.O_NOFOLLOW, fd)

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

    def _is_opaque_child(self, layer: Layer, d_ino: int, base: Node, rel: bytes,
                         xattrs: frozenset[bytes] | None = None) -> bool:
        """Whether the dir just found in `layer` at `rel` below `base`'s dir is opaque.
        `xattrs`: the names of an upper dir's xattrs, where already listed."""
        if layer.upper:
            parent_fd = self.dir_fd(base, layer)
            if has_opaque_xattr(parent_fd, rel, xattrs):
                return True
            try:
                os.stat(rel + b"/" + OCI_OPAQUE_MARKER, dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                return False
            return True
        return self.listing_below(layer, d_ino, base, rel).opaque

    def listing_below(self, layer: Layer, d_ino: int, base: Node, rel: bytes) -> Listing:
        """The listing of the lower dir `rel` below `base`'s dir in `layer`."""
        listing = self.listings.get((layer.index, d_ino))
        if listing is None:
            with OwnedFd(open_dir_walk(rel, self.dir_fd(base, layer))) as fd:
                listing = read_listing(fd, lower=True)
            self.listings.put((layer.index, d_ino), listing)
        return listing

    def lower_redirect(self, layer: Layer, d_ino: int, base: Node, rel: bytes) -> bytes | None:
        """The redirect of a lower dir, kept in its cached listing (its entries are wanted
        next anyway: a lookup goes on below it)."""
        value = self.listing_below(layer, d_ino, base, rel).redirect
        return None if value is None else redirect.check(value)

    def lookup(self, parent: Node, name: bytes, listings: Sequence[Listing] | None = None
               ) -> tuple[Node, os.stat_result] | None:
        """Resolve `name` and return its node (made or re-used) and stat. Does not count a
        FUSE lookup: the caller does, once the kernel has been answered."""
        found = self.resolve(parent, name, listings)
        if found is None:
            return None
        return self.node_for(parent, name, found), found.st

    def node_for(self, parent: Node, name: bytes, found: Found, made_here: bool = False
                 ) -> Node:
        """The node for `found` at parent/name, made or re-used. `made_here`: the object was
        just created through this mount, so it has no copy-up origin to look for."""
        table = self.table
        top = found.layers[0]
        is_dir = found.is_dir
        identity = table.identity(parent, name, top, found.real_inos[0], is_dir,
                                  found.st.st_nlink)
        node = table.by_identity.get(identity)
        if node is not None and node.is_dir == is_dir:
            if is_dir:
                if node.lower_paths != found.lower_paths:
                    for layer in node.layers:
                        self.forget_dir_fd(node, layer)
                node.layers, node.real_inos = found.layers, found.real_inos
                node.lower_paths, node.redirect = found.lower_paths, found.redirect
            else:
                table.add_link(node, parent, name)
                self._keep_file_state(node, found)
            return node
        number = table.numbered_after(found.layers, found.real_inos, is_dir)
        if self.origins.followed and not (made_here or is_dir) \
                and top.upper and number not in table.origin_ino:
            # Copied up before this mount: numbered after its lower origin, as the kernel does.
            number = self.origins.lower_inode(self.dir_fd(parent, top), name, found.st) \
                or number
        node = table.new_node(parent, name, is_dir, found.layers, found.real_inos,
                              identity, number)
        if is_dir:
            node.lower_paths, node.redirect = found.lower_paths, found.redirect
        else:
            self._keep_file_state(node, found)
        return node

    @staticmethod
    def _keep_file_state(node: Node, found: Found) -> None:
        node.redirect, node.lower_data = found.redirect, found.lower_data
        if not found.layers[0].upper:
            node.lower_st = pack_stat(found.st)

    # ---- attributes ----------------------------------------------------------------------

    def stat(self, node: Node) -> os.stat_result:
        if node.lower_st is not None:
            return unpack_stat(node.lower_st)
        if node.unlinked:
            if node.orphan_fd is None:
                raise OSError(errno.ENOENT, "file was removed")
            st = os.stat(node.orphan_fd)
        elif node.is_dir:
            return os.stat(self.dir_fd(node, node.top_layer))
        else:
            st = os.stat(node.name, dir_fd=self.parent_fd(node), follow_symlinks=False)
        return st if node.lower_data is None else with_blocks(st, node.lower_data.blocks)

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


class _Walk:
    """One lookup on its way down the layers (the kernel's ovl_lookup_data): what the lower
    layers are asked for (the name, or where a redirect sends the lookup: a name in the same
    parent, or a path from the root of each layer below the one holding the redirect), and
    where each dir collected was found (below which dir, at which relative path). Only what
    a lookup changes is set on the instance: most lookups meet no dir and no redirect."""

    want: bytes | None = None                   # None: the name itself
    base: Node | None = None                    # None: the parent
    stop_below: Layer | None = None             # an opaque dir on the way: nothing below
    redirect: bytes | None = None               # the upper dir's own
    redirected = False
    upper_xattrs: frozenset[bytes] | None = None    # the upper dir's, once listed

    def __init__(self, tree: Tree, parent: Node, name: bytes, upper_names: Listing | None
                 ) -> None:
        self.tree = tree
        self.parent = parent
        self.name = name
        self.upper_names = upper_names
        self.places: dict[Layer, tuple[Node, bytes]] = {}

    def ask(self, layer: Layer) -> Said:
        if layer.upper:
            said = self.tree._ask_upper(self.parent, layer, self.name, self.upper_names)
            if said[0] == DIR:
                self.places[layer] = (self.parent, self.name)
            return said
        want = self.want
        if want is None:        # most lookups: the name itself, in the parent
            base, rel, stop = self.parent, self.name, False
            said = self.tree.lower_listing(base, layer).says(rel)
        elif want.startswith(b"/"):
            base = self.base or self.parent
            said, rel, stop = self._walk_path(layer, want)
        else:
            base, rel, stop = self.base or self.parent, want, False
            said = self.tree.lower_listing(base, layer).says(want)
        if said[0] == DIR:
            if self.redirected and not self.tree.follow_redirects:
                raise OSError(errno.EPERM, "not following a redirect (redirect_dir=nofollow)",
                              self.name)
            if stop:
                self.stop_below = layer
            self.places[layer] = (base, rel)
        return said

    def _walk_path(self, layer: Layer, want: bytes) -> tuple[Said, bytes, bool]:
        """What `layer` says about the path `want`, walked from its root one dir at a time;
        where (from the root); and whether an opaque dir on the way ends the merge there. A
        redirect on the way changes what the layers below are asked for, found or not."""
        tree = self.tree
        parts = want[1:].split(b"/")
        listing = tree.lower_listing(tree.root, layer)
        stop = False
        for depth, part in enumerate(parts):
            said = listing.says(part)
            if said[0] in (NOTHING, WHITEOUT):
                return said, b"", False
            rel = b"/".join(parts[:depth + 1])
            if depth == len(parts) - 1:
                return said, rel, stop
            if said[0] != DIR:
                return WHITED_OUT, b"", False   # a non-dir on the way ends the lookup
            listing = tree.listing_below(layer, said[1], tree.root, rel)
            if listing.opaque:
                stop = True
            elif tree.read_redirects:
                found = tree.lower_redirect(layer, said[1], tree.root, rel)
                if found is not None:
                    self.redirected = True
                    rest = parts[depth + 1:]
                    wanted = self.want[1:].split(b"/")     # type: ignore[index]
                    head = wanted[:len(wanted) - len(rest) - 1]
                    self.want = b"/".join([found, *rest]) if found.startswith(b"/") \
                        else b"/" + b"/".join([*head, found, *rest])
        return NOT_SAID, b"", False

    def continues_below(self, layer: Layer, ino: int) -> bool:
        if layer is self.stop_below:
            return False
        base, rel = self.places[layer]
        return not self.tree._is_opaque_child(layer, ino, base, rel,
                                              self.upper_xattrs if layer.upper else None)

    def collected(self, layer: Layer, ino: int) -> tuple[Layer, ...] | None:
        """A dir was collected in `layer`: its redirect, if any, says where the layers below
        are asked (none is read in the last layer, as by the kernel). Returns the layers to
        go on with, where an absolute redirect sends the lookup to their roots."""
        tree = self.tree
        if not tree.read_redirects:
            return None
        base, rel = self.places[layer]
        if layer.upper:
            # One listxattr tells both whether it has a redirect and whether it is opaque.
            fd = tree.dir_fd(base, layer)
            self.upper_xattrs = xattr_names(fd, rel)
            found = self.redirect = redirect.read(fd, rel, self.upper_xattrs)
        elif layer is tree.lower_layers[-1]:
            return None
        else:
            found = tree.lower_redirect(layer, ino, base, rel)
        if found is None:
            return None
        return self.follow(found, layer)

    def follow(self, found: bytes, layer: Layer) -> tuple[Layer, ...] | None:
        """Go on below `layer` where the redirect `found` of the object found there points.
        Returns the layers to go on with, where an absolute redirect sends the lookup to
        their roots."""
        tree = self.tree
        self.redirected = True
        want = self.want or self.name
        if found.startswith(b"/"):
            self.want = found
            if self.base is None:
                self.base = tree.root
                lowers = tree.lower_layers
                return lowers if layer.upper else lowers[lowers.index(layer) + 1:]
        elif want.startswith(b"/"):
            self.want = want.rpartition(b"/")[0] + b"/" + found
        else:
            self.want = found
        return None

    def lower_paths(self, layers: list[Layer]) -> dict[Layer, bytes] | None:
        """The paths of the lower dirs found away from the parent's path plus the name."""
        paths = {layer: _join(self.tree.lower_path(base, layer), rel)
                 for layer in layers if not layer.upper
                 for base, rel in (self.places[layer],)
                 if not (base is self.parent and rel == self.name)}
        return paths or None


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


# A kept stat packed into 104 bytes: a stat_result with its float and int times takes ~600.
_PACKED_STAT = struct.Struct("=IIIIQqqqqqqQ")


def pack_stat(st: os.stat_result) -> bytes:
    return _PACKED_STAT.pack(st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                             st.st_size, st.st_blksize, st.st_blocks, st.st_atime_ns,
                             st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def with_blocks(st: os.stat_result, blocks: int) -> os.stat_result:
    """`st` showing `blocks` as its st_blocks (a metadata-only copy shows its data's)."""
    return os.stat_result(tuple(st[:10]), {
        "st_atime_ns": st.st_atime_ns, "st_mtime_ns": st.st_mtime_ns,
        "st_ctime_ns": st.st_ctime_ns, "st_blksize": st.st_blksize, "st_blocks": blocks,
        "st_rdev": st.st_rdev})


def unpack_stat(packed: bytes) -> os.stat_result:
    (mode, nlink, uid, gid, rdev, size, blksize, blocks, atime, mtime, ctime,
     ino) = _PACKED_STAT.unpack(packed)
    # Every field in order (the float times None: stat_result fills them from the integer
    # ones), which builds it in half the time of the named fields given as a dict.
    return os.stat_result(
        (mode, ino, 0, nlink, uid, gid, size, atime // 10**9, mtime // 10**9, ctime // 10**9,
         None, None, None, atime, mtime, ctime, blksize, blocks, rdev))


def _oci_whiteouts(listing: Listing) -> set[bytes]:
    return {target for marker in listing.oci_markers
            if (target := oci_target(marker)) is not None}
