"""uidmapping=/gidmapping= and squash_to_*: ids stored in the layers against the ids shown
through the mount, as fuse-overlayfs defines them. The FUSE edge translates every id it reports
and every id it is given."""

from __future__ import annotations

import errno

from .options import IdMapping

OVERFLOW_ID = 65534     # what an id with no mapping shows as (the kernel's overflowuid)


class IdMap:
    def __init__(self, mappings: tuple[IdMapping, ...] = (), squash_to: int | None = None
                 ) -> None:
        self.mappings = mappings
        self.squash_to = squash_to

    @property
    def identity(self) -> bool:
        return not self.mappings and self.squash_to is None

    def to_view(self, disk_id: int) -> int:
        """The id shown through the mount for an id stored on disk."""
        if self.squash_to is not None:
            return self.squash_to
        if not self.mappings:
            return disk_id
        for m in self.mappings:
            if m.disk <= disk_id < m.disk + m.size:
                return m.view + disk_id - m.disk
        return OVERFLOW_ID

    def to_disk(self, view_id: int, unmapped: int | None = None) -> int:
        """The id stored on disk for an id given through the mount. An id with no mapping is
        stored as `unmapped`, or refused (EINVAL) without one."""
        if not self.mappings:
            return view_id
        for m in self.mappings:
            if m.view <= view_id < m.view + m.size:
                return m.disk + view_id - m.view
        if unmapped is not None:
            return unmapped
        raise OSError(errno.EINVAL, f"id {view_id} has no mapping")
