"""atime mount options (noatime, relatime = the default, strictatime, nodiratime), compared
with kernel overlayfs on the same stack: which reads, listings and execs move the atime of
what the mount shows. Lower layers are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from layerspec import build_stack
from overlayfuse import KernelOverlay, Overlay, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LOWERS = [{"low": "file:lower", "ldir/x": "file:x"}]
UPPER = {"up": "file:upper", "dir/x": "file:x", "updir/y": "file:y"}
DAY = 24 * 3600
TICK = 0.05     # more than the kernel's timestamp granularity (a jiffy)


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
        if name == "kernel":
            mount = KernelOverlay(stack["lowers"], stack["upper"], stack["work"],
                                  stack["merged"], options=options)
        else:
            mount = mount_ofs(stack, options=options)
        with mount:
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
