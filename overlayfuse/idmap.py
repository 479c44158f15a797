"""uidmapping=/gidmapping= and squash_to_*: ids on disk ("host") against ids in the view
("container"), as fuse-overlayfs defines them. The FUSE edge translates every id it reports
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

    def to_view(self, host_id: int) -> int:
        """The id shown through the mount for an id stored on disk."""
        if self.squash_to is not None:
            return self.squash_to
        if not self.mappings:
            return host_id
        for m in self.mappings:
            if m.host <= host_id < m.host + m.size:
                return m.container + host_id - m.host
        return OVERFLOW_ID

    def to_disk(self, view_id: int, missing_errno: int = errno.EINVAL) -> int:
        """The id stored on disk for an id given through the mount."""
        if not self.mappings:
            return view_id
        for m in self.mappings:
            if m.container <= view_id < m.container + m.size:
                return m.host + view_id - m.container
        raise OSError(missing_errno, f"id {view_id} has no mapping")
