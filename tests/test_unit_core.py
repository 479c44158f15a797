"""The core rules without a mount, on temporary directory trees: layer precedence, whiteouts
and opaque dirs, merged listings, one layer's listing, the inode table and the data copy.
The mounted tests check the same rules through the kernel against kernel overlayfs; these
pin them down where a failure names the function at fault."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from overlayfuse.copyup import copy_file_data
from overlayfuse.inodes import ROOT_INO, SYNTHETIC_BASE, Node, NodeTable
from overlayfuse.layers import Layer
from overlayfuse.listing import Listing, read_listing
from overlayfuse.precedence import (DIR, NONDIR, NOT_SAID, WHITED_OUT, resolve_name, shown,
                                    topmost, visible_names)
from overlayfuse.whiteout import is_reserved_name, is_whiteout, oci_target
from layerspec import build_layer
from unit_stack import core

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="whiteouts are chardevs and opaque marks trusted xattrs")


# ---- the precedence rule, on what each layer says ------------------------------------------

LAYERS = [Layer(index, f"/l{index}", -1, 1, index, upper=index == 0) for index in range(4)]


def _walk(*said, opaque: tuple[int, ...] = ()):
    """resolve_name over layers that say `said` (top first), the dirs in layers `opaque`
    opaque; the layer indexes and inode numbers found, and the layers asked."""
    asked: list[int] = []

    def ask(layer: Layer):
        asked.append(layer.index)
        return said[layer.index]

    resolved = resolve_name(LAYERS[:len(said)], ask,
                            lambda layer, ino: layer.index not in opaque)
    if resolved is None:
        return None, asked
    is_dir, layers, inos, _ = resolved
    return ([layer.index for layer in layers], inos, is_dir), asked


def test_the_topmost_word_decides() -> None:
    assert _walk(NOT_SAID, (NONDIR, 11, None), (NONDIR, 12, None)) == (([1], [11], False), [0, 1])
    assert _walk(WHITED_OUT, (NONDIR, 11, None)) == (None, [0])
    assert _walk(NOT_SAID, NOT_SAID) == (None, [0, 1])
    assert _walk((DIR, 10, None), WHITED_OUT, (DIR, 12, None))[0] == ([0], [10], True)


def test_a_dir_merges_with_the_dirs_below_until_something_else() -> None:
    dirs = [(DIR, 10 + n, None) for n in range(4)]
    assert _walk(*dirs)[0] == ([0, 1, 2, 3], [10, 11, 12, 13], True)
    assert _walk(dirs[0], NOT_SAID, dirs[2], (NONDIR, 13, None))[0] == ([0, 2], [10, 12], True)
    assert _walk(dirs[0], (NONDIR, 11, None), dirs[2])[0] == ([0], [10], True)
    assert _walk(dirs[0], dirs[1], WHITED_OUT, dirs[3])[0] == ([0, 1], [10, 11], True)


def test_an_opaque_dir_ends_the_merge_and_opacity_is_asked_only_when_it_matters() -> None:
    dirs = [(DIR, 10 + n, None) for n in range(4)]
    assert _walk(*dirs, opaque=(1,))[0] == ([0, 1], [10, 11], True)
    assert _walk(dirs[0], (NONDIR, 11, None), opaque=(0,))[0] == ([0], [10], True)
    asked_opaque: list[int] = []

    def continues(layer: Layer, ino: int) -> bool:
        asked_opaque.append(layer.index)
        return True
    resolve_name(LAYERS[:2], lambda layer: [(NONDIR, 1, None), dirs[1]][layer.index], continues)
    resolve_name(LAYERS[:2], lambda layer: [dirs[0], NOT_SAID][layer.index], continues)
    assert asked_opaque == []


def _fake_listing(entries: dict[str, str], whiteouts: str = "", xwhiteouts: str = "") -> Listing:
    """A listing from {name: "dir" or "file"} and whitespace-separated whited-out names."""
    return Listing({name.encode(): n for n, name in enumerate(entries, 100)},
                   frozenset(name.encode() for name, kind in entries.items() if kind == "dir"),
                   frozenset(name.encode() for name in (whiteouts + " " + xwhiteouts).split()),
                   False, frozenset(), frozenset(name.encode() for name in xwhiteouts.split()))


def test_a_listing_says_what_it_holds() -> None:
    listing = _fake_listing({"d": "dir", "f": "file"}, whiteouts="w")
    assert listing.says(b"d") == (DIR, 100, None)
    assert listing.says(b"f") == (NONDIR, 101, None)
    assert listing.says(b"w") == WHITED_OUT and listing.says(b"x") == NOT_SAID


def test_visible_names_are_the_topmost_entries_in_layer_order() -> None:
    listings = [_fake_listing({"u": "file", "both": "dir"}, whiteouts="gone"),
                _fake_listing({"both": "file", "gone": "file", "mid": "file"}, whiteouts="low"),
                _fake_listing({"low": "file", "mid": "dir", "bottom": "file"})]
    assert list(visible_names(listings)) == [b"u", b"both", b"mid", b"bottom"]
    assert shown(listings[1:], b"gone") and not shown(listings[1:], b"low")
    assert not shown(listings, b"gone") and shown(listings, b"bottom")
    assert not shown(listings, b"nowhere")


def test_topmost_says_the_first_word_and_which_layer_said_it() -> None:
    listings = [_fake_listing({"u": "file"}, whiteouts="gone"),
                _fake_listing({"gone": "file", "d": "dir"}),
                _fake_listing({"d": "file", "low": "file"})]
    assert topmost(listings, b"u") == (0, (NONDIR, 100, None))
    assert topmost(listings, b"gone") == (0, WHITED_OUT)
    assert topmost(listings, b"d") == (1, (DIR, 101, None))
    assert topmost(listings, b"low") == (2, (NONDIR, 101, None))
    assert topmost(listings, b"nowhere") == (-1, NOT_SAID)


def test_a_topmost_xattr_whiteout_counts_for_rmdir_only() -> None:
    listings = [_fake_listing({}, xwhiteouts="x"), _fake_listing({"x": "file"})]
    assert list(visible_names(listings)) == []
    assert list(visible_names(listings, xwhiteouts_count=True)) == [b"x"]
    below = [_fake_listing({}, whiteouts="x"), _fake_listing({}, xwhiteouts="x")]
    assert list(visible_names(below, xwhiteouts_count=True)) == []


def test_layers_know_whether_they_are_the_upper(tmp_path: Path) -> None:
    spec = [{"a": "file:a"}, {"b": "file:b"}]
    with core(tmp_path / "rw", spec, {"u": "file:u"}) as ov:
        assert [layer.upper for layer in ov.tree.root.layers] == [True, False, False]
        assert ov.tree.upper is ov.tree.root.layers[0]
        assert ov.node("u").in_upper and not ov.node("a").in_upper
    with core(tmp_path / "ro", spec, read_only=True) as ov:
        assert ov.tree.upper is None
        assert not any(layer.upper for layer in ov.tree.root.layers)


# ---- resolution ----------------------------------------------------------------------------

def _seen(ov, path: str) -> str | None:
    """What a lookup of `path` finds: the file's text, "dir", or None for nothing."""
    node = ov.tree.root
    for name in path.split("/"):
        found = ov.tree.lookup(node, name.encode())
        if found is None:
            return None
        node, st = found
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    fd = os.open(node.name, os.O_RDONLY, dir_fd=ov.tree.parent_fd(node))
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


@needs_root
@pytest.mark.parametrize("upper", [True, False], ids=["writable", "read-only"])
def test_the_top_layer_wins_and_markers_hide_below(tmp_path: Path, upper: bool) -> None:
    top = {"a": "file:top-a", "gone": "whiteout", "oci": "oci-whiteout", "opq": "opaque",
           "opq/new": "file:n", "oopq": "oci-opaque", "merged/t": "file:t"}
    bottom = {"a": "file:bottom-a", "b": "file:bottom-b", "gone": "file:x", "oci": "file:y",
              "opq/old": "file:o", "oopq/old": "file:o", "merged/b": "file:b"}
    lowers, upper_spec = ([bottom], top) if upper else ([top, bottom], None)
    with core(tmp_path, lowers, upper_spec, read_only=not upper) as ov:
        assert _seen(ov, "a") == "top-a"
        assert _seen(ov, "b") == "bottom-b"
        for hidden in ("gone", "oci", "opq/old", "oopq/old", ".wh.oci", "oopq/.wh..wh..opq"):
            assert _seen(ov, hidden) is None, hidden
        assert _seen(ov, "opq/new") == "n"
        assert ov.names() == ["a", "b", "merged", "oopq", "opq"]
        assert ov.names("merged") == ["b", "t"]
        assert ov.names("opq") == ["new"] and ov.names("oopq") == []


@needs_root
def test_a_readdir_resolves_each_name_as_a_lookup_does(tmp_path: Path) -> None:
    """With the listings of a readdir, names are settled by their topmost word where they
    can be; the root (it has an upper part) is otherwise resolved by the full walk."""
    upper = {"u": "file:u", "gone": "whiteout", "oci": "oci-whiteout", "opq": "opaque",
             "merged/t": "file:t", "over": "file:over", "empty": "dir"}
    middle = {"mid": "file:m", "merged/m": "file:m", "over": "dir", "dirfile": "dir",
              "low": "whiteout", "link": "symlink:mid"}
    bottom = {"gone": "file:g", "oci": "file:o", "opq/old": "file:o", "low": "file:l",
              "dirfile": "file:f", "bottom": "file:b", "merged/b": "file:b", "mid": "file:x"}
    with core(tmp_path, [middle, bottom], upper) as ov:
        tree = ov.tree
        root = tree.root
        listings = tree.readdir_listings(root)
        names = tree.list_names(root)
        assert sorted(names) == [b"bottom", b"dirfile", b"empty", b"link", b"merged", b"mid",
                                 b"opq", b"over", b"u"]
        for name in [*names, b"gone", b"oci", b"low", b"nowhere", b".wh.oci"]:
            walked = tree.resolve(root, name)
            listed = tree.resolve(root, name, listings)
            if walked is None:
                assert listed is None, name
                continue
            assert listed is not None, name
            assert (listed.layers, listed.real_inos, listed.st.st_ino, listed.lower_paths,
                    listed.redirect, listed.lower_data) == \
                (walked.layers, walked.real_inos, walked.st.st_ino, walked.lower_paths,
                 walked.redirect, walked.lower_data), name


def test_a_file_above_ends_the_dir_below(tmp_path: Path) -> None:
    lowers = [{"x": "file:file-on-top"}, {"x/inside": "file:i"}]
    with core(tmp_path, lowers) as ov:
        assert _seen(ov, "x") == "file-on-top"
        found = ov.tree.resolve(ov.tree.root, b"x")
        assert found is not None and not found.is_dir and [l.index for l in found.layers] == [1]


def test_a_dir_above_a_file_hides_it_and_does_not_merge(tmp_path: Path) -> None:
    lowers = [{"x/inside": "file:i"}, {"x": "file:below"}]
    with core(tmp_path, lowers) as ov:
        found = ov.tree.resolve(ov.tree.root, b"x")
        assert found is not None and found.is_dir and len(found.layers) == 1


# ---- directory redirects --------------------------------------------------------------------

@needs_root
def test_a_relative_redirect_merges_the_lower_dir_it_names(tmp_path: Path) -> None:
    lowers = [{"a/d1/f": "file:f", "a/other/g": "file:g"}]
    with core(tmp_path, lowers, {"a/d2": "redirect:d1", "a/d1": "whiteout"}) as ov:
        assert ov.names("a") == ["d2", "other"]
        assert ov.names("a/d2") == ["f"]
        node = ov.node("a/d2")
        assert node.redirect == b"d1" and node.lower_paths == {ov.tree.lower_layers[0]: b"a/d1"}
        assert ov.tree.resolve(ov.node("a"), b"d1") is None


@needs_root
def test_an_absolute_redirect_and_one_on_the_way_are_followed(tmp_path: Path) -> None:
    """The upper's `n` points at /p/r; in the top lower, `p` was itself renamed from /q."""
    lowers = [{"p": "redirect:/q", "p/mine": "file:m"}, {"q/r/f": "file:f", "p/r/no": "file:x"}]
    with core(tmp_path, lowers, {"n": "redirect:/p/r"}) as ov:
        assert ov.names("n") == ["f"]
        assert ov.names("p") == ["mine", "r"]       # p itself: merged with /q below
        assert ov.names("p/r") == ["f"]


@needs_root
def test_a_redirect_in_a_lower_layer_is_followed(tmp_path: Path) -> None:
    """Yesterday's upper as today's top lower: its renamed dir still finds its lower part."""
    lowers = [{"new": "redirect:/old/d", "old/d": "whiteout"}, {"old/d/f": "file:f"}]
    with core(tmp_path, lowers, {}) as ov:
        assert ov.names("new") == ["f"]
        assert ov.names("old") == []


@needs_root
def test_an_opaque_dir_on_the_way_ends_the_merge_below(tmp_path: Path) -> None:
    lowers = [{"p": "opaque", "p/r/top": "file:t"}, {"p/r/below": "file:b"}]
    with core(tmp_path, lowers, {"n": "redirect:/p/r"}) as ov:
        assert ov.names("n") == ["top"]


@needs_root
def test_nofollow_refuses_a_lookup_a_redirect_leads_somewhere(tmp_path: Path) -> None:
    lowers = [{"a/d1/f": "file:f"}]
    upper = {"a/d2": "redirect:d1", "a/d1": "whiteout", "a/plain": "redirect:nowhere"}
    with core(tmp_path, lowers, upper, options="redirect_dir=nofollow") as ov:
        with pytest.raises(OSError) as info:
            ov.node("a/d2")
        assert info.value.errno == errno.EPERM
        assert ov.names("a/plain") == []            # nothing below: no refusal


def test_names_longer_than_name_max_are_refused(tmp_path: Path) -> None:
    with core(tmp_path, [{"a": "file:a"}]) as ov:
        with pytest.raises(OSError) as caught:
            ov.tree.resolve(ov.tree.root, b"n" * 256)
        assert caught.value.errno == errno.ENAMETOOLONG


@needs_root
def test_a_whiteout_makes_a_dir_empty_but_an_xattr_whiteout_does_not(tmp_path: Path) -> None:
    lowers = [{"w/gone": "whiteout", "x": "xwhiteouts-dir", "x/gone": "xwhiteout"},
              {"w/gone": "file:g", "x/gone": "file:g"}]
    with core(tmp_path, lowers) as ov:
        assert ov.names("w") == [] and ov.names("x") == []
        assert ov.tree.is_empty_dir(ov.node("w"))
        assert not ov.tree.is_empty_dir(ov.node("x"))   # as the kernel's rmdir: ENOTEMPTY


# ---- one layer's listing -------------------------------------------------------------------

def _listing(path: Path):
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        return read_listing(fd, lower=True)
    finally:
        os.close(fd)


@needs_root
def test_read_listing_sorts_entries_from_markers(tmp_path: Path) -> None:
    build_layer(tmp_path / "d", {"f": "file:f", "sub/x": "file:x", "w": "whiteout",
                                 "oci": "oci-whiteout", "link": "symlink:f"})
    (tmp_path / "d/.wh..wh..opq").write_bytes(b"")
    listing = _listing(tmp_path / "d")
    assert sorted(listing.entries) == [b"f", b"link", b"sub"]
    assert listing.entries[b"f"] == os.lstat(tmp_path / "d/f").st_ino
    assert listing.dirs == {b"sub"}
    assert listing.whiteouts == {b"w", b"oci"}
    assert listing.oci_markers == {b".wh.oci", b".wh..wh..opq"}
    assert listing.opaque and listing.xwhiteouts == frozenset()


def test_an_oci_whiteout_beside_its_own_name_hides_nothing(tmp_path: Path) -> None:
    build_layer(tmp_path / "d", {"a": "file:a", "b": "file:b"})
    (tmp_path / "d/.wh.a").write_bytes(b"")
    listing = _listing(tmp_path / "d")
    assert sorted(listing.entries) == [b"a", b"b"] and listing.whiteouts == frozenset()


def test_marker_names() -> None:
    assert oci_target(b".wh.name") == b"name"
    assert oci_target(b".wh..wh..opq") is None and oci_target(b"name") is None
    assert is_reserved_name(b".wh.x") and is_reserved_name(b".wh..wh..opq")
    assert not is_reserved_name(b"x.wh.") and not is_reserved_name(b".whx")


@needs_root
def test_only_a_chardev_0_0_is_a_whiteout(tmp_path: Path) -> None:
    os.mknod(tmp_path / "w", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (tmp_path / "f").write_bytes(b"")
    assert is_whiteout(os.lstat(tmp_path / "w"))
    assert not is_whiteout(os.lstat(tmp_path / "null"))
    assert not is_whiteout(os.lstat(tmp_path / "f"))


# ---- the inode table -----------------------------------------------------------------------

def _table() -> NodeTable:
    table = NodeTable(fs_tags={10: 0, 20: 1})
    table.add(Node(ino=ROOT_INO, parent=None, name=b"", is_dir=True, layers=(0,),
                   real_inos=(2,), identity=("root",), nlookup=1))
    return table


def _add(table: NodeTable, parent: Node, name: bytes, ino: int, nlookup: int = 1) -> Node:
    node = Node(ino=ino, parent=parent, name=name, is_dir=False, layers=(0,), real_inos=(ino,),
                identity=(10, ino), nlookup=nlookup)
    table.add(node)
    return node


def test_inode_numbers_are_real_tagged_or_synthetic() -> None:
    table = _table()
    assert table.choose_ino(10, 1234) == 1234
    assert table.choose_ino(20, 1234) == 1234 | (1 << 56)       # second filesystem's tag
    _add(table, table.get(ROOT_INO), b"a", 1234)
    assert table.choose_ino(10, 1234) >= SYNTHETIC_BASE           # taken: synthetic
    assert table.choose_ino(10, ROOT_INO) >= SYNTHETIC_BASE       # never the root's
    table.origin_ino[(10, 99)] = 5555                             # copied up this mount
    assert table.choose_ino(10, 99) == 5555


def test_a_node_lives_while_looked_up_named_as_parent_or_open() -> None:
    table = _table()
    root = table.get(ROOT_INO)
    parent = Node(ino=50, parent=root, name=b"d", is_dir=True, layers=(0,), real_inos=(50,),
                  identity=(10, 50), nlookup=1)
    table.add(parent)
    child = _add(table, parent, b"f", 51)
    table.forget(50, 1)
    assert table.get(50) is parent                 # its child keeps it
    child.open_files = 1
    table.forget(51, 1)
    assert table.get(51) is child                  # open
    child.open_files = 0
    table.remove_link(child, parent, b"f")
    for ino in (50, 51):
        with pytest.raises(OSError):
            table.get(ino)
    assert table.get(ROOT_INO) is root and root.nchildren == 0


def test_lookups_and_handles_keep_a_node_until_the_last_goes() -> None:
    table = _table()
    node = _add(table, table.get(ROOT_INO), b"f", 70, nlookup=0)
    table.looked_up(node)
    table.looked_up(node)
    table.opened(node)
    table.forget(70, 1)
    table.closed(node)
    assert table.get(70) is node                   # one lookup left
    table.opened(node)
    table.forget(70, 1)
    assert table.get(70) is node                   # open
    table.closed(node)
    with pytest.raises(OSError):
        table.get(70)


UPPER_L = Layer(0, "/u", -1, 10, 2, upper=True)
LOWER_L = Layer(1, "/l", -1, 20, 2, upper=False)


def test_numbering_merged_dirs_and_lower_hard_links() -> None:
    table = _table()
    table.writable = True
    root = table.get(ROOT_INO)
    # A merged dir with an upper part is numbered after its lower dir (its origin).
    assert table.numbered_after((UPPER_L, LOWER_L), (300, 400), True) == (20, 400)
    assert table.numbered_after((UPPER_L,), (300,), False) == (10, 300)
    # Each name of a lower hard link is a node of its own on a writable mount.
    first = table.identity(root, b"a", LOWER_L, 500, False, nlink=2)
    assert first == ("lower-link", ROOT_INO, b"a")
    assert table.identity(root, b"a", UPPER_L, 500, False, nlink=2) == (10, 500)
    table.writable = False
    assert table.identity(root, b"a", LOWER_L, 500, False, nlink=2) == (20, 500)


def test_a_copied_up_node_keeps_its_number_also_when_met_again() -> None:
    table = _table()
    root = table.get(ROOT_INO)
    node = table.new_node(root, b"f", False, (LOWER_L,), (500,), (20, 500), (20, 500))
    assert node.ino == 500 | (1 << 56)             # the second filesystem's tag
    table.looked_up(node)
    table.copied_up(node, UPPER_L, 900)
    assert node.layers == (UPPER_L,) and node.real_inos == (900,)
    assert table.by_identity[(10, 900)] is node
    table.forget(node.ino, 1)                      # dropped, then met again in the upper
    assert table.choose_ino(10, 900) == 500 | (1 << 56)


def test_hard_link_names_move_and_leave() -> None:
    table = _table()
    root = table.get(ROOT_INO)
    node = _add(table, root, b"a", 60)
    table.add_link(node, root, b"b")
    assert node.links() == [(root, b"a"), (root, b"b")]
    table.move_link(node, (root, b"b"), (root, b"c"))
    table.remove_link(node, root, b"a")
    assert node.links() == [(root, b"c")] and table.get(60) is node
    table.remove_link(node, root, b"c")
    assert node.unlinked and table.by_identity.get((10, 60)) is None


# ---- the data copy -------------------------------------------------------------------------

def test_copy_file_data_keeps_bytes_and_holes(tmp_path: Path) -> None:
    src_path, dst_path = tmp_path / "src", tmp_path / "dst"
    with open(src_path, "wb") as src:
        src.write(b"head")
        src.seek(8 << 20)
        src.write(b"middle")
        src.truncate(20 << 20)                     # a hole at the end too
    src_fd = os.open(src_path, os.O_RDONLY)
    dst_fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copy_file_data(src_fd, dst_fd, os.fstat(src_fd).st_size)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert dst_path.read_bytes() == src_path.read_bytes()
    assert os.stat(dst_path).st_blocks <= os.stat(src_path).st_blocks + 8


def test_copy_file_data_of_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"")
    src_fd = os.open(tmp_path / "src", os.O_RDONLY)
    dst_fd = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copy_file_data(src_fd, dst_fd, 0)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert (tmp_path / "dst").read_bytes() == b""


def test_a_lower_files_kept_stat_is_its_stat(tmp_path: Path) -> None:
    lowers = [{"d/f": "file:top"}, {"d/f": "file:hidden", "d/g": "file:bottom"}]
    with core(tmp_path, lowers, read_only=True) as ov:
        for path in ("d/f", "d/g"):
            node = ov.node(path)
            assert node.lower_st is not None      # kept: what a getattr reads back
            real = os.lstat(ov.paths["lowers"][0 if path == "d/f" else 1] / path)
            again = ov.tree.lookup(node.parent, node.name)
            assert again is not None and again[0] is node
            for st in (ov.tree.stat(node), again[1]):
                for field in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                              "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize",
                              "st_blocks", "st_rdev"):
                    assert getattr(st, field) == getattr(real, field), (path, field)
                assert st.st_mtime == int(real.st_mtime)


def test_names_that_are_not_utf8_are_listed_and_found(tmp_path: Path) -> None:
    with core(tmp_path, [{"d/a": "file:a"}], read_only=True) as ov:
        name = b"caf\xe9-\xff"
        with open(os.path.join(os.fsencode(ov.paths["lowers"][0]), b"d", name), "wb") as f:
            f.write(b"latin-1")
        d = ov.node("d")
        assert sorted(ov.tree.list_names(d)) == [b"a", name]
        found = ov.tree.lookup(d, name)
        assert found is not None and found[1].st_size == 7
