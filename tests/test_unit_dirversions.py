"""Directory versions without a mount (dirversions.py): which snapshot a reader gets, and the
offsets that keep two versions apart in the kernel's cached listing. The mounted tests in
test_cached_listings.py check the same through the kernel."""

from __future__ import annotations

from overlayfuse.dirversions import DirVersions, Snapshot
from overlayfuse.inodes import ROOT_INO, Node, NodeTable


def _table_with_dir() -> tuple[NodeTable, Node]:
    table = NodeTable(fs_tags={10: 0})
    root = Node(ino=ROOT_INO, parent=None, name=b"", is_dir=True, layers=(0,),
                real_inos=(ROOT_INO,), identity=("root",), nlookup=1)
    table.add(root)
    node = Node(ino=50, parent=root, name=b"d", is_dir=True, layers=(1,), real_inos=(50,),
                identity=("d",), nlookup=1)
    table.add(node)
    root.nchildren += 1
    return table, node


def test_readers_of_one_version_share_its_snapshot_and_a_change_starts_another() -> None:
    table, node = _table_with_dir()
    versions = DirVersions(table)
    names = [[b"a", b"b"], [b"new", b"a", b"b"]]
    first = versions.current(node, lambda n: names[0])
    assert versions.current(node, lambda n: names[1]) is first    # not read again
    assert first.names == [b".", b"..", b"a", b"b"]
    versions.changed(node)
    second = versions.current(node, lambda n: names[1])
    assert second.names == [b".", b"..", b"new", b"a", b"b"]
    assert first.names == [b".", b"..", b"a", b"b"]                 # a reader goes on with it
    # Same positions, other offsets: the kernel never continues one version with the other.
    assert {first.offset_after(i) for i in range(4)}.isdisjoint(
        second.offset_after(i) for i in range(5))
    assert Snapshot.index_at(second.offset_after(2)) == 3
    assert 0 < second.offset_after(4) < 2**62


def test_a_copy_up_of_the_dir_is_a_new_version() -> None:
    table, node = _table_with_dir()
    versions = DirVersions(table)
    first = versions.current(node, lambda n: [b"a"])
    node.layers = (0, 1)
    assert versions.current(node, lambda n: [b"a"]) is not first


def test_a_change_drops_the_kernels_cache_only_where_it_may_hold_one() -> None:
    table, node = _table_with_dir()
    versions = DirVersions(table)
    assert not versions.changed(node)           # never opened with caching
    versions.may_cache(node)
    node.open_files = 1                          # that handle may fill the cache again
    assert versions.changed(node)
    assert versions.changed(node)
    node.open_files = 0
    assert versions.changed(node)
    assert not versions.changed(node)           # dropped, and nothing could refill it


def test_a_dropped_node_takes_its_snapshot_with_it() -> None:
    table, node = _table_with_dir()
    versions = DirVersions(table)
    first = versions.current(node, lambda n: [b"a"])
    versions.may_cache(node)
    table.forget(node.ino, 1)
    assert table.by_ino.get(node.ino) is None
    assert not versions.changed(node)
    assert versions.current(node, lambda n: [b"a"]) is not first


def test_without_handles_the_offset_names_the_version_read(monkeypatch) -> None:
    table, node = _table_with_dir()
    versions = DirVersions(table, keep_ended=True)
    first = versions.at(node, 0, lambda n: [b"a", b"b"])
    versions.changed(node)
    second = versions.at(node, 0, lambda n: [b"new", b"a", b"b"])
    assert second is not first
    assert versions.at(node, first.offset_after(2), lambda n: []) is first
    assert versions.at(node, second.offset_after(2), lambda n: []) is second
    # Ended versions are kept up to a number of names; past it the oldest goes first, and a
    # reader of a dropped version goes on in the current one.
    monkeypatch.setattr("overlayfuse.dirversions.ENDED_NAMES_KEPT", 6)
    versions.changed(node)
    third = versions.at(node, 0, lambda n: [b"c"])
    assert versions.at(node, second.offset_after(2), lambda n: []) is second
    assert versions.at(node, first.offset_after(2), lambda n: []) is third
