"""The three implementations under test, each mounted fresh over the same lower layers with
an upper and work dir of its own, and unmounted afterwards (the daemon stopped by its pid);
and the floor (bench/floorfs.py), a minimal pyfuse3 filesystem showing the same names.

Built on overlayfuse.mounts (unmount, wait_mounted)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from overlayfuse import KernelOverlay, mounts

OVERLAYFUSE = "overlayfuse"
FUSE_OVERLAYFS = "fuse-overlayfs"
KERNEL = "kernel"
ALL = (OVERLAYFUSE, FUSE_OVERLAYFS, KERNEL)
FLOOR = "floor"
REPO = Path(__file__).resolve().parent.parent


# The overlayfuse command to time: run.py sets the benchmark's non-editable install of this
# checkout (bench/install.py); unset, the one beside this interpreter, then the one on PATH.
command: str | None = None


def overlayfuse_binary() -> str:
    if command is not None:
        return command
    beside = Path(sys.executable).parent / "overlayfuse"
    if beside.exists():
        return str(beside)
    found = shutil.which("overlayfuse")
    if found is None:
        raise RuntimeError("overlayfuse is not installed: run scripts/setup")
    return found


def available() -> dict[str, str | None]:
    """Each implementation: None if it can be benchmarked here, else why not."""
    reasons: dict[str, str | None] = {OVERLAYFUSE: None}
    reasons[FUSE_OVERLAYFS] = None if shutil.which("fuse-overlayfs") else \
        "fuse-overlayfs is not installed"
    reasons[KERNEL] = KernelOverlay.unavailable()
    return reasons


def version_of(impl: str) -> str:
    try:
        if impl == FUSE_OVERLAYFS:
            out = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True,
                                 text=True, timeout=10)
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("fuse-overlayfs"):
                    return line.split("version", 1)[-1].strip(" :")
        if impl == OVERLAYFUSE:
            import overlayfuse
            return overlayfuse.__version__
    except (OSError, subprocess.SubprocessError):
        pass
    return os.uname().release if impl == KERNEL else "?"


@dataclass
class Mounted:
    impl: str
    mnt: Path
    upper: Path
    work: Path
    pid: int | None      # the daemon's; None for the kernel
    command_seconds: float = 0.0        # the mount command, from start to return
    first_stat_seconds: float = 0.0     # from its start to the first stat of the root answered

    def status(self) -> dict[str, float | int | None]:
        """The daemon's resident memory (MB) and open fds, now."""
        if self.pid is None:
            return {"rss_mb": None, "fds": None}
        rss = None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) / 1024
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return {"rss_mb": None, "fds": None}
        return {"rss_mb": rss, "fds": fds}


def _options(lowers: list[Path], upper: Path, work: Path, extra: tuple[str, ...]) -> str:
    return ",".join((f"lowerdir={':'.join(map(str, lowers))}", f"upperdir={upper}",
                     f"workdir={work}", *extra))


def _cmdline(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _is_live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def find_daemon(mnt: Path, timeout: float = 5.0) -> int:
    """The pid of the live process whose command line names this (unique) mountpoint."""
    want = os.fsencode(str(mnt))
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and want in _cmdline(p)]
        pids = [p for p in pids if _is_live(p)]
        if len(pids) == 1:
            return pids[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one daemon serving {mnt}, found {pids}")
        time.sleep(0.05)


def mount_command(impl: str, lowers: list[Path], upper: Path, work: Path, mnt: Path,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """The mount command, with `extra` mount options after the layers (e.g. metacopy=on)."""
    options = _options(lowers, upper, work, extra)
    if impl == KERNEL:
        return ["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)]
    binary = overlayfuse_binary() if impl == OVERLAYFUSE else "fuse-overlayfs"
    return [binary, "-o", options, str(mnt)]


def mount_floor(lists: list[Path], scratch: Path, serial: int) -> Mounted:
    """Start the floor filesystem showing the files of `lists` on a fresh mountpoint."""
    where = scratch / f"{FLOOR}-{serial}"
    mnt = where / "mnt"
    mnt.mkdir(parents=True)
    start = time.perf_counter()
    daemon = subprocess.Popen([sys.executable, "-m", "bench.floorfs", *map(str, lists), str(mnt)],
                              cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        mounts.wait_mounted(mnt, daemon)
    except (RuntimeError, TimeoutError):
        daemon.kill()
        daemon.wait()
        mounts.unmount(mnt)
        raise
    os.stat(mnt)
    answered = time.perf_counter()
    return Mounted(FLOOR, mnt, where / "upper", where / "work", daemon.pid,
                   answered - start, answered - start)


def mount(impl: str, lowers: list[Path], scratch: Path, serial: int,
          extra: tuple[str, ...] = ()) -> Mounted:
    """Mount `impl` on a fresh mountpoint with a fresh upper and work dir under `scratch`,
    with `extra` mount options."""
    where = scratch / f"{impl}-{serial}"
    upper, work, mnt = where / "upper", where / "work", where / "mnt"
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    command = mount_command(impl, lowers, upper, work, mnt, extra)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
    returned = time.perf_counter()
    if done.returncode != 0:
        raise RuntimeError(f"{impl} failed to mount: {done.stderr.decode(errors='replace')}")
    mounts.wait_mounted(mnt)        # returns at once: each of them mounts before it returns
    os.stat(mnt)
    answered = time.perf_counter()
    return Mounted(impl, mnt, upper, work, None if impl == KERNEL else find_daemon(mnt),
                   returned - start, answered - start)


def unmount(m: Mounted, timeout: float = 30.0) -> None:
    """Unmount, wait for the daemon to exit (killing it by pid if it will not), and remove
    the upper, work and mountpoint."""
    if m.impl == KERNEL:
        mounts.unmount(m.mnt)
    else:
        subprocess.run(["fusermount3", "-u", str(m.mnt)], capture_output=True)
        mounts.unmount(m.mnt)       # no-op if that worked; lazy fallbacks if busy
        if m.pid is not None:
            deadline = time.monotonic() + timeout
            while _is_live(m.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _is_live(m.pid):
                os.kill(m.pid, signal.SIGKILL)
                mounts.unmount(m.mnt)
            if m.impl == FLOOR:     # our child: reap it
                os.waitpid(m.pid, 0)
    if mounts.is_mounted(m.mnt):
        raise RuntimeError(f"{m.mnt} is still mounted")
    shutil.rmtree(m.mnt.parent)
