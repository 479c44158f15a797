"""`mount -o remount,ro MNT` and back to rw, through mount(8) for real, compared with kernel
overlayfs: the existing mount changes, and no second overlay is ever stacked on it.

mount(8) runs mount.fuse3, which starts `overlayfuse` through /bin/sh with sh's default PATH.
So that it finds this checkout's command without touching the machine's /usr/local, each
scenario runs in a private mount namespace where a directory holding `overlayfuse` is bound
over /usr/local/sbin, the first directory of that PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerspec import build_stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

COMMAND = Path(sys.executable).parent / "overlayfuse"

SCENARIO = r"""
import errno, json, os, subprocess, sys
fstype, options, merged, bin_dir = sys.argv[1:]
subprocess.run(["mount", "--bind", bin_dir, "/usr/local/sbin"], check=True)

def mounts_at():
    with open("/proc/self/mountinfo") as f:
        found = [line.split() for line in f if line.split()[4] == merged]
    return [(fields[fields.index("-") + 1][:4], fields[5].split(",")[0]) for fields in found]

def write(name):
    try:
        with open(os.path.join(merged, name), "w") as f:
            f.write(name)
        return 0
    except OSError as e:
        return errno.errorcode[e.errno]

def mount(*args):
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return [done.returncode, done.stderr.strip()]

steps = {}
steps["mount"] = mount("-t", fstype, "overlay", merged, "-o", options)
try:
    steps["mounted"] = [mounts_at(), write("a")]
    held = open(os.path.join(merged, "a"), "a")
    # Refused (EBUSY): mount(8) exits with 32 for the kernel, with the helper's 1 for FUSE.
    steps["ro while open for writing"] = [mount("-o", "remount,ro", merged)[0] != 0,
                                          mounts_at()]
    held.close()
    # With the layers given again, as from an fstab entry: ignored, as by the kernel.
    steps["remount ro"] = [mount("-o", "remount,ro," + options, merged), mounts_at(), write("b"),
                           open(os.path.join(merged, "a")).read()]
    steps["remount rw"] = [mount("-o", "remount,rw", merged), mounts_at(), write("c")]
finally:
    subprocess.run(["umount", merged], capture_output=True)
    steps["after umount"] = mounts_at()
    for _ in steps["after umount"]:     # what a failure stacked: its daemon must not linger
        subprocess.run(["umount", "-l", merged], capture_output=True)
print(json.dumps(steps))
"""


def _run(fstype: str, stack: dict, bin_dir: Path) -> dict:
    lowers = ":".join(str(p) for p in stack["lowers"])
    options = f"lowerdir={lowers},upperdir={stack['upper']},workdir={stack['work']}"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           "-c", SCENARIO, fstype, options, str(stack["merged"]), str(bin_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_remount_ro_and_rw_through_mount8_matches_kernel(tmp_path: Path, kernel_available: None
                                                         ) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "overlayfuse").symlink_to(COMMAND)
    layers = [{"f": "file:lower"}, {"g": "file:bottom"}]
    kernel = _run("overlay", build_stack(tmp_path / "kernel", layers), bin_dir)
    ofs = _run("fuse.overlayfuse", build_stack(tmp_path / "ofs", layers), bin_dir)
    assert kernel["remount ro"][1] == [["over", "ro"]]     # the kernel's own verdict
    for step in kernel:
        if step == "mount":
            assert ofs[step] == kernel[step] == [0, ""]
            continue
        # Same outcome, with the type (overlay / fuse) left out.
        assert json.dumps(ofs[step]).replace("fuse", "over") == json.dumps(kernel[step]), step


def test_remount_of_a_mount_without_upper_cannot_make_it_writable(tmp_path: Path) -> None:
    stack = build_stack(tmp_path / "s", [{"f": "file:lower"}])
    merged = str(stack["merged"])
    subprocess.run([COMMAND, "-o", f"lowerdir={stack['lowers'][0]}", merged], check=True)
    try:
        done = subprocess.run([COMMAND, "overlay", merged, "-o", "rw,remount"],
                              capture_output=True, text=True)
        with open("/proc/self/mountinfo") as mountinfo:
            at_merged = [line.split() for line in mountinfo if line.split()[4] == merged]
    finally:
        subprocess.run(["umount", merged], check=True)
    assert done.returncode == 1
    assert done.stderr == ("overlayfuse: cannot remount read-write: mounted without a writable "
                           f"upper layer: {merged} (Read-only file system)\n")
    assert len(at_merged) == 1 and at_merged[0][5].startswith("ro")


def test_remount_of_something_not_mounted_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([COMMAND, "-o", "remount,ro", str(tmp_path)], capture_output=True,
                          text=True)
    assert (done.returncode, done.stderr) == (
        1, f"overlayfuse: cannot remount: not a mount point: {tmp_path} (Invalid argument)\n")
