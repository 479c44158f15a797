"""When a listing the kernel caches must reach the daemon again, for the upper dir's atime.

Without OPENDIR (capabilities.NO_OPENDIR) the kernel serves a listing it holds complete
without any request, so the daemon never sees a listing that should move the upper dir's
atime. Under relatime that is one whose atime is not after both its mtime and ctime, or is a
day old (AtimePolicy.next_update). So the kernel may hold a listing only while the next one
would move nothing: when it completes one (the READDIR answered at its end), the daemon drops
it at once if the next listing is due already, else notes when it will be; at that time, or
when the daemon moves the dir's ctime (its copy-up, a copy-up into it, a change of its
attributes: `touched`), the daemon drops it. The next listing then reaches the daemon, whose
read of the upper dir moves the atime by the kernel's own rule. A listing whose names change
is dropped by the FUSE edge anyway (DirVersions.changed).

Drops run in a worker thread: a reader of a cached listing holds its page lock while it
copies names out, and may need the daemon for that (a buffer mapped from this mount).
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable

import trio

from .atime import AtimePolicy
from .inodes import Node, NodeTable

RECHECK_S = 60.0    # the wall clock may step: its deadlines are checked at least this often


class ListingExpiry:
    """The dirs whose listing the kernel holds complete, and when each must be dropped."""

    def __init__(self, table: NodeTable, policy: AtimePolicy,
                 drop: Callable[[int], None]) -> None:
        self._policy = policy
        self._drop = drop               # drop(ino): the kernel forgets the cached listing
        self._cached: dict[Node, int | None] = {}   # node -> when its next listing is due
        self._deadlines: list[tuple[int, int, Node]] = []   # a heap; stale entries skipped
        self._order = itertools.count()
        self._pending: set[Node] = set()
        self._dropping = trio.Lock()
        # Whether drops wait (or run) that must be done before a reply: read by every request.
        self.busy = False
        self._sleep: trio.CancelScope | None = None    # the timer's, while it sleeps
        self._wake_at = 0                                # and when it wakes then (ns)
        forget = table.on_drop

        def on_drop(node: Node) -> None:
            if forget is not None:
                forget(node)  # type: ignore[operator]
            self._cached.pop(node, None)
            self._pending.discard(node)

        table.on_drop = on_drop

    def completed(self, node: Node, upper_st: os.stat_result | None) -> bool:
        """The kernel is about to hold the listing of `node` complete (`upper_st`: its upper
        dir's stat, None if it has none). Whether it must be dropped before that answer."""
        due = None if upper_st is None else self._policy.next_update(upper_st)
        if due is not None and due <= time.time_ns():
            self._cached.pop(node, None)
            return True
        self._cached[node] = due
        if due is not None:
            if len(self._deadlines) > 2 * len(self._cached) + 1024:
                # Mostly stale (listed again since, or forgotten): keep the live ones.
                self._deadlines = [entry for entry in self._deadlines
                                   if self._cached.get(entry[2]) == entry[0]]
                heapq.heapify(self._deadlines)
            heapq.heappush(self._deadlines, (due, next(self._order), node))
            if self._sleep is not None and due < self._wake_at:
                self._sleep.cancel()    # the timer sleeps past this one
        return False

    def touched(self, node: Node) -> None:
        """The daemon moved the upper dir's ctime: its next listing moves the atime."""
        if node in self._cached:
            del self._cached[node]
            self._pending.add(node)
            self.busy = True

    async def drop_pending(self) -> None:
        """Drop what `touched` left, and wait for drops that other requests started."""
        async with self._dropping:
            while self._pending:
                await self.drop_now(self._pending.pop())
            self.busy = False

    async def drop_now(self, node: Node) -> None:
        await trio.to_thread.run_sync(self._drop, node.ino)

    def expired(self, now: int) -> list[Node]:
        """The cached listings due by `now` (each forgotten), in deadline order."""
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, node = heapq.heappop(self._deadlines)
            if self._cached.get(node) == deadline:
                del self._cached[node]
                due.append(node)
        return due

    def next_deadline(self) -> int | None:
        while self._deadlines:
            deadline, _, node = self._deadlines[0]
            if self._cached.get(node) == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    async def run(self) -> None:
        """Drop each cached listing when its atime turns due, until cancelled."""
        while True:
            now = time.time_ns()
            for node in self.expired(now):
                await self.drop_now(node)
            deadline = self.next_deadline()
            self._wake_at = now + int(RECHECK_S * 1e9)
            if deadline is not None:
                self._wake_at = min(self._wake_at, deadline)
            with trio.CancelScope() as self._sleep:
                await trio.sleep(max(self._wake_at - now, 0) / 1e9)
            self._sleep = None
