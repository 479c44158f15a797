"""Mounting overlays for tests, benchmarks and the comparison tool: overlayfuse in a child
process or kernel overlayfs, each always unmounted by the context manager; and the checks and
unmounts they share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

MOUNT_WAIT = 20.0


def is_mounted(path: str | os.PathLike[str]) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            if _unescape(line.split()[4]) == target:
                return True
    return False


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def unmount(path: str | os.PathLike[str]) -> None:
    """Unmount, lazily if it is busy; a no-op if nothing is mounted there."""
    if not is_mounted(path):
        return
    for command in (["fusermount3", "-u", str(path)], ["umount", str(path)],
                    ["umount", "-l", str(path)], ["fusermount3", "-u", "-z", str(path)]):
        if shutil.which(command[0]) is None:
            continue
        if subprocess.run(command, capture_output=True).returncode == 0 and not is_mounted(path):
            return


def wait_mounted(path: str | os.PathLike[str], process: subprocess.Popen[bytes] | None = None,
                 timeout: float = MOUNT_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mount process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not mounted within {timeout} s")
        time.sleep(0.01)


def overlayfuse_command() -> list[str]:
    return [sys.executable, "-m", "overlayfuse"]


@contextlib.contextmanager
def overlayfuse(lowers: Sequence[os.PathLike[str] | str], upper: os.PathLike[str] | str | None,
                work: os.PathLike[str] | str | None, merged: os.PathLike[str] | str,
                extra: Sequence[str] = (), log_file: os.PathLike[str] | str | None = None
                ) -> Iterator[subprocess.Popen[bytes]]:
    """overlayfuse in the foreground in a child process (so its pid is known), for the
    duration of the block."""
    opts = ["lowerdir=" + ":".join(str(p).replace(":", "\\:") for p in lowers)]
    if upper is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
    command = [*overlayfuse_command(), "-f", "-o", ",".join(opts), *extra, str(merged)]
    if log_file is not None:
        command[len(overlayfuse_command()):len(overlayfuse_command())] = ["--log-file",
                                                                          str(log_file)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_mounted(merged, process)
        yield process
    finally:
        stop(process, merged)


def stop(process: subprocess.Popen[bytes], merged: os.PathLike[str] | str) -> None:
    unmount(merged)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        unmount(merged)


@contextlib.contextmanager
def kernel_overlay(lowers: Sequence[os.PathLike[str] | str], upper: os.PathLike[str] | str | None,
                   work: os.PathLike[str] | str | None, merged: os.PathLike[str] | str,
                   extra_options: str = "") -> Iterator[None]:
    options = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None:
        options += f",upperdir={upper},workdir={work}"
    if extra_options:
        options += "," + extra_options
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                   check=True, capture_output=True)
    try:
        yield
    finally:
        unmount(merged)


def kernel_overlay_available() -> str | None:
    """None when kernel overlayfs can be mounted here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "kernel overlayfs needs root"
    with open("/proc/filesystems") as filesystems:
        if not any(line.split()[-1] == "overlay" for line in filesystems):
            subprocess.run(["modprobe", "overlay"], capture_output=True)
    with open("/proc/filesystems") as filesystems:
        if not any(line.split()[-1] == "overlay" for line in filesystems):
            return "kernel overlayfs is not available"
    return None
