"""The mount table: is a path mounted, wait until it is, unmount it. Mounting an overlay is
`overlay.Overlay` / `overlay.KernelOverlay`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

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
