"""Bad input at run time (hardening item 8): every malformed request is refused with the right
errno and changes nothing.

- Names starting with `.wh.` (they would read back as whiteouts or opaque markers): create,
  mkdir, mknod, mkfifo, symlink, link and rename onto one give EINVAL (docs/behaviour.md, an
  intended divergence: the kernel accepts them).
- Over-long names and symlink targets: the errno kernel overlayfs gives, for each length.
- xattrs: empty, over-long and namespace-less names, over-sized values, small buffers,
  XATTR_CREATE / XATTR_REPLACE, removal of a missing name: the errno kernel overlayfs gives.
- rename flags the kernel refuses: EINVAL.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hardening import (c_getxattr, c_lgetxattr, c_listxattr, c_lsetxattr, c_renameat2,
                       c_setxattr, errno_of)
from layerspec import raw_snapshot, snapshot
from overlayfuse import capabilities

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
XATTR_CREATE, XATTR_REPLACE = 1, 2

RESERVED = [".wh.x", ".wh..wh..opq", ".wh.", ".wh.\nnewline", ".wh." + "w" * 251]


def test_reserved_whiteout_names_are_einval(make_stack, mount_ofs) -> None:
    stack = make_stack([{"lower": "file:l", "d/x": "file:x"}], {"upper": "file:u"})
    with mount_ofs(stack):
        merged = stack["merged"]
        before = snapshot(merged)
        for name in RESERVED:
            for where in (merged, merged / "d"):
                target = where / name
                ops: dict[str, Callable[[], object]] = {
                    "create": lambda: os.close(os.open(target, os.O_WRONLY | os.O_CREAT,
                                                       0o644)),
                    "mkdir": lambda: os.mkdir(target),
                    "mkfifo": lambda: os.mkfifo(target),
                    "mknod": lambda: os.mknod(target, stat.S_IFREG | 0o644),
                    "symlink": lambda: os.symlink("lower", target),
                    "link lower": lambda: os.link(merged / "lower", target),
                    "link upper": lambda: os.link(merged / "upper", target),
                    "rename lower": lambda: os.rename(merged / "lower", target),
                    "rename upper": lambda: os.rename(merged / "upper", target),
                    "rename noreplace": lambda: _renameat2(merged / "upper", target,
                                                           RENAME_NOREPLACE),
                }
                results = {op: errno_of(call) for op, call in ops.items()}
                assert results == {op: errno.EINVAL for op in ops}, (name, results)
                assert errno_of(lambda: os.lstat(target)) == errno.ENOENT
        assert snapshot(merged) == before
        assert os.listdir(stack["work"] / "work") == []
        # Names that merely contain ".wh." are ordinary.
        for name in ("x.wh.y", "wh.x", "..wh.x", " .wh.x"):
            (merged / name).write_text(name)
            assert (merged / name).read_text() == name


@pytest.mark.parametrize("op", ["create", "mkdir", "mkfifo", "symlink"])
def test_a_refused_name_copies_nothing_up(make_stack, mount_ofs, op: str) -> None:
    stack = make_stack([{"d/x": "file:x"}])
    with mount_ofs(stack):
        target = stack["merged"] / "d" / ".wh.x"
        call: Callable[[], object] = {
            "create": lambda: os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)),
            "mkdir": lambda: os.mkdir(target),
            "mkfifo": lambda: os.mkfifo(target),
            "symlink": lambda: os.symlink("x", target)}[op]
        assert errno_of(call) == errno.EINVAL
    assert os.listdir(stack["upper"]) == []


def _renameat2(old: Path, new: Path, flags: int) -> None:
    result = c_renameat2(old, new, flags)
    if result:
        raise OSError(-result, os.strerror(-result))


LENGTHS = [255, 256, 1024, 1025, 4095, 4096, 5000]


def _long_name_case(merged: Path) -> dict[str, int]:
    results: dict[str, int] = {}
    for length in LENGTHS:
        name = "n" * length
        cases: dict[str, Callable[[], object]] = {
            "lstat": lambda: os.lstat(merged / name),
            "lstat in lower dir": lambda: os.lstat(merged / "d" / name),
            "create": lambda: os.close(os.open(merged / ("c" + name[1:]),
                                               os.O_WRONLY | os.O_CREAT, 0o644)),
            "mkdir": lambda: os.mkdir(merged / "d" / ("m" + name[1:])),
            "mkfifo": lambda: os.mkfifo(merged / ("f" + name[1:])),
            "symlink name": lambda: os.symlink("t", merged / ("s" + name[1:])),
            "symlink target": lambda: os.symlink("t" * length, merged / f"target{length}"),
            "link": lambda: os.link(merged / "lower", merged / ("l" + name[1:])),
            "rename": lambda: os.rename(merged / "d" / "x", merged / ("r" + name[1:])),
            "unlink": lambda: os.unlink(merged / name),
            "rmdir": lambda: os.rmdir(merged / name),
        }
        for case, call in cases.items():
            results[f"{case} {length}"] = errno_of(call)
        if not results[f"rename {length}"]:
            os.rename(merged / ("r" + name[1:]), merged / "d" / "x")
    results["readlink 4095"] = len(os.readlink(merged / "target4095")) \
        if os.path.lexists(merged / "target4095") else -1
    return results


def test_over_long_names_give_the_kernels_errno(both) -> None:
    with both([{"lower": "file:l", "d/x": "file:x"}], {"upper": "file:u"}) as (kernel, ofs):
        results = {who: _long_name_case(stack["merged"])
                   for who, stack in (("kernel", kernel), ("ofs", ofs))}
        assert results["ofs"] == results["kernel"]
        assert results["ofs"]["create 256"] == errno.ENAMETOOLONG
        assert results["ofs"]["create 255"] == 0
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert os.listdir(ofs["work"] / "work") == []


def _xattr_case(merged: Path) -> dict[str, object]:
    results: dict[str, object] = {}
    targets = {"lower": merged / "lower", "upper": merged / "upper", "dir": merged / "d",
               "symlink": merged / "sym"}
    for label, path in targets.items():
        setter = c_lsetxattr if label == "symlink" else c_setxattr
        set_ = lambda name, value, flags=0: setter(path, name, value, flags)  # noqa: E731
        get = (c_lgetxattr if label == "symlink" else c_getxattr)
        cases: dict[str, Callable[[], object]] = {
            "set empty name": lambda: set_(b"", b"v"),
            "set 255-byte name": lambda: set_(b"user." + b"n" * 250, b"v"),
            "set 256-byte name": lambda: set_(b"user." + b"n" * 251, b"v"),
            "set no namespace": lambda: set_(b"noprefix", b"v"),
            "set unknown namespace": lambda: set_(b"bogus.x", b"v"),
            "set bare user.": lambda: set_(b"user.", b"v"),
            "set empty value": lambda: set_(b"user.empty", b""),
            "set 1000-byte value": lambda: set_(b"user.mid", b"v" * 1000),
            "set 4000-byte value": lambda: set_(b"user.big", b"v" * 4000),   # ext4: ENOSPC
            "set 65536-byte value": lambda: set_(b"user.max", b"v" * 65536),
            "set 65537-byte value": lambda: set_(b"user.over", b"v" * 65537),
            "create existing": lambda: set_(b"user.empty", b"w", XATTR_CREATE),
            "replace missing": lambda: set_(b"user.missing", b"w", XATTR_REPLACE),
            "set trusted.overlay.x": lambda: set_(b"trusted.overlay.x", b"esc"),
            "get trusted.overlay.x": lambda: get(path, b"trusted.overlay.x", 100),
            "get size 0": lambda: get(path, b"user.mid", 0),
            "get small buffer": lambda: get(path, b"user.mid", 10),
            "get exact buffer": lambda: get(path, b"user.mid", 1000),
            "get missing": lambda: get(path, b"user.missing", 100),
            "get empty name": lambda: get(path, b"", 100),
            "get 256-byte name": lambda: get(path, b"user." + b"n" * 251, 100),
            "get no namespace": lambda: get(path, b"noprefix", 100),
            "list size 0 vs 1": lambda: (c_listxattr(path, 0) > 0, c_listxattr(path, 1))
            if label != "symlink" else None,
            "remove missing": lambda: _remove(path, "user.missing"),
            "remove empty value": lambda: _remove(path, "user.empty"),
        }
        for case, call in cases.items():
            results[f"{label}: {case}"] = _outcome(call)
    return results


def _remove(path: Path, name: str) -> None:
    os.removexattr(path, name, follow_symlinks=False)


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except OSError as e:
        return -(e.errno or 0)


def test_bad_xattr_names_and_sizes_give_the_kernels_errno(both) -> None:
    lowers = [{"lower": "file:l", "d/x": "file:x", "sym": "symlink:lower"}]
    with both(lowers, {"upper": "file:u"}) as (kernel, ofs):
        results = {who: _xattr_case(stack["merged"])
                   for who, stack in (("kernel", kernel), ("ofs", ofs))}
        differing = {case: (results["kernel"][case], results["ofs"][case])
                     for case in results["kernel"] if results["kernel"][case] != results["ofs"][case]}
        assert not differing, f"(kernel, overlayfuse) differ: {differing}"
        assert results["ofs"]["upper: set 256-byte name"] == -errno.ERANGE
        assert results["ofs"]["upper: set 65537-byte value"] == -errno.E2BIG
        assert results["ofs"]["upper: get small buffer"] == -errno.ERANGE
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert os.listdir(ofs["work"] / "work") == []
    assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])


def test_rename_flags_the_kernel_refuses_are_einval(both) -> None:
    with both([{"a": "file:a", "b": "file:b"}], {"c": "file:c"}) as (kernel, ofs):
        results = {}
        for who, stack in (("kernel", kernel), ("ofs", ofs)):
            m = stack["merged"]
            results[who] = {
                "whiteout": c_renameat2(m / "a", m / "z", RENAME_WHITEOUT),
                "noreplace|exchange": c_renameat2(m / "a", m / "b",
                                                  RENAME_NOREPLACE | RENAME_EXCHANGE),
                "unknown bit": c_renameat2(m / "a", m / "z", 1 << 5),
                "exchange with a missing name": c_renameat2(m / "a", m / "missing",
                                                            RENAME_EXCHANGE),
                "noreplace onto an existing name": c_renameat2(m / "a", m / "c",
                                                               RENAME_NOREPLACE),
            }
        assert results["ofs"] == results["kernel"]
        assert results["ofs"]["whiteout"] == -errno.EINVAL
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])


@pytest.mark.xfail(not capabilities.SETXATTR_FLAGS,
                   reason="stock pyfuse3: setxattr with XATTR_CREATE|XATTR_REPLACE on a missing "
                          "name succeeds (and sets it): fuse_setxattr_async emulates the flags "
                          "and checks only XATTR_CREATE when both are set. The kernel gives "
                          "ENODATA", strict=True)
def test_setxattr_with_both_flags_gives_the_kernels_errno(both) -> None:
    with both([{"f": "file:f"}], {"u": "file:u"}) as (kernel, ofs):
        results = {}
        for who, stack in (("kernel", kernel), ("ofs", ofs)):
            m = stack["merged"]
            results[who] = [c_setxattr(m / name, b"user.both", b"v", XATTR_CREATE | XATTR_REPLACE)
                            for name in ("f", "u")]
            results[who].append(c_getxattr(m / "u", b"user.both", 10))
        assert results["kernel"] == [-errno.ENODATA, -errno.ENODATA, -errno.ENODATA]
        assert results["ofs"] == results["kernel"]
