"""The layer-precedence rule of a merged directory, the one place it is written.

A merged directory is a stack of real directories, top first. Each says one of four things
about a name: nothing, a whiteout, a non-directory, or a directory. The topmost layer that
says something decides:

- a whiteout: the name does not exist;
- a non-directory: it is the object, whatever lies below;
- a directory: it is the object, merged with the directories of that name in the layers
  below it, down to the first layer that says anything else, or to one that is opaque.

Whether a name is listed depends only on that topmost word, so a merged listing applies the
rule to every name at once (`visible_names`); a lookup applies all of it to one name
(`resolve_name`). Callers say how a layer is asked (a stat of the upper dir, a probe of a
lower listing) and whether a directory lets the walk go on below it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from .layers import Layer
    from .listing import Listing

# What one layer's directory says about a name.
NOTHING, WHITEOUT, NONDIR, DIR = 0, 1, 2, 3

# (what the layer says, the real inode number, its stat if the asking made one)
Said = tuple[int, int, "os.stat_result | None"]
NOT_SAID: Said = (NOTHING, 0, None)
WHITED_OUT: Said = (WHITEOUT, 0, None)

# (is a dir, the layers holding the object top first, its real inode number in each, the
# top layer's stat where its answer carried one): a plain tuple, made on every lookup.
Resolved = tuple[bool, list["Layer"], list[int], "os.stat_result | None"]


def resolve_name(layers: Sequence[Layer], ask: Callable[[Layer], Said],
                 continues_below: Callable[[Layer, int], bool],
                 collected: Callable[[Layer, int], Sequence[Layer] | None] | None = None
                 ) -> Resolved | None:
    """Where one name resolves, or None if it does not exist.

    `ask(layer)` says what `layer` holds under the name; `continues_below(layer, ino)`,
    asked only when a directory has another directory below it, whether the directory
    found in `layer` lets the walk go on (not when it is opaque). `collected(layer, ino)`
    hears of each directory collected before the layers below it are asked: that is where
    a directory redirect is taught. It may change what `ask` asks them for, and it may
    return the layers to go on with instead of the rest of `layers` (an absolute redirect
    goes on from the roots of the layers below)."""
    found: list[Layer] = []
    inos: list[int] = []
    top_st = None
    index = 0
    while index < len(layers):
        layer = layers[index]
        index += 1
        said, ino, st = ask(layer)
        if said == NOTHING:
            continue
        if said == WHITEOUT:
            break
        if found:
            if said != DIR or not continues_below(found[-1], inos[-1]):
                break
        elif said == NONDIR:
            return False, [layer], [ino], st
        else:
            top_st = st
        found.append(layer)
        inos.append(ino)
        if collected is not None:
            elsewhere = collected(layer, ino)
            if elsewhere is not None:
                layers, index = elsewhere, 0
    return (True, found, inos, top_st) if found else None


def visible_names(listings: Iterable[Listing], xwhiteouts_count: bool = False
                  ) -> Iterator[bytes]:
    """Every name a merged directory shows, once, in the order of its layers (the upper
    first): those whose topmost word is an entry. With `xwhiteouts_count`, an xattr
    whiteout that is the topmost word counts as an entry (rmdir sees it, as the kernel's
    does, though readdir leaves it out)."""
    decided: set[bytes] = set()
    for listing in listings:
        names: Iterable[bytes] = listing.entries
        if xwhiteouts_count:
            names = chain(names, listing.xwhiteouts)
        for name in names:
            if name not in decided:
                decided.add(name)
                yield name
        decided.update(listing.whiteouts)


def topmost(listings: Iterable[Listing], name: bytes) -> tuple[int, Said]:
    """The topmost word about `name` in these layers (top first), and the position of the
    layer that says it; (-1, NOT_SAID) where none says anything."""
    for position, listing in enumerate(listings):
        said = listing.says(name)
        if said[0] != NOTHING:
            return position, said
    return -1, NOT_SAID


def shown(listings: Iterable[Listing], name: bytes) -> bool:
    """Whether these layers (top first) show `name`: its topmost word is an entry."""
    return topmost(listings, name)[1][0] not in (NOTHING, WHITEOUT)
