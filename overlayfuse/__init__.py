"""overlayfuse: a userspace overlay filesystem on pyfuse3 and trio.

The Python API (docs/api.md): `Overlay` mounts overlayfuse, `KernelOverlay` kernel
overlayfs, both for the duration of a `with` block.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["BaseOverlay", "KernelOverlay", "Overlay", "OverlayError", "__version__"]

# Not typing.TYPE_CHECKING: importing typing would slow down the command's start-up, and
# type checkers treat this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .overlay import BaseOverlay, KernelOverlay, Overlay, OverlayError


def __getattr__(name: str) -> object:
    # Loaded on first use: the `overlayfuse` command imports this package and must not pay
    # for the API's imports.
    if name in __all__:
        from . import overlay
        return getattr(overlay, name)
    raise AttributeError(f"module 'overlayfuse' has no attribute {name!r}")
