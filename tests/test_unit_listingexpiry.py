"""When the daemon drops a listing the kernel holds complete, under relatime
(listingexpiry.py), without a mount: the clock is trio's mock clock, and the wall clock the
relatime rule reads follows it. test_atime.py checks the same rules through the kernel."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from overlayfuse import listingexpiry
from overlayfuse.atime import RELATIME_MAX_AGE_NS, AtimePolicy
from overlayfuse.inodes import ROOT_INO, Node, NodeTable

EPOCH = 1_700_000_000 * 10**9
S = 10**9


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(autouse=True)
def wall_clock_follows_trio(monkeypatch) -> None:
    monkeypatch.setattr(listingexpiry.time, "time_ns",
                        lambda: EPOCH + int(trio.current_time() * S))

    # Drops run inline, not in a worker thread: the mock clock jumps while a task waits for
    # a thread.
    async def inline(fn, *args):
        return fn(*args)

    monkeypatch.setattr(listingexpiry.trio.to_thread, "run_sync", inline)


def _table_with_dirs(count: int) -> tuple[NodeTable, list[Node]]:
    table = NodeTable(fs_tags={10: 0})
    root = Node(ino=ROOT_INO, parent=None, name=b"", is_dir=True, layers=(0,),
                real_inos=(ROOT_INO,), identity=("root",), nlookup=1)
    table.add(root)
    nodes = []
    for n in range(count):
        node = Node(ino=50 + n, parent=root, name=b"d%d" % n, is_dir=True, layers=(0,),
                    real_inos=(50 + n,), identity=("d", n), nlookup=1)
        table.add(node)
        root.nchildren += 1
        nodes.append(node)
    return table, nodes


def _stat(atime: int, mtime: int, ctime: int) -> os.stat_result:
    return os.stat_result((0o40755, 1, 0, 2, 0, 0, 0, atime // S, mtime // S, ctime // S,
                           0, 0, 0, atime, mtime, ctime))


def _now() -> int:
    return EPOCH + int(trio.current_time() * S)


async def test_a_listing_is_dropped_when_its_atime_turns_a_day_old(autojump_clock) -> None:
    table, (soon, later, lower) = _table_with_dirs(3)
    dropped: list[tuple[int, float]] = []
    expiry = listingexpiry.ListingExpiry(
        table, AtimePolicy(), lambda ino: dropped.append((ino, trio.current_time())))
    start = trio.current_time()
    day_ago = _now() - RELATIME_MAX_AGE_NS
    # atime after mtime and ctime: due 5 s and 500 s from now; a lower dir never.
    assert not expiry.completed(later, _stat(day_ago + 500 * S, day_ago, day_ago))
    assert not expiry.completed(lower, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(expiry.run)
        await trio.sleep(1)
        # Sooner than what the timer sleeps for: it wakes for this one.
        assert not expiry.completed(soon, _stat(day_ago + 5 * S, day_ago, day_ago))
        await trio.sleep(3.9)
        assert dropped == []
        await trio.sleep(0.2)
        assert [ino for ino, _ in dropped] == [soon.ino]
        await trio.sleep(500)
        nursery.cancel_scope.cancel()
    assert [(ino, round(at - start, 3)) for ino, at in dropped] == [(soon.ino, 5), (later.ino, 500)]


async def test_a_listing_due_already_is_dropped_before_its_end_is_answered() -> None:
    table, (node,) = _table_with_dirs(1)
    expiry = listingexpiry.ListingExpiry(table, AtimePolicy(), lambda ino: None)
    now = _now()
    assert expiry.completed(node, _stat(now, now, now - S))     # atime not after the mtime
    assert expiry.completed(node, _stat(now, now - S, now))     # nor after the ctime
    assert expiry.completed(node, _stat(now - RELATIME_MAX_AGE_NS, now - 2 * RELATIME_MAX_AGE_NS,
                                        now - 2 * RELATIME_MAX_AGE_NS))
    assert not expiry.completed(node, _stat(now, now - S, now - S))
    strict = listingexpiry.ListingExpiry(table, AtimePolicy(strictatime=True), lambda ino: None)
    assert strict.completed(node, _stat(now, now - S, now - S))


async def test_a_touched_dir_is_dropped_once_before_the_reply(autojump_clock) -> None:
    table, (cached, other) = _table_with_dirs(2)
    dropped: list[int] = []
    expiry = listingexpiry.ListingExpiry(table, AtimePolicy(), dropped.append)
    now = _now()
    assert not expiry.completed(cached, _stat(now, now - S, now - S))
    expiry.touched(other)           # the kernel holds no listing of it: nothing to drop
    assert not expiry.busy
    expiry.touched(cached)
    assert expiry.busy
    await expiry.drop_pending()
    assert dropped == [cached.ino] and not expiry.busy
    expiry.touched(cached)          # dropped already: until its next listing completes
    assert not expiry.busy
    # Nor does its old deadline drop it again.
    assert expiry.expired(now + 2 * RELATIME_MAX_AGE_NS) == []


async def test_a_forgotten_dir_is_forgotten_here_too(autojump_clock) -> None:
    table, (node,) = _table_with_dirs(1)
    expiry = listingexpiry.ListingExpiry(table, AtimePolicy(), lambda ino: None)
    now = _now()
    assert not expiry.completed(node, _stat(now, now - S, now - S))
    table.forget(node.ino, 1)
    expiry.touched(node)
    assert not expiry.busy and expiry.next_deadline() is None


async def test_deadlines_of_listings_completed_again_do_not_pile_up() -> None:
    table, (node,) = _table_with_dirs(1)
    expiry = listingexpiry.ListingExpiry(table, AtimePolicy(), lambda ino: None)
    now = _now()
    for n in range(5000):
        assert not expiry.completed(node, _stat(now + n, now - S, now - S))
    assert len(expiry._deadlines) <= 1024 + 3
    assert expiry.next_deadline() == now + 4999 + RELATIME_MAX_AGE_NS
