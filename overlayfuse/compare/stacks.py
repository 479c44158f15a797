"""Random layer stacks and operation sequences (hypothesis strategies), and the translation of
a stack into the form kernel overlayfs reads.

Kernel overlayfs ignores OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) and, without `userxattr`,
user.overlay.opaque. overlayfuse honours them (intended divergences, docs/behaviour.md). The
reference stack for the kernel therefore gets the same meaning in the kernel's own markers;
nothing in the comparison is loosened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import strategies as st

from ..syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE

NAMES = ("a", "b", "c")
MAX_DEPTH = 3

LOWER_KINDS = ("file", "dir", "symlink", "whiteout", "oci-whiteout", "opaque", "oci-opaque",
               "user-opaque", "fifo", "link", "xwhiteouts-dir", "xwhiteout")
# The kernel's upper layer half-honours xwhiteouts (lookup yes, readdir no): not drawn there.
UPPER_KINDS = ("file", "dir", "symlink", "whiteout", "opaque", "fifo", "link")
DIR_KINDS = ("dir", "opaque", "oci-opaque", "user-opaque", "xwhiteouts-dir")


@dataclass(frozen=True)
class StackSpec:
    lowers: tuple[dict[str, str], ...]     # top first
    upper: dict[str, str]


paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=MAX_DEPTH).map("/".join)
texts = st.text(alphabet="xyz", min_size=0, max_size=6)


def _entries(kinds: tuple[str, ...]) -> st.SearchStrategy[str]:
    def entry(kind: str) -> st.SearchStrategy[str]:
        if kind == "file":
            return texts.map(lambda text: f"file:{text}")
        if kind == "symlink":
            # Targets stay inside the tree: operations follow symlinks in the middle of
            # paths, and a target outside would have them act on the host.
            return st.sampled_from(["a", "b/c", "c/a", ".", "b"]).map(lambda t: f"symlink:{t}")
        if kind == "link":
            return paths.map(lambda p: f"link:{p}")
        return st.just(kind)
    return st.sampled_from(kinds).flatmap(entry)


def normalize(spec: dict[str, str]) -> dict[str, str]:
    """Drop entries that cannot be laid out: under a non-directory, on a name already taken,
    hard links to something that is not an earlier regular file."""
    kept: dict[str, str] = {}
    for path in sorted(spec, key=lambda p: (p.count("/"), p)):
        what = spec[path]
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(p in kept and kept[p].partition(":")[0] not in DIR_KINDS for p in parents):
            continue
        if path in kept:
            continue
        if what.startswith("link:") and not kept.get(what[5:], "").startswith("file:"):
            continue
        for parent in parents:
            kept.setdefault(parent, "dir")
        kept[path] = what
    return kept


@st.composite
def stack_specs(draw: st.DrawFn) -> StackSpec:
    nlowers = draw(st.integers(1, 3))
    drawn = [draw(st.dictionaries(paths, _entries(LOWER_KINDS), max_size=8))
             for _ in range(nlowers)]
    drawn.insert(0, draw(st.dictionaries(paths, _entries(UPPER_KINDS), max_size=5)))
    # Whiteouts drawn at random rarely hide anything (and are then left out, see below):
    # each layer also whites out a few names that the layers below it hold.
    for index in range(nlowers):
        below = sorted({path for layer in drawn[index + 1:] for path in layer})
        if below:
            targets = draw(st.lists(st.sampled_from(below), max_size=3))
            kinds = draw(st.lists(st.sampled_from(WHITEOUT_KINDS if index else ("whiteout",)),
                                  min_size=len(targets), max_size=len(targets)))
            drawn[index] = {**dict(zip(targets, kinds)), **drawn[index]}
    upper, *rest = (normalize(layer) for layer in drawn)
    lowers = tuple(rest)
    lowers, upper = _without_stray_whiteouts(lowers, upper)
    # Drawn at random, an xwhiteout rarely lands in a marked dir over something to hide:
    # some layers get their whiteouts in that form instead.
    in_xattr_form = draw(st.lists(st.booleans(), min_size=nlowers, max_size=nlowers))
    lowers = tuple(_as_xwhiteouts(layer) if convert else layer
                   for layer, convert in zip(lowers, in_xattr_form))
    return StackSpec(lowers, upper)


def _as_xwhiteouts(layer: dict[str, str]) -> dict[str, str]:
    """The same layer with its chardev whiteouts in plain dirs as xwhiteouts, their dirs
    marked as holding them (which is not opaque: the meaning does not change)."""
    converted = dict(layer)
    for path, what in layer.items():
        parent = path.rpartition("/")[0]
        if what == "whiteout" and converted.get(parent) in ("dir", "xwhiteouts-dir"):
            converted[path] = "xwhiteout"
            converted[parent] = "xwhiteouts-dir"
    return converted


WHITEOUT_KINDS = ("whiteout", "oci-whiteout")


def _kind(layer: dict[str, str], path: str) -> str:
    """The kind of `path` in `layer` by its meaning: an xwhiteout is a whiteout only in a dir
    marked as holding xwhiteouts, and an empty file anywhere else."""
    kind = layer.get(path, "").partition(":")[0]
    if kind == "xwhiteout":
        parent = path.rpartition("/")[0]
        return "whiteout" if parent and layer.get(parent) == "xwhiteouts-dir" else "file"
    return kind


OPAQUE_KINDS = ("opaque", "oci-opaque", "user-opaque")


def _resolves(path: str, layers: list[dict[str, str]]) -> bool:
    """Whether `path` names something in this stack of layers (top first), by overlay rules."""
    candidates = layers
    parts = path.split("/")
    for depth in range(len(parts)):
        prefix = "/".join(parts[:depth + 1])
        merged: list[dict[str, str]] = []
        for layer in candidates:
            kind = _kind(layer, prefix)
            if not kind:
                continue
            if kind in WHITEOUT_KINDS:
                break
            if kind not in DIR_KINDS:
                if not merged:
                    return depth == len(parts) - 1
                break
            merged.append(layer)
            if kind in OPAQUE_KINDS:
                break
        if not merged:
            return False
        candidates = merged
    return True


def _hides_something(layer: dict[str, str], path: str, below: list[dict[str, str]]) -> bool:
    """Whether a whiteout at `path` in `layer` hides anything: the name must resolve through
    this layer's own dirs (an opaque one above the whiteout cuts off the layers below)."""
    others = {other: what for other, what in layer.items() if other != path}
    return _resolves(path, [others, *below])


def _kept(layer: dict[str, str], path: str, below: list[dict[str, str]]) -> bool:
    if _kind(layer, path) in WHITEOUT_KINDS:
        return _hides_something(layer, path, below)
    # An xwhiteout outside a marked dir: the kernel lists it, yet fails its lookup once it
    # has met a marked dir in that layer. Left out, like a stray whiteout.
    return layer[path] != "xwhiteout"


def _without_stray_whiteouts(lowers: tuple[dict[str, str], ...], upper: dict[str, str]
                             ) -> tuple[tuple[dict[str, str], ...], dict[str, str]]:
    """Keep a whiteout only where it hides something in the layers below, the only place
    the kernel ever writes one (see the "stray-whiteouts" divergence in known.py)."""
    kept_lowers: list[dict[str, str]] = []
    for layer in reversed(lowers):
        kept_lowers.insert(0, {path: what for path, what in layer.items()
                               if _kept(layer, path, kept_lowers)})
    kept_upper = {path: what for path, what in upper.items()
                  if what not in WHITEOUT_KINDS or _hides_something(upper, path, kept_lowers)}
    return tuple(kept_lowers), kept_upper


def kernel_form(spec: dict[str, str]) -> dict[str, str]:
    """The same layer with OCI markers and user.overlay.opaque in the kernel's own form."""
    translated = {}
    for path, what in spec.items():
        if what == "oci-whiteout":
            translated[path] = "whiteout"
        elif what in ("oci-opaque", "user-opaque"):
            translated[path] = "opaque"
        else:
            translated[path] = what
    return translated


OPEN_FLAGS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND,
              os.O_RDWR | os.O_TRUNC, os.O_RDONLY | os.O_CREAT, os.O_WRONLY | os.O_CREAT,
              os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.O_RDWR | os.O_CREAT | os.O_TRUNC,
              os.O_RDONLY | os.O_TRUNC]
XATTR_NAMES = ["user.x", "user.y", "trusted.overlay.opaque", "trusted.z"]
RENAME_FLAGS = [0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]

def operations(names: st.SearchStrategy[str] = paths) -> st.SearchStrategy[tuple]:
    """One operation; `names` draws the paths it works on. Removals and renames, where
    layers interact most, are drawn more often."""
    removals = [st.tuples(st.just("unlink"), names), st.tuples(st.just("rmdir"), names),
                st.tuples(st.just("rename"), names, names, st.sampled_from(RENAME_FLAGS))]
    return st.one_of(
        *removals, *removals,
        st.tuples(st.just("open"), names, st.sampled_from(OPEN_FLAGS)),
        st.tuples(st.just("read"), names),
        st.tuples(st.just("write"), names, st.integers(0, 8),
                  st.text("pq", min_size=1, max_size=4)),
        st.tuples(st.just("append"), names, st.text("pq", min_size=1, max_size=4)),
        st.tuples(st.just("truncate"), names, st.integers(0, 8)),
        st.tuples(st.just("chmod"), names, st.sampled_from([0o600, 0o755, 0o4755, 0o1777,
                                                            0o644])),
        st.tuples(st.just("chown"), names, st.sampled_from([0, 1000]),
                  st.sampled_from([0, 1000])),
        st.tuples(st.just("utime"), names, st.just(10**9),
                  st.integers(0, 3).map(lambda n: n * 10**9)),
        st.tuples(st.just("utime_omit"), names),
        st.tuples(st.just("setxattr"), names, st.sampled_from(XATTR_NAMES), texts),
        st.tuples(st.just("removexattr"), names, st.sampled_from(XATTR_NAMES)),
        st.tuples(st.just("getxattr"), names, st.sampled_from(XATTR_NAMES)),
        st.tuples(st.just("listxattr"), names),
        st.tuples(st.just("mkdir"), names, st.sampled_from([0o755, 0o700])),
        st.tuples(st.just("rmdir"), names),
        st.tuples(st.just("unlink"), names),
        st.tuples(st.just("rename"), names, names, st.sampled_from(RENAME_FLAGS)),
        st.tuples(st.just("link"), names, names),
        st.tuples(st.just("symlink"), st.sampled_from(["a", "b/c", "."]), names),
        st.tuples(st.just("mknod"), names, st.just("fifo")),
        st.tuples(st.just("listdir"), st.one_of(st.just("."), names)),
        st.tuples(st.just("stat"), names),
        st.tuples(st.just("readlink"), names),
        st.tuples(st.just("remount")),
        st.tuples(st.just("rotate")),
    )


@st.composite
def examples(draw: st.DrawFn) -> tuple[StackSpec, list[tuple]]:
    """A stack and operations that mostly name what the stack holds (random names rarely
    meet), and sometimes anything."""
    spec = draw(stack_specs())
    present = sorted({path for layer in (*spec.lowers, spec.upper) for path in layer})
    names = st.one_of(st.sampled_from(present), paths) if present else paths
    ops = draw(st.lists(operations(names), min_size=2, max_size=30))
    return spec, ops

