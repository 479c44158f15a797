"""Bounded resources (hardening item 6): the daemon's open fds (/proc/PID/fd) and RSS (VmRSS)
stay flat over many cycles of mkdir/rmdir, create/unlink, open/close, opendir/closedir and
copy-up-then-unlink, all with fresh names each cycle.

Each kind of cycle is warmed up, then run in two halves; the fd count must not grow at all
after the warm-up and RSS must not grow in the second half beyond allocator noise. CI runs 5,000
cycles of mkdir/rmdir, create/unlink and open/close, and 2,000 of the others, after 1,000 for
warm-up; OVERLAYFUSE_SOAK=1 runs 100,000 of each (where a leak of a few dozen bytes a cycle
shows).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hardening import SOAK, daemon_fds, daemon_rss_kib
from overlayfuse import Overlay

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CYCLES = 100_000 if SOAK else 5_000
EXTRA_CYCLES = 100_000 if SOAK else 2_000      # the kinds beyond the three
WARM_UP = 1_000
# Allowed RSS growth over the second half, in KiB: allocator noise in CI; in soak mode half
# the run is 50,000 cycles, so 2 MiB is 40 bytes a cycle.
RSS_SLACK_KIB = 2048 if SOAK else 768


def settled(pid: int) -> tuple[int, int]:
    """(fds, RSS) once the kernel's asynchronous RELEASEs of the last cycle are served: the
    smallest fd count seen over a short while (a leaked fd never goes away)."""
    fds = daemon_fds(pid)
    for _ in range(20):
        time.sleep(0.01)
        fds = min(fds, daemon_fds(pid))
    return fds, daemon_rss_kib(pid)


def cycles(merged: Path) -> dict[str, Callable[[int], None]]:
    def mkdir_rmdir(i: int) -> None:
        os.mkdir(merged / "up" / f"d{i}")
        os.rmdir(merged / "up" / f"d{i}")

    def create_unlink(i: int) -> None:
        os.close(os.open(merged / "ld" / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(merged / "ld" / f"f{i}")

    def open_close(i: int) -> None:
        os.close(os.open(merged / "ld" / "lowerfile", os.O_RDONLY))
        fd = os.open(merged / "upperfile", os.O_RDWR)
        os.pwrite(fd, b"x", i % 100)
        os.close(fd)

    def opendir_closedir(i: int) -> None:
        os.listdir(merged / "ld")

    def rename_cycle(i: int) -> None:
        path = merged / "up" / f"r{i}"
        path.write_bytes(b"r")
        os.rename(path, merged / "up" / f"s{i}")
        os.unlink(merged / "up" / f"s{i}")

    def stat_missing(i: int) -> None:
        try:
            os.stat(merged / "ld" / f"missing{i}")
        except FileNotFoundError:
            pass

    def rename_dir_over_dir(i: int) -> None:
        os.mkdir(merged / "up" / f"a{i}")
        os.mkdir(merged / "up" / f"b{i}")
        os.rename(merged / "up" / f"a{i}", merged / "up" / f"b{i}")
        os.rmdir(merged / "up" / f"b{i}")

    return {"mkdir/rmdir": mkdir_rmdir, "rename dir over dir": rename_dir_over_dir, "create/unlink": create_unlink,
            "open/close": open_close, "opendir/closedir": opendir_closedir,
            "create/rename/unlink": rename_cycle, "negative lookup": stat_missing}


@pytest.mark.parametrize("kind", [
    "mkdir/rmdir", "create/unlink", "open/close",
    "opendir/closedir", "create/rename/unlink", "negative lookup",
    "rename dir over dir"])
def test_fds_and_rss_stay_flat(kind: str, make_stack, tmp_path: Path) -> None:
    lower = {"ld/lowerfile": "file:lower", **{f"ld/many{n}": "file:m" for n in range(50)}}
    stack = make_stack([lower], {"upperfile": "file:upper", "up": "dir"})
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                 log_file=tmp_path / "daemon.log") as overlay:
        process = overlay.process
        assert process is not None
        pid = process.pid
        cycle = cycles(stack["merged"])[kind]
        count = CYCLES if kind in ("mkdir/rmdir", "create/unlink", "open/close") \
            else EXTRA_CYCLES
        for i in range(WARM_UP):
            cycle(i)
        samples = [settled(pid)]
        for half in range(2):
            for i in range(WARM_UP + half * (count // 2), WARM_UP + (half + 1) * (count // 2)):
                cycle(i)
            samples.append(settled(pid))
        assert process.poll() is None
    (fd0, rss0), (fd1, rss1), (fd2, rss2) = samples
    print(f"{kind}: fds {fd0} {fd1} {fd2}; RSS {rss0} {rss1} {rss2} KiB")
    assert fd0 == fd1 == fd2, f"open fds {fd0} -> {fd1} -> {fd2}"
    assert rss2 - rss1 <= RSS_SLACK_KIB, \
        f"RSS {rss0} -> {rss1} -> {rss2} KiB (+{rss2 - rss1} KiB over the second half)"
