"""Intended divergences from kernel overlayfs, each by name (docs/behaviour.md gives more).

Each is handled in exactly one way: the reference stack is *translated* into the kernel's
own markers (same meaning, so every comparison stays strict), the property is *not compared*
(it is not part of the contract), or a divergent outcome is *classified* under its name."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from .harness import Divergence


@dataclass(frozen=True)
class Known:
    name: str
    reason: str
    handling: str                       # "translated", "not compared" or "classified"
    matches: Callable[[Divergence], bool] = lambda divergence: False


def _reserved_name(divergence: Divergence) -> bool:
    return (divergence.kind == "outcome" and divergence.tested == "EINVAL"
            and any(part.startswith(".wh.") for arg in divergence.where.split(",")
                    for part in arg.split("/")))


def _stray_whiteout(divergence: Divergence) -> bool:
    return (divergence.kind == "view" and divergence.tested is None
            and divergence.kernel == {"error": errno.ENOENT})


KNOWN: tuple[Known, ...] = (
    Known("oci-whiteouts", "OCI `.wh.NAME` files and `.wh..wh..opq` in lower layers are "
          "honoured (podman's committed layers use them); the kernel ignores them",
          "translated"),
    Known("user-opaque-everywhere", "user.overlay.opaque=y marks a directory opaque in every "
          "mode (layers written by unprivileged tools carry it), so user.overlay.* is private "
          "as root too (hidden, escaped when set); the kernel reads it only with -o userxattr",
          "translated"),
    Known("reserved-wh-names", "names starting with `.wh.` cannot be created through the mount "
          "(EINVAL): they would read back as whiteouts", "classified", _reserved_name),
    Known("stray-whiteouts", "a whiteout with nothing below it to hide, in a directory that "
          "is not merged, is listed by the kernel's readdir, though lstat gives ENOENT (and "
          "keeps rmdir from removing the dir); overlayfuse hides whiteouts everywhere. The "
          "kernel never writes such a whiteout, so random stacks hold none; one met in the "
          "visible tree is classified",
          "classified", _stray_whiteout),
    Known("inode-numbers", "st_ino: the root is 1 (the FUSE root id); lower hard links get "
          "distinct numbers on writable mounts; without root, a copied-up file shows its upper "
          "inode number after a remount", "not compared"),
    Known("timestamps", "atime/mtime/ctime are not part of the comparison (copy-up preserves "
          "them; both sides set them at slightly different instants)", "not compared"),
)


def explain(divergence: Divergence) -> Known | None:
    for known in KNOWN:
        if known.matches(divergence):
            return known
    return None
