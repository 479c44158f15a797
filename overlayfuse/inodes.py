"""The inode table: one Node per object the kernel knows, its lifetime and its number.

A node lives while the kernel holds a lookup of it, a handle on it is open, or a live node
names it as a parent; the table's methods are the only place those counts change. A node's
FUSE node id is also its st_ino, unless `Node.st_ino` says otherwise (only with a
pyfuse3 that can show an st_ino apart from the node id). Where all layers share one
filesystem it is the real inode number of the visible object (of the lower object, for
something copied up during this mount); otherwise the real number tagged with the
filesystem's position in its top bits. A number that is taken already gets a synthetic one.
Every such choice is made here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyfuse3

if TYPE_CHECKING:
    from .layers import Layer

ROOT_INO = pyfuse3.ROOT_INODE
SYNTHETIC_BASE = 1 << 63
FS_TAG_SHIFT = 56


@dataclass(slots=True)
class UpperDirState:
    """What lookups need to know about a directory's upper part beyond a stat of the name."""

    opaque: bool
    oci_whiteouts: set[bytes]       # names hidden by `.wh.NAME` files in the upper dir


@dataclass(frozen=True, slots=True)
class LowerData:
    """Where the data of a metadata-only copy (metacopy=on) is: a regular file in a lower
    layer, which it shows as its own data (and st_blocks)."""

    layer: Layer
    path: bytes                     # from the layer's root
    blocks: int                     # its st_blocks
    linked: bool = False            # the lower file right below is hard-linked (nlink > 1)


@dataclass(eq=False, slots=True)
class Node:
    ino: int                        # the FUSE node id
    parent: Node | None
    name: bytes
    is_dir: bool
    layers: tuple[Layer, ...]       # layers holding the object, top first (one for a non-dir)
    real_inos: tuple[int, ...]      # its real inode number in each of those layers
    identity: tuple = ()            # key of the visible real object in NodeTable.by_identity
    nlookup: int = 0
    nchildren: int = 0              # live nodes naming this one as a parent: keeps it alive
    extra_links: list[tuple[Node, bytes]] | None = None   # other names of a hard-linked file
    upper_state: UpperDirState | None = None
    lower_st: bytes | None = None   # packed stat of a lower non-dir (immutable), if kept
    open_files: int = 0
    orphan_fd: int | None = None    # an fd kept on a removed object the kernel still uses
    copy_up_done: object = None     # a trio.Event while a copy-up is staging
    may_be_cached: bool = False     # a handle without O_DIRECT was opened: the kernel may
                                    # hold its data in the page cache
    st_ino: int = 0                 # the st_ino shown, where it is not the node id
    redirect: bytes | None = None   # its redirect as stored (a dir's, or a metacopy file's)
    lower_paths: dict[Layer, bytes] | None = None  # where a dir is in a lower layer, when
                                    # not at its parent's path there plus its name
    lower_data: LowerData | None = None     # a metadata-only copy's data, elsewhere

    @property
    def top_layer(self) -> Layer:
        return self.layers[0]

    @property
    def data_layer(self) -> Layer:
        """The layer a read of the file reads from."""
        return self.lower_data.layer if self.lower_data is not None else self.layers[0]

    @property
    def in_upper(self) -> bool:
        """Whether the object has an upper part (always the top one, where there is one)."""
        return self.layers[0].upper

    @property
    def unlinked(self) -> bool:
        return self.parent is None and self.ino != ROOT_INO

    def links(self) -> list[tuple[Node, bytes]]:
        if self.parent is None:
            return list(self.extra_links or ())
        return [(self.parent, self.name), *(self.extra_links or ())]


@dataclass
class NodeTable:
    fs_tags: dict[int, int]                         # st_dev -> tag for the inode number
    writable: bool = False                          # lower hard links part on copy-up
    by_ino: dict[int, Node] = field(default_factory=dict)
    by_identity: dict[tuple, Node] = field(default_factory=dict)
    origin_ino: dict[tuple[int, int], int] = field(default_factory=dict)   # copied-up object
    _next_synthetic: int = SYNTHETIC_BASE
    on_drop: object = None                          # callback(node) when a node is released
    separate_st_ino: bool = False                   # st_ino may differ from the node id

    def get(self, ino: int) -> Node:
        node = self.by_ino.get(ino)
        if node is None:
            raise OSError(2, "stale inode", str(ino))  # ENOENT
        return node

    # ---- numbering -------------------------------------------------------------------------

    def identity(self, parent: Node, name: bytes, top: Layer, real_ino: int, is_dir: bool,
                 nlink: int) -> tuple:
        """The key under which the node of the object `top` shows at parent/name is found
        again: the real object, or on a writable mount, each name of a lower hard link."""
        if self.writable and not top.upper and not is_dir and nlink > 1:
            # Lower hard links part on copy-up (as with kernel index=off): one node per name.
            return ("lower-link", parent.ino, name)
        return (top.dev, real_ino)

    @staticmethod
    def numbered_after(layers: tuple[Layer, ...], real_inos: tuple[int, ...], is_dir: bool
                       ) -> tuple[int, int]:
        """(st_dev, real inode number) a new node's number comes from. A merged dir with an
        upper part is numbered after its topmost lower dir, as the kernel does (its origin):
        the number then survives copy-up and remount alike."""
        source = 1 if is_dir and len(layers) > 1 and layers[0].upper else 0
        return layers[source].dev, real_inos[source]

    def new_node(self, parent: Node, name: bytes, is_dir: bool, layers: tuple[Layer, ...],
                 real_inos: tuple[int, ...], identity: tuple, number: tuple[int, int]) -> Node:
        """Make and add the node of a newly met object, numbered after `number` (st_dev,
        real inode number)."""
        node = Node(ino=self.choose_ino(*number), parent=parent, name=name, is_dir=is_dir,
                    layers=layers, real_inos=real_inos, identity=identity)
        if identity[0] == "lower-link":
            # One node per name, all showing the object's number, as the kernel does.
            node.st_ino = self.shared_ino(*number)
        self.add(node)
        return node

    def copied_up(self, node: Node, upper: Layer, upper_ino: int) -> None:
        """`node` now has an upper copy, inode `upper_ino`: it keeps its number (the
        kernel's origin rule), also for a later lookup once forgotten."""
        if node.st_ino:
            # A name of a lower hard link is a file of its own now, shown with its own
            # number, as by the kernel (which keeps the lower one only for nlink 1).
            node.st_ino = self.shared_ino(upper.dev, upper_ino)
        else:
            self.origin_ino[(upper.dev, upper_ino)] = node.ino
        self.set_identity(node, (upper.dev, upper_ino))
        if node.is_dir:
            node.layers = (upper, *node.layers)
            node.real_inos = (upper_ino, *node.real_inos)
        else:
            node.layers = (upper,)
            node.real_inos = (upper_ino,)

    def choose_ino(self, dev: int, real_ino: int) -> int:
        ino = self.origin_ino.get((dev, real_ino))
        if ino is None:
            tag = self.fs_tags.get(dev, 0)
            ino = real_ino | (tag << FS_TAG_SHIFT) if real_ino < (1 << FS_TAG_SHIFT) else 0
        if ino <= ROOT_INO or ino in self.by_ino:
            ino = self.synthetic_ino()
        return ino

    def shared_ino(self, dev: int, real_ino: int) -> int:
        """The st_ino to show for an object whose number several nodes share (the names of
        a lower hard link) or that cannot have it as node id (the root); 0 where the node id
        must be shown instead."""
        if not self.separate_st_ino or real_ino >= (1 << FS_TAG_SHIFT):
            return 0
        return real_ino | (self.fs_tags.get(dev, 0) << FS_TAG_SHIFT)

    def synthetic_ino(self) -> int:
        while self._next_synthetic in self.by_ino:
            self._next_synthetic += 1
        ino = self._next_synthetic
        self._next_synthetic += 1
        return ino

    def add(self, node: Node) -> None:
        self.by_ino[node.ino] = node
        self.by_identity[node.identity] = node
        if node.parent is not None:
            node.parent.nchildren += 1

    def set_identity(self, node: Node, identity: tuple) -> None:
        if self.by_identity.get(node.identity) is node:
            del self.by_identity[node.identity]
        node.identity = identity
        self.by_identity[identity] = node

    def add_link(self, node: Node, parent: Node, name: bytes) -> None:
        if (node.parent is parent and node.name == name) or (
                node.extra_links and (parent, name) in node.extra_links):
            return
        if node.parent is None:
            node.parent, node.name = parent, name
        else:
            if node.extra_links is None:
                node.extra_links = []
            node.extra_links.append((parent, name))
        parent.nchildren += 1

    def remove_link(self, node: Node, parent: Node, name: bytes) -> None:
        """Forget that `parent/name` names `node` (unlink, or replaced by rename)."""
        if node.parent is parent and node.name == name:
            if node.extra_links:
                node.parent, node.name = node.extra_links.pop()
            else:
                node.parent, node.name = None, b""
        elif node.extra_links and (parent, name) in node.extra_links:
            node.extra_links.remove((parent, name))
        else:
            return
        if node.parent is None and self.by_identity.get(node.identity) is node:
            # Gone from the tree: its inode number may be re-used by a new object.
            del self.by_identity[node.identity]
        self._release_child(parent)
        self._maybe_drop(node)

    def move_link(self, node: Node, old: tuple[Node, bytes], new: tuple[Node, bytes]) -> None:
        old_parent, old_name = old
        new_parent, new_name = new
        if node.parent is old_parent and node.name == old_name:
            node.parent, node.name = new_parent, new_name
        elif node.extra_links and old in node.extra_links:
            node.extra_links[node.extra_links.index(old)] = new
        else:
            return
        new_parent.nchildren += 1
        self._release_child(old_parent)

    # ---- lifetime --------------------------------------------------------------------------

    @staticmethod
    def looked_up(node: Node) -> None:
        """The kernel was given `node` (a lookup, a readdirplus entry, a new object)."""
        node.nlookup += 1

    @staticmethod
    def opened(node: Node) -> None:
        node.open_files += 1

    def closed(self, node: Node) -> None:
        node.open_files -= 1
        self._maybe_drop(node)

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup -= count
        self._maybe_drop(node)

    def _release_child(self, parent: Node) -> None:
        parent.nchildren -= 1
        self._maybe_drop(parent)

    def _maybe_drop(self, node: Node) -> None:
        if node.nlookup > 0 or node.nchildren > 0 or node.open_files > 0 or node.ino == ROOT_INO:
            return
        if self.by_ino.get(node.ino) is not node:
            return
        del self.by_ino[node.ino]
        if self.by_identity.get(node.identity) is node:
            del self.by_identity[node.identity]
        if self.on_drop is not None:
            self.on_drop(node)  # type: ignore[operator]
        if node.orphan_fd is not None:
            os.close(node.orphan_fd)
            node.orphan_fd = None
        for parent, _ in node.links():
            self._release_child(parent)
