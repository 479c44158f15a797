"""Directory listings as the kernel sees them: one snapshot per version of a directory.

With FOPEN_CACHE_DIR the kernel keeps one listing cache per directory inode (fs/fuse/readdir.c)
and fills it from any handle's READDIR reply whose entries start where the cache ends (the
offset of its last entry). Handles that each listed their own snapshot therefore mixed two
listings in one cache and showed a name twice. So every handle that starts reading (offset 0)
while a directory's version is current shares that version's snapshot, and a version's
offsets carry a tag of their own: a handle of another version never continues the cache
(its offsets never meet the cache's), nor reads on from it after its own first entries.
The kernel still checks its cache against the directory's change counter at offset 0, and
the FUSE edge drops the cached pages when a version ends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from .inodes import Node, NodeTable

INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1
TAGS = 1 << 30      # offsets stay below 2**62: a positive loff_t
ENDED_NAMES_KEPT = 1_000_000    # names held in ended versions a reader may still go on with


class Snapshot:
    """One version of a directory's listing: `.`, `..`, then the merged names."""

    __slots__ = ("tag", "layers", "names")

    def __init__(self, tag: int, layers: tuple[int, ...], names: list[bytes]) -> None:
        self.tag = tag
        self.layers = layers        # the node's layers when read: a copy-up is a new version
        self.names = names

    def offset_after(self, index: int) -> int:
        return self.tag << INDEX_BITS | (index + 1)

    @staticmethod
    def index_at(offset: int) -> int:
        return offset & INDEX_MASK


class DirHandle:
    __slots__ = ("node", "snapshot")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.snapshot: Snapshot | None = None   # set by the first readdir, and at each rewind


class DirVersions:
    """The current snapshot of every directory listed since its last change, and which
    directories the kernel may hold a cached listing of."""

    def __init__(self, table: NodeTable, keep_ended: bool = False) -> None:
        self._current: dict[Node, Snapshot] = {}
        self._kernel_cached: set[Node] = set()
        self._next_tag = 1
        # Without dir handles (no OPENDIR), a reader's offset names the version it reads:
        # `keep_ended` keeps ended versions for readers that go on, the oldest dropped first.
        self._keep_ended = keep_ended
        self._ended: OrderedDict[tuple[Node, int], Snapshot] = OrderedDict()
        self._ended_tags: dict[Node, set[int]] = {}
        self._ended_names = 0
        # A dropped node's snapshot goes with it (nodes are dropped also without a FORGET,
        # when their last child goes).
        drop = table.on_drop

        def on_drop(node: Node) -> None:
            if drop is not None:
                drop(node)  # type: ignore[operator]
            self._current.pop(node, None)
            self._kernel_cached.discard(node)
            for tag in self._ended_tags.pop(node, ()):
                self._ended_names -= len(self._ended.pop((node, tag)).names)

        table.on_drop = on_drop

    def current(self, node: Node, list_names: Callable[[Node], list[bytes]]) -> Snapshot:
        snapshot = self._current.get(node)
        if snapshot is None or snapshot.layers != node.layers:
            snapshot = Snapshot(self._next_tag, node.layers, [b".", b"..", *list_names(node)])
            self._next_tag = self._next_tag % (TAGS - 1) + 1
            self._current[node] = snapshot
        return snapshot

    def at(self, node: Node, offset: int, list_names: Callable[[Node], list[bytes]]
           ) -> Snapshot:
        """The snapshot a reader without a handle reads at `offset`: the current one from 0,
        else the version the offset's tag names, or the current one if that was dropped."""
        current = self.current(node, list_names)
        tag = offset >> INDEX_BITS
        if offset == 0 or tag == current.tag:
            return current
        return self._ended.get((node, tag), current)

    def may_cache(self, node: Node) -> None:
        """The kernel may now cache the listing (a handle opened with FOPEN_CACHE_DIR, or a
        READDIR answered without handles)."""
        self._kernel_cached.add(node)

    def changed(self, node: Node) -> bool:
        """The listing of `node` changed: the next reader from offset 0 gets a new version.
        Whether the kernel may hold a cached listing to drop: only once, unless a handle
        that may fill the cache again is still open."""
        ended = self._current.pop(node, None)
        if ended is not None and self._keep_ended:
            self._ended[(node, ended.tag)] = ended
            self._ended_tags.setdefault(node, set()).add(ended.tag)
            self._ended_names += len(ended.names)
            while self._ended_names > ENDED_NAMES_KEPT:
                (old_node, tag), old = self._ended.popitem(last=False)
                self._ended_names -= len(old.names)
                tags = self._ended_tags[old_node]
                tags.discard(tag)
                if not tags:
                    del self._ended_tags[old_node]
        if node not in self._kernel_cached:
            return False
        if node.open_files == 0:
            self._kernel_cached.discard(node)
        return True
