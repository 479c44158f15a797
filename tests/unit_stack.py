"""The daemon's core on a temporary stack, without FUSE: a Tree (and CopyUp) opened on layers
laid out by a spec, for unit tests that need no mount and no /dev/fuse."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from overlayfuse.copyup import CopyUp
from overlayfuse.inodes import Node
from overlayfuse import layers
from overlayfuse.options import parse_args
from overlayfuse.tree import Tree
from overlayfuse.xattrs import XattrNames
from layerspec import build_stack


class Core:
    """The pieces of a mounted overlay that hold its rules: the tree and copy-up."""

    def __init__(self, paths: dict, tree: Tree) -> None:
        self.paths = paths
        self.tree = tree
        self.attrs_changed: list[Node] = []     # what the kernel would have been told
        self.copy_up = CopyUp(tree, XattrNames(tree.stack.xattr_prefix),
                              self.attrs_changed.append) if tree.writable else None

    def node(self, path: str) -> Node:
        """Look `path` up from the root, as the kernel would, one name at a time."""
        node = self.tree.root
        for name in path.split("/"):
            found = self.tree.lookup(node, name.encode())
            assert found is not None, f"{path}: {name} not found"
            node = found[0]
        return node

    def names(self, path: str = "") -> list[str]:
        node = self.node(path) if path else self.tree.root
        return sorted(name.decode() for name in self.tree.list_names(node))


@contextlib.contextmanager
def core(base: Path, lowers: list[dict[str, str]], upper: dict[str, str] | None = None,
         read_only: bool = False, max_dir_fds: int = 4096, options: str = "") -> Iterator[Core]:
    paths = build_stack(base, lowers, upper)
    given = "lowerdir=" + ":".join(str(p) for p in paths["lowers"])
    if not read_only:
        given += f",upperdir={paths['upper']},workdir={paths['work']}"
    if options:
        given += "," + options
    # Only a mount needs /dev/fuse (and fusermount3): the core runs without them.
    with mock.patch.object(layers, "check_environment", lambda: None):
        stack = layers.open_stack(parse_args(["-o", given, str(paths["merged"])]))
    tree = Tree(stack, max_dir_fds=max_dir_fds)
    try:
        yield Core(paths, tree)
    finally:
        tree.close()
        stack.close()
