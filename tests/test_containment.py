"""Containment (hardening item 1): the daemon reaches nothing outside its layers.

Hostile layers point symlinks at a canary directory outside the layers (absolutely, through
`..` chains, and at /etc), put a symlink in one layer where another has a directory (both
ways round), pass layer roots that are themselves symlinks, and use names with newlines,
non-UTF-8 bytes and 255 bytes. Every test drives reads, writes, copy-ups, renames and
removals through the mount (never following a symlink on the client side, so that only the
daemon could reach the canary), compares with kernel overlayfs on an identical stack, and
then checks that the canary is byte-identical with its atime, mtime and ctime untouched.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hardening import errno_of, full_snapshot, make_canary, tmpfs
from layerspec import build_layer, raw_snapshot, snapshot
from overlayfuse import KernelOverlay, Overlay, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

def _on_fd(path: Path, flags: int, action: Callable[[int], object]) -> None:
    """Open `path` without following a final symlink, act on the fd, close it."""
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    try:
        action(fd)
    finally:
        os.close(fd)


def append(path: Path, data: bytes) -> None:
    _on_fd(path, os.O_WRONLY | os.O_APPEND, lambda fd: os.write(fd, data))


def create(path: Path, data: bytes = b"new") -> None:
    _on_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, lambda fd: os.write(fd, data))


def truncate(path: Path, size: int) -> None:
    _on_fd(path, os.O_WRONLY, lambda fd: os.ftruncate(fd, size))


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "canary"
    return root, make_canary(root)


def hostile_layers(canary: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Layers whose symlinks all lead out of the stack (to the canary or /etc)."""
    etc_chain = "symlink:" + "../" * 40 + "etc"
    lower0 = {
        "a": f"symlink:{canary}",                 # upper has dir a
        "b/x": "file:lower b/x",                  # lower1 has symlink b
        "c/y": "file:lower c/y",                  # upper has symlink c
        "d": etc_chain,                           # upper has dir d
        "e": "symlink:/etc",                      # lower1 has dir e
        "g/file": "file:g file",
        "g/sub/file": "file:g sub file",          # lower1 has symlink g/sub
        "h": f"symlink:{canary}/sub",             # upper and lower1 have dir h
        "deep/up": "symlink:../..",
        "deep/out": "symlink:../../../canary",    # relative chain to the canary
        "deep/canary": "symlink:../../../canary",  # upper has dir deep/canary
        "deep/f": "file:deep f",
        "j/k": f"symlink:{canary}/secret",        # a symlink to a file outside
    }
    lower1 = {
        "b": "symlink:../../canary",
        "e/passwd": "file:not the host's",
        "g/sub": f"symlink:{canary}",
        "h/lowerfile": "file:h lower",
        "m": f"symlink:{canary}",
        "n/o": f"symlink:{canary}/sub",
    }
    upper = {
        "a/u": "file:upper a/u",
        "c": f"symlink:{canary}",
        "d/keep": "file:d keep",
        "h/uf": "file:h upper",
        "deep/canary/inup": "file:in upper",
    }
    return [lower0, lower1], upper


def hostile_operations(merged: Path) -> dict[str, int]:
    """Reads, writes, copy-ups, renames, removals; never following a symlink client-side."""
    ops: dict[str, Callable[[], object]] = {
        "lstat a/secret": lambda: os.lstat(merged / "a/secret"),
        "lstat b/secret": lambda: os.lstat(merged / "b/secret"),
        "lstat d/passwd": lambda: os.lstat(merged / "d/passwd"),
        "lstat g/sub/secret": lambda: os.lstat(merged / "g/sub/secret"),
        "lstat h/file": lambda: os.lstat(merged / "h/file"),
        "lstat h/lowerfile": lambda: os.lstat(merged / "h/lowerfile"),
        "lstat deep/canary/secret": lambda: os.lstat(merged / "deep/canary/secret"),
        "list a": lambda: os.listdir(merged / "a"),
        "list deep/canary": lambda: os.listdir(merged / "deep/canary"),
        "getxattr j/k": lambda: os.getxattr(merged / "j/k", "user.canary",
                                            follow_symlinks=False),
        "append b/x": lambda: append(merged / "b/x", b"+w"),
        "append g/sub/file": lambda: append(merged / "g/sub/file", b"+w"),
        "truncate g/file": lambda: truncate(merged / "g/file", 1),
        "create a/new": lambda: create(merged / "a/new"),
        "create h/new": lambda: create(merged / "h/new"),
        "create deep/canary/new": lambda: create(merged / "deep/canary/new"),
        "create n/new": lambda: create(merged / "n/new"),
        "mkdir h/newdir": lambda: os.mkdir(merged / "h/newdir"),
        "create h/newdir/f": lambda: create(merged / "h/newdir/f"),
        "mkdir g/sub/d": lambda: os.mkdir(merged / "g/sub/d"),
        "rename b/x a/x2": lambda: os.rename(merged / "b/x", merged / "a/x2"),
        "rename g/sub/file deep/canary/moved": lambda: os.rename(merged / "g/sub/file",
                                                                 merged / "deep/canary/moved"),
        "rename deep/f h/f": lambda: os.rename(merged / "deep/f", merged / "h/f"),
        "rename deep/out h/out": lambda: os.rename(merged / "deep/out", merged / "h/out"),
        "unlink c": lambda: os.unlink(merged / "c"),
        "mkdir c": lambda: os.mkdir(merged / "c"),
        "create c/z": lambda: create(merged / "c/z"),
        "rename c/z g/sub/z": lambda: os.rename(merged / "c/z", merged / "g/sub/z"),
        "lchown e": lambda: os.chown(merged / "e", 1, 2, follow_symlinks=False),
        "lchown j/k": lambda: os.chown(merged / "j/k", 3, 4, follow_symlinks=False),
        "lutime j/k": lambda: os.utime(merged / "j/k", ns=(5, 6), follow_symlinks=False),
        "lsetxattr m": lambda: os.setxattr(merged / "m", "trusted.t", b"v",
                                           follow_symlinks=False),
        "link g/file a/hard": lambda: os.link(merged / "g/file", merged / "a/hard"),
        "link j/k h/k2": lambda: os.link(merged / "j/k", merged / "h/k2",
                                         follow_symlinks=False),
        "unlink m": lambda: os.unlink(merged / "m"),
        "symlink h/s": lambda: os.symlink("../../canary/secret", merged / "h/s"),
        "rmdir d": lambda: os.rmdir(merged / "d"),
        "unlink d/keep": lambda: os.unlink(merged / "d/keep"),
        "rmdir d again": lambda: os.rmdir(merged / "d"),
        "mkdir d": lambda: os.mkdir(merged / "d"),
        "rmdir e": lambda: os.rmdir(merged / "e"),
        "unlink e": lambda: os.unlink(merged / "e"),
        "mkdir e": lambda: os.mkdir(merged / "e"),
        "list e": lambda: os.listdir(merged / "e"),
        "unlink deep/up": lambda: os.unlink(merged / "deep/up"),
        "rename h/uf h/up": lambda: os.rename(merged / "h/uf", merged / "h/up"),
        "rename a deep/a": lambda: os.rename(merged / "a", merged / "deep/a"),
    }
    return {name: errno_of(op) for name, op in ops.items()}


def test_hostile_symlinks_never_lead_the_daemon_outside(both, canary, tmp_path: Path) -> None:
    root, before = canary
    lowers, upper = hostile_layers(root)
    etc_before = sorted(os.listdir("/etc"))
    with both(lowers, upper) as (kernel, ofs):
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        # Nothing from the canary or from /etc is merged into any directory.
        names = {name for _, dirs, files in os.walk(ofs["merged"]) for name in dirs + files}
        assert not names & {"secret", "deeper", "passwd", "hostname", "fstab"}
        results = {who: hostile_operations(stack["merged"])
                   for who, stack in (("kernel", kernel), ("ofs", ofs))}
        assert results["ofs"] == results["kernel"]
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert os.listdir(ofs["work"] / "work") == []
    assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])
    assert full_snapshot(root) == before
    assert sorted(os.listdir("/etc")) == etc_before


def test_symlinked_layer_roots_and_parents(make_stack, mount_kernel, canary,
                                           tmp_path: Path) -> None:
    """podman passes layer paths that are, or go through, symlinks: the mount resolves them
    once, as the kernel does, and is then confined to the real directories."""
    root, before = canary
    lowers, upper = hostile_layers(root)
    views = {}
    uppers = {}
    for who in ("kernel", "ofs"):
        stack = make_stack(lowers, upper, name=who)
        links = tmp_path / f"{who}-links"
        links.mkdir()
        (links / "alias").symlink_to(stack["base"])                 # a symlinked parent
        os.symlink(stack["lowers"][0], links / "top")               # a symlinked root
        os.symlink(links / "top", links / "top2")                   # a chain of them
        os.symlink(stack["upper"], links / "upper")
        os.symlink(stack["work"], links / "work")
        link_lowers = [links / "top2", links / "alias" / "lower1"]
        before_links = full_snapshot(links, atime=False)  # resolving reads a link
        context = (KernelOverlay(link_lowers, links / "upper", links / "work",
                                 stack["merged"]) if who == "kernel"
                   else Overlay(link_lowers, links / "upper", links / "work",
                                stack["merged"]))
        with context:
            first = snapshot(stack["merged"])
            hostile_operations(stack["merged"])
            views[who] = (first, snapshot(stack["merged"]))
        uppers[who] = raw_snapshot(stack["upper"])
        assert full_snapshot(links, atime=False) == before_links
        assert not (links / "work" / "work").is_symlink()
    assert views["ofs"] == views["kernel"]
    assert uppers["ofs"] == uppers["kernel"]
    assert full_snapshot(root) == before


def test_lowerdir_that_is_a_symlink_to_the_upperdir_is_refused(make_stack, kernel_available,
                                                               tmp_path: Path) -> None:
    stack = make_stack([{"f": "file:f"}])
    alias = tmp_path / "alias"
    alias.symlink_to(stack["upper"])
    kernel = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                             f"lowerdir={alias},upperdir={stack['upper']},"
                             f"workdir={stack['work']}", str(stack["merged"])],
                            capture_output=True, text=True)
    mounts.unmount(stack["merged"])
    assert kernel.returncode != 0
    ofs = subprocess.run([*mounts.overlayfuse_command(), "-f", "-o",
                          f"lowerdir={alias},upperdir={stack['upper']},"
                          f"workdir={stack['work']}", str(stack["merged"])],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    mounts.unmount(stack["merged"])
    assert ofs.returncode != 0
    assert os.strerror(errno.ELOOP) in ofs.stderr


ODD_NAMES = ["new\nline", "tab\there", "back\\slash", "colon:name", "comma,name",
             os.fsdecode(b"\xff\xfe-not-utf8"), " leading space", "-dash", "n" * 255,
             "trailing\n"]


def test_odd_and_255_byte_names(both) -> None:
    long_dir = "D" * 255
    lower0 = {name: f"file:{name!r}" for name in ODD_NAMES}
    lower0[f"{long_dir}/{'f' * 255}"] = "file:deep"
    lower0[f"{long_dir}/{'x' * 254}\n"] = "file:newline at 255"
    lower1 = {"dir\nwith newline/inner\nname": "file:inner", "n" * 255: "file:hidden",
              "gone\nname": "file:gone"}
    upper = {"up\nper": "file:upper"}
    with both([lower0, lower1], upper) as (kernel, ofs):
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        results = {}
        for who, stack in (("kernel", kernel), ("ofs", ofs)):
            m = stack["merged"]
            steps = {}
            for index, name in enumerate(ODD_NAMES):
                steps[f"append {index}"] = errno_of(lambda: append(m / name, b"+"))
            steps["rename 0->1"] = errno_of(lambda: os.rename(m / ODD_NAMES[0], m / ODD_NAMES[1]))
            steps["unlink gone"] = errno_of(lambda: os.unlink(m / "gone\nname"))
            steps["mkdir gone"] = errno_of(lambda: os.mkdir(m / "gone\nname"))
            steps["create 255 in gone"] = errno_of(lambda: create(m / "gone\nname" / ("z" * 255)))
            steps["append deep"] = errno_of(lambda: append(m / long_dir / ("f" * 255), b"+"))
            steps["rename deep"] = errno_of(lambda: os.rename(m / long_dir / ("f" * 255),
                                                              m / ("r" * 255)))
            steps["unlink 255"] = errno_of(lambda: os.unlink(m / ("n" * 255)))
            steps["mkdir 255"] = errno_of(lambda: os.mkdir(m / ("n" * 255)))
            steps["rename inner"] = errno_of(lambda: os.rename(m / "dir\nwith newline/inner\nname",
                                                               m / "up\nper"))
            steps["rmdir newline dir"] = errno_of(lambda: os.rmdir(m / "dir\nwith newline"))
            steps["symlink odd"] = errno_of(lambda: os.symlink("new\nline", m / "s\nl"))
            steps["list"] = sorted(os.listdir(m))  # type: ignore[assignment]
            results[who] = steps
        assert results["ofs"] == results["kernel"]
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
    assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])


def _deep_dir(root: Path, depth: int, name_len: int, make: bool = False) -> int:
    """An fd on root/N1/.../Ndepth, a path far longer than PATH_MAX, reached (and with
    `make`, made) one component at a time."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        name = f"{level:03d}" + "p" * (name_len - 3)
        if make:
            os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def _make_deep(root: Path, depth: int, name_len: int) -> None:
    fd = _deep_dir(root, depth, name_len, make=True)
    try:
        file_fd = os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"at the bottom")
        os.close(file_fd)
    finally:
        os.close(fd)


def _walk_deep(root: Path, depth: int, name_len: int) -> dict[str, object]:
    """Through the mount, one component at a time: read, copy up, create, rename, list."""
    result: dict[str, object] = {}
    fd = _deep_dir(root, depth, name_len)
    try:
        file_fd = os.open("file", os.O_RDWR | os.O_APPEND, dir_fd=fd)
        result["read"] = os.read(file_fd, 100)
        os.write(file_fd, b" + written")
        os.close(file_fd)
        new_fd = os.open("new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
        os.close(new_fd)
        os.rename("new", "renamed", src_dir_fd=fd, dst_dir_fd=fd)
        os.mkdir("sub", dir_fd=fd)
        result["list"] = sorted(os.listdir(fd))
        check = os.open("file", os.O_RDONLY, dir_fd=fd)
        result["after"] = os.read(check, 100)
        os.close(check)
    finally:
        os.close(fd)
    return result


def test_paths_longer_than_path_max(make_stack, mount_kernel, mount_ofs) -> None:
    depth, name_len = 24, 250          # about 6,000 bytes: more than PATH_MAX
    results = {}
    for who in ("kernel", "ofs"):
        stack = make_stack([{}], name=who)
        _make_deep(stack["lowers"][0], depth, name_len)
        with (mount_kernel if who == "kernel" else mount_ofs)(stack):
            results[who] = _walk_deep(stack["merged"], depth, name_len)
        results[who + "-upper"] = _walk_deep_upper(stack["upper"], depth, name_len)
    assert results["ofs"] == results["kernel"]
    assert results["ofs"]["after"] == b"at the bottom + written"
    assert results["ofs-upper"] == results["kernel-upper"]


def _walk_deep_upper(root: Path, depth: int, name_len: int) -> list[str]:
    fd = _deep_dir(root, depth, name_len)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


# ---- other filesystems mounted inside a layer ---------------------------------------------------
#
# Kernel overlayfs looks names up in a layer without crossing mount points: a filesystem
# mounted on a directory inside a layer is invisible to it (it sees the directory underneath).

def test_a_mount_inside_a_lower_layer_is_not_entered(make_stack, mount_kernel, mount_ofs,
                                                     tmp_path: Path) -> None:
    views = {}
    for who in ("kernel", "ofs"):
        stack = make_stack([{"sub/underlying": "file:the layer's own"}], name=who)
        with tmpfs(stack["lowers"][0] / "sub", "size=1m") as foreign:
            (foreign / "secret").write_text("foreign filesystem")
            os.utime(foreign / "secret", ns=(1_000_000_000, 2_000_000_000))
            os.utime(foreign, ns=(1_000_000_000, 2_000_000_000))
            foreign_before = full_snapshot(foreign)
            with (mount_kernel if who == "kernel" else mount_ofs)(stack):
                merged = stack["merged"]
                views[who] = {"list": sorted(os.listdir(merged / "sub")),
                              "secret": errno_of(lambda: os.lstat(merged / "sub/secret")),
                              "append": errno_of(lambda: append(merged / "sub/underlying",
                                                                b"+"))}
            views[who + "-foreign"] = full_snapshot(foreign) == foreign_before
    assert views["ofs"] == views["kernel"] == {"list": ["underlying"], "secret": errno.ENOENT,
                                                "append": 0}
    assert views["ofs-foreign"] and views["kernel-foreign"]


def test_a_mount_inside_the_upper_layer_is_not_entered(make_stack, mount_kernel, mount_ofs,
                                                       tmp_path: Path) -> None:
    views = {}
    for who in ("kernel", "ofs"):
        stack = make_stack([{"sub/low": "file:low"}], {"sub/up": "file:up"}, name=who)
        with tmpfs(stack["upper"] / "sub", "size=1m") as foreign:
            (foreign / "secret").write_text("foreign filesystem")
            foreign_before = full_snapshot(foreign)
            with (mount_kernel if who == "kernel" else mount_ofs)(stack):
                merged = stack["merged"]
                views[who] = {"list": sorted(os.listdir(merged / "sub")),
                              "create": errno_of(lambda: create(merged / "sub/new"))}
            views[who + "-foreign"] = full_snapshot(foreign) == foreign_before
        views[who + "-upper"] = sorted(os.listdir(stack["upper"] / "sub"))
    assert views["ofs"] == views["kernel"] == {"list": ["low", "up"], "create": 0}
    assert views["ofs-upper"] == views["kernel-upper"] == ["new", "up"]
    assert views["ofs-foreign"] and views["kernel-foreign"]


PROBE = "import os, sys; print(sorted(os.listdir(sys.argv[1])))"


def test_mountpoint_inside_a_lower_layer(make_stack, kernel_available, tmp_path: Path) -> None:
    listings = {}
    for who in ("kernel", "ofs"):
        stack = make_stack([{"f": "file:f", "mnt/under": "file:under"}], name=who)
        mountpoint = stack["lowers"][0] / "mnt"
        context = (KernelOverlay(stack["lowers"], stack["upper"], stack["work"],
                                 mountpoint) if who == "kernel"
                   else Overlay(stack["lowers"], stack["upper"], stack["work"],
                                mountpoint))
        with context as overlay:
            process = getattr(overlay, "process", None)
            probe = subprocess.Popen([sys.executable, "-c", PROBE, str(mountpoint / "mnt")],
                                     stdout=subprocess.PIPE, text=True)
            try:
                listings[who] = probe.communicate(timeout=5)[0].strip()
            except subprocess.TimeoutExpired:
                # The probe waits uninterruptibly for the daemon, which waits on itself:
                # only ending the daemon (by its pid) releases both.
                listings[who] = "hung"
                if process is not None:
                    process.kill()
                    process.wait()
                probe.kill()
                probe.wait()
    assert listings["ofs"] == listings["kernel"] == "['under']"


def test_lower_hash_check_sees_every_kind_of_change(tmp_path: Path) -> None:
    """The session-wide lower-layer check (conftest.lowers_never_modified) notices data,
    metadata, xattr, name and symlink changes, and ignores reads (atime)."""
    from conftest import _layer_digest
    layer = tmp_path / "layer"
    build_layer(layer, {"d/f": "file:data", "s": "symlink:d/f", "e": "dir"})
    base = _layer_digest(layer, set())
    (layer / "d/f").read_bytes()
    assert _layer_digest(layer, set()) == base
    changes: list[Callable[[], object]] = [
        lambda: (layer / "d/f").write_text("dat4"),
        lambda: os.chmod(layer / "d/f", 0o600),
        lambda: os.setxattr(layer / "d", "trusted.overlay.opaque", b"y"),
        lambda: os.utime(layer / "d/f", ns=(1, 1)),
        lambda: (layer / "e/new").write_text(""),
        lambda: os.rename(layer / "e", layer / "e2"),
    ]
    for change in changes:
        change()
        after = _layer_digest(layer, set())
        assert after != base
        base = after
    assert stat.S_ISDIR(os.lstat(layer / "d").st_mode)
