"""atime mount options (noatime, relatime = the default, strictatime, nodiratime), compared
with kernel overlayfs on the same stack: which reads, listings and execs move the atime of
what the mount shows. Lower layers are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from layerspec import build_stack
from overlayfuse import KernelOverlay, Overlay, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LOWERS = [{"low": "file:lower", "ldir/x": "file:x"}]
UPPER = {"up": "file:upper", "dir/x": "file:x", "updir/y": "file:y"}
DAY = 24 * 3600
TICK = 0.05     # more than the kernel's timestamp granularity (a jiffy)



def _mount(kind: str, stack: dict, options: tuple[str, ...],
           mount_ofs: Callable[..., Overlay]) -> KernelOverlay | Overlay:
    """Kernel overlayfs or overlayfuse on `stack`, with the same options."""
    if kind == "kernel":
        return KernelOverlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                             options=options)
    return mount_ofs(stack, options=options)

def _atime(path: Path) -> int:
    return os.stat(path).st_atime_ns


def _read(path: Path) -> None:
    with open(path, "rb") as f:
        f.read()


def _moved(path: Path, act, ages: tuple[int, int] | None = None) -> bool:
    """Whether `act` moves the atime of `path`; first its (atime, mtime) are set that many
    seconds ago, unless None."""
    if ages is not None:
        now = time.time_ns()
        os.utime(path, ns=(now - ages[0] * 10**9, now - ages[1] * 10**9))
    before = _atime(path)
    time.sleep(TICK)
    act(path)
    return _atime(path) != before


def _scenario(merged: Path, lower: Path) -> dict[str, bool]:
    shutil.copy("/bin/true", merged / "prog")
    os.chmod(merged / "prog", 0o755)
    lower_before = _atime(lower / "low")
    seen = {
        "read, atime before mtime": _moved(merged / "up", _read, ages=(200, 100)),
        "read again": _moved(merged / "up", _read),
        "read, atime a day old": _moved(merged / "up", _read, ages=(DAY + 60, 2 * DAY)),
        "exec, atime before mtime": _moved(merged / "prog", lambda p: subprocess.run([p]),
                                           ages=(200, 100)),
        "exec again": _moved(merged / "prog", lambda p: subprocess.run([p])),
        "listdir, atime before mtime": _moved(merged / "dir", os.listdir, ages=(200, 100)),
        "listdir again": _moved(merged / "dir", os.listdir),
        "read of a lower file": _moved(merged / "low", _read),
        "listdir of a lower dir": _moved(merged / "ldir", os.listdir),
    }
    with open(merged / "up", "ab") as f:       # a write moves the mtime past the atime
        f.write(b"more")
    seen["read after a write"] = _moved(merged / "up", _read)
    seen["read after a write, again"] = _moved(merged / "up", _read)
    seen["lower layer touched"] = _atime(lower / "low") != lower_before
    return seen


@pytest.mark.parametrize("option", ["", "relatime", "noatime", "strictatime", "nodiratime",
                                    "strictatime,nodiratime"])
def test_atime_follows_the_mount_option_as_in_the_kernel(make_stack, mount_ofs, kernel_available,
                                                         option: str) -> None:
    results = {}
    for name in ("kernel", "ofs"):
        stack = make_stack(LOWERS, UPPER, name=name)
        options = tuple(option.split(",")) if option else ()
        with _mount(name, stack, options, mount_ofs):
            results[name] = _scenario(stack["merged"], stack["lowers"][0])
    assert results["ofs"] == results["kernel"]
    # Not vacuous: each option lets some things move and keeps others still.
    assert not results["kernel"]["lower layer touched"]
    assert results["kernel"]["read, atime before mtime"] == (option != "noatime")


@pytest.mark.parametrize("upper_fs_option", ["noatime", "strictatime"])
def test_the_upper_filesystems_own_atime_option_does_not_count(tmp_path: Path, kernel_available,
                                                               upper_fs_option: str) -> None:
    # The kernel reads the upper layer through a copy of its mount without atime flags: the
    # overlay's default (relatime) rules, whatever the upper filesystem was mounted with.
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64m,{upper_fs_option}", "tmpfs",
                    str(fs)], check=True, capture_output=True)
    try:
        results = {}
        for name in ("kernel", "ofs"):
            stack = build_stack(fs / name, LOWERS, UPPER)
            mount = (KernelOverlay if name == "kernel" else Overlay)(
                stack["lowers"], stack["upper"], stack["work"], stack["merged"])
            with mount:
                results[name] = _scenario(stack["merged"], stack["lowers"][0])
    finally:
        mounts.unmount(fs)
    assert results["ofs"] == results["kernel"]
    assert results["kernel"]["read, atime before mtime"] and not results["kernel"]["read again"]



DIR_LOWERS = [{"m/low": "file:l", "m/sub/y": "file:y", "l/x": "file:x"}]
DIR_UPPER = {"m/up": "file:u"}

# Changes made through the mount that move a dir's upper ctime and not its names: (what, the
# dir listed before, the dir listed after, the change).
DIR_CHANGES = [
    ("chmod", "m", "m", lambda m: os.chmod(m / "m", 0o750)),
    ("setxattr", "m", "m", lambda m: os.setxattr(m / "m", "user.k", b"v")),
    ("removexattr", "m", "m", lambda m: os.removexattr(m / "m", "user.k")),
    ("utimes", "m", "m", lambda m: os.utime(m / "m")),
    ("copy-up into it", "m", "m", lambda m: os.chmod(m / "m/low", 0o600)),
    ("copy-up of it", "l", "l", lambda m: os.chmod(m / "l/x", 0o600)),
    ("rename", "m", "m2", lambda m: os.rename(m / "m", m / "m2")),
    ("rename back", "m2", "m", lambda m: os.rename(m / "m2", m / "m")),
]


def _listed_after_a_change(merged: Path, before: str, after: str, change) -> bool:
    """Whether a listing moves the atime once the dir's listing is warm (listed twice) and
    `change` has been made."""
    os.listdir(merged / before)
    time.sleep(TICK)
    os.listdir(merged / before)
    time.sleep(TICK)
    change(merged)
    return _moved(merged / after, os.listdir)


@pytest.mark.parametrize("option", ["", "strictatime", "noatime"])
def test_a_warm_listing_moves_the_atime_after_a_change_of_the_dir_as_in_the_kernel(
        make_stack, mount_ofs, kernel_available, option: str) -> None:
    # A cached listing must not hide the listing that the kernel's relatime rule makes move
    # the atime: the first after any change that moves the upper dir's ctime.
    results = {}
    for name in ("kernel", "ofs"):
        stack = make_stack(DIR_LOWERS, DIR_UPPER, name=name)
        options = (option,) if option else ()
        with _mount(name, stack, options, mount_ofs):
            merged = stack["merged"]
            results[name] = {what: _listed_after_a_change(merged, before, after, change)
                             for what, before, after, change in DIR_CHANGES}
            results[name]["listdir again"] = _moved(merged / "m", os.listdir)
            # An mtime ahead of the clock: the atime each listing sets is not after it.
            results[name]["listdir, mtime ahead"] = _moved(merged / "m", os.listdir,
                                                          ages=(200, -3600))
            results[name]["listdir, mtime ahead, again"] = _moved(merged / "m", os.listdir)
    # The kernel also asks the overlay inode's own times, which a copy-up into the dir leaves
    # as they were: there its next listing moves no atime (docs/behaviour.md, atime).
    for seen in results.values():
        seen.pop("copy-up into it")
    assert results["ofs"] == results["kernel"]
    assert results["kernel"]["chmod"] == (option != "noatime")
    assert results["kernel"]["listdir again"] == (option == "strictatime")
    assert results["kernel"]["listdir, mtime ahead, again"] == (option != "noatime")
