"""Rootless podman, timed: `podman run --rm IMG true` and a 4-step `podman build --no-cache`
as a real non-root user, with overlayfuse and with fuse-overlayfs as the mount program, and
with podman's native overlay (kernel overlayfs in the user's namespace).

The user, its subordinate ids and podman configuration, and the offline busybox image come
from tests/test_rootless_podman.py (its `User`, `_rootfs_tarball` and `CONTAINERFILE`), under
a user name of its own so that the test and the benchmark can run at once. overlayfuse's mount
program is the benchmark's non-editable install of this checkout (bench/install.py), on an
interpreter every user can run. With `--editable` (the user cannot run this worktree's `.venv`:
its interpreter may sit where only root can read) it is a wrapper that runs the installed
command's interpreter (`/usr/local/bin/overlayfuse`, which carries pyfuse3 and trio) on this
checkout's package.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import impls as implementations
from .impls import FUSE_OVERLAYFS, KERNEL, OVERLAYFUSE
from .phases import Metric

REPO = Path(__file__).resolve().parent.parent
INSTALLED = Path("/usr/local/bin/overlayfuse")
USER = "ofs-bench"
SUBIDS = "500000-565535"        # apart from the test's user's
IMAGE = "localhost/bb"
TRUE = ("busybox", "true")      # the image has no `true` link; this is the same program

PODMAN_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("podman_run", "podman run --rm IMG true (median of the runs)", "s"),
    Metric("podman_build", "podman build --no-cache, 4 steps (median)", "s"),
)}


@dataclass(frozen=True)
class PodmanSpec:
    runs: int = 20
    builds: int = 3


QUICK = PodmanSpec(runs=3, builds=1)


def _rootless_module() -> ModuleType:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import test_rootless_podman
    finally:
        sys.path.remove(str(REPO / "tests"))
    return test_rootless_podman


def unavailable() -> str | None:
    """Why the podman runs cannot be done here, or None."""
    if os.geteuid() != 0:
        return "needs root to make a user"
    missing = [pkg for cmd, pkg in (("podman", "podman"), ("runc", "runc"),
                                    ("newuidmap", "uidmap"), ("busybox", "busybox-static"))
               if shutil.which(cmd) is None]
    if missing:
        return f"needs the Debian packages {' '.join(missing)}"
    if implementations.command is None and not os.access(INSTALLED, os.X_OK):
        return f"{INSTALLED} is not installed (scripts/setup installs it)"
    return None


def _interpreter(command: Path) -> str:
    with open(command, "rb") as script:
        return script.readline()[2:].strip().decode()


def _wrapper(where: Path) -> Path:
    """An executable for the user that runs this checkout's overlayfuse."""
    path = where / "overlayfuse"
    path.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {_interpreter(INSTALLED)} "
                    "-m overlayfuse \"$@\"\n")
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def _user() -> Iterator[tuple[object, Path]]:
    rootless = _rootless_module()
    base = Path(tempfile.mkdtemp(prefix="ofs-bench-podman-", dir="/tmp"))
    os.chmod(base, 0o755)
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)    # what a normal system has
    user = None
    try:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(USER)     # an interrupted earlier run's
            subprocess.run(["userdel", "--force", USER], capture_output=True)
        user = rootless.User(base, name=USER, subids=SUBIDS)
        yield user, base
    finally:
        if user is not None:
            user.stop_podman()
            user.remove()
        else:
            shutil.rmtree(base, ignore_errors=True)
        os.chmod("/dev/fuse", fuse_mode)


def run(spec: PodmanSpec, impls: list[str], log: Callable[[str], None],
        record: Callable[[str, str, float], None],
        problem: Callable[[str, str, str], None]) -> str:
    """Time each implementation; returns the overlayfuse mount program used."""
    rootless = _rootless_module()
    with _user() as (user, base):
        programs = {OVERLAYFUSE: implementations.command or str(_wrapper(base)),
                    FUSE_OVERLAYFS: shutil.which("fuse-overlayfs"), KERNEL: None}
        (user.home / "Containerfile").write_text(rootless.CONTAINERFILE)
        for impl in impls:
            user.stop_podman()
            user.configure(programs[impl])
            try:
                user.podman("import", "-", f"{IMAGE}:latest", stdin=rootless._rootfs_tarball())
                user.podman("run", "--rm", IMAGE, *TRUE)   # untimed: the pause process
                runs = []
                for _ in range(spec.runs):
                    start = time.perf_counter()
                    user.podman("run", "--rm", IMAGE, *TRUE)
                    runs.append(time.perf_counter() - start)
                record("podman_run", impl, statistics.median(runs))
                builds = []
                for _ in range(spec.builds):
                    start = time.perf_counter()
                    user.podman("build", "--no-cache", "--network", "none", "-t",
                                "localhost/built", "-f", str(user.home / "Containerfile"),
                                str(user.home))
                    builds.append(time.perf_counter() - start)
                record("podman_build", impl, statistics.median(builds))
                log(f"  podman {impl:15s} runs {' '.join(f'{t:.2f}' for t in runs)}; "
                    f"builds {' '.join(f'{t:.2f}' for t in builds)}")
            except (AssertionError, subprocess.TimeoutExpired) as e:   # User.run asserts
                # podman's exit status
                problem(impl, "podman", str(e)[-1000:])
            finally:
                user.stop_podman()
        return programs[OVERLAYFUSE]
