"""The command line: mount-time errors (behaviour.md "Mount-time errors"), environment checks,
and `-o` option parsing. Almost nothing here mounts: each refused command must fail before
touching anything."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import needs_fuse
from layerspec import build_layer, raw_snapshot
from overlayfuse import KernelOverlay, Overlay, __version__, cli, fusedev, layers, mounts
from overlayfuse.errors import MountError, UsageError
from overlayfuse.options import (IdMapping, default_workdir, parse_args, split_escaped,
                                 split_option_string)

VENV_COMMAND = Path(sys.executable).with_name("overlayfuse")
COMMAND = [str(VENV_COMMAND)] if VENV_COMMAND.exists() else [sys.executable, "-m", "overlayfuse"]


def run_cli(*args: str | os.PathLike[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def kernel_mount_errno(options: str, target: Path) -> int:
    """What mount(2) of kernel overlayfs answers to the same options: 0 if it mounts."""
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) == 0:
        mounts.unmount(target)
        return 0
    return ctypes.get_errno()


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        mounts.unmount(path)


# ---- mount-time errors -----------------------------------------------------------------------

# id: (-o options or short-form paths, mountpoint, errno, the path the message must name,
#      a word of the message). {b} is the test's base directory.
MOUNT_ERRORS = {
    "missing-lowerdir": ("lowerdir={b}/nope:{b}/l1,upperdir={b}/u,workdir={b}/w", "m",
                         errno.ENOENT, "{b}/nope", "lowerdir"),
    "missing-second-lowerdir": ("lowerdir={b}/l1:{b}/nope,upperdir={b}/u,workdir={b}/w", "m",
                                errno.ENOENT, "{b}/nope", "lowerdir"),
    "missing-upperdir": ("lowerdir={b}/l1,upperdir={b}/nope,workdir={b}/w", "m",
                         errno.ENOENT, "{b}/nope", "upperdir"),
    "missing-workdir": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/nope", "m",
                        errno.ENOENT, "{b}/nope", "workdir"),
    "upperdir-without-workdir": ("lowerdir={b}/l1,upperdir={b}/u", "m",
                                 errno.EINVAL, "{b}/u", "workdir"),
    "no-lowerdir": ("upperdir={b}/u,workdir={b}/w", "m", errno.EINVAL, None, "lowerdir"),
    "empty-lowerdir": ("lowerdir=,upperdir={b}/u,workdir={b}/w", "m", errno.EINVAL, None,
                       "lowerdir"),
    "file-as-lowerdir": ("lowerdir={b}/l1:{b}/file,upperdir={b}/u,workdir={b}/w", "m",
                         errno.EINVAL, "{b}/file", "lowerdir"),
    "file-as-upperdir": ("lowerdir={b}/l1,upperdir={b}/file,workdir={b}/w", "m",
                         errno.EINVAL, "{b}/file", "upperdir"),
    "file-as-workdir": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/file", "m",
                        errno.EINVAL, "{b}/file", "workdir"),
    "workdir-on-another-fs": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/tmpfs/w", "m",
                              errno.EINVAL, "{b}/tmpfs/w", "filesystem"),
    "workdir-is-upperdir": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/u", "m",
                            errno.EINVAL, "{b}/u", "workdir"),
    "workdir-inside-upperdir": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/u/sub", "m",
                                errno.EINVAL, "{b}/u/sub", "workdir"),
    "upperdir-inside-workdir": ("lowerdir={b}/l1,upperdir={b}/w/sub,workdir={b}/w", "m",
                                errno.EINVAL, "{b}/w/sub", "upperdir"),
    "lowerdir-inside-upperdir": ("lowerdir={b}/u/sub,upperdir={b}/u,workdir={b}/w", "m",
                                 errno.ELOOP, "{b}/u/sub", "upperdir"),
    "lowerdir-is-upperdir": ("lowerdir={b}/l1:{b}/u,upperdir={b}/u,workdir={b}/w", "m",
                             errno.ELOOP, "{b}/u", "upperdir"),
    "same-lowerdir-twice": ("lowerdir={b}/l1:{b}/l2:{b}/l1,upperdir={b}/u,workdir={b}/w", "m",
                            errno.ELOOP, "{b}/l1", "twice"),
    "lowerdir-is-workdir": ("lowerdir={b}/w,upperdir={b}/u,workdir={b}/w", "m",
                            errno.ELOOP, "{b}/w", "workdir"),
    "lowerdir-inside-workdir": ("lowerdir={b}/w/sub,upperdir={b}/u,workdir={b}/w", "m",
                                errno.ELOOP, "{b}/w/sub", "workdir"),
    "lowerdir-inside-earlier-lowerdir": ("lowerdir={b}/l1:{b}/l1/sub,upperdir={b}/u,"
                                         "workdir={b}/w", "m",
                                         errno.ELOOP, "{b}/l1/sub", "lowerdir"),
    "lowerdir-inside-later-lowerdir": ("lowerdir={b}/l1/sub:{b}/l1,upperdir={b}/u,"
                                       "workdir={b}/w", "m",
                                       errno.ELOOP, "{b}/l1/sub", "lowerdir"),
    "read-only-lowerdir-twice": ("lowerdir={b}/l1:{b}/l1", "m", errno.ELOOP, "{b}/l1", "twice"),
    "missing-mountpoint": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/w", "nope",
                           errno.ENOENT, "{b}/nope", "mountpoint"),
    "mountpoint-is-a-file": ("lowerdir={b}/l1,upperdir={b}/u,workdir={b}/w", "file",
                             errno.ENOTDIR, "{b}/file", "mountpoint"),
}


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """l1 (with sub), l2, u (with sub), w (with sub), m, a regular file, a tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    root = tmp_path / "b"
    build_layer(root, {"l1/sub/x": "file:x", "l2/y": "file:y", "u/sub": "dir", "u/f": "file:f",
                       "w/sub": "dir", "m": "dir", "file": "file:not a dir"})
    with tmpfs(root / "tmpfs"):
        (root / "tmpfs" / "w").mkdir()
        yield root


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        targets = [mounts._unescape(line.split()[4]) for line in mountinfo]
    return [t for t in targets if t.startswith(prefix)]


def assert_refused(result: subprocess.CompletedProcess, base: Path, before: object,
                   mounts_before: list[str], *needles: str) -> str:
    """The command failed cleanly: non-zero, one line naming the problem, nothing done."""
    try:
        assert result.returncode != 0
        assert "Traceback" not in result.stderr + result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        line = lines[0]
        assert line.startswith("overlayfuse: ")
        for needle in needles:
            assert needle in line, (needle, line)
        assert mounts_under(base) == mounts_before
        assert raw_snapshot(base) == before
        return line
    finally:
        mounts.unmount(base / "m")   # in case it mounted after all: the daemon then exits


@pytest.mark.parametrize("case", list(MOUNT_ERRORS))
def test_mount_time_error(base: Path, case: str) -> None:
    options, mountpoint, code, path, word = MOUNT_ERRORS[case]
    options = options.format(b=base)
    target = base / mountpoint
    before = raw_snapshot(base)
    mounts_before = mounts_under(base)
    result = run_cli("-o", options, target)
    needles = [word, os.strerror(code)]
    if path is not None:
        needles.append(path.format(b=base))
    assert_refused(result, base, before, mounts_before, *needles)
    # The same options given to kernel overlayfs fail with the same errno.
    if KernelOverlay.unavailable() is None:
        assert kernel_mount_errno(options, target) == code


# A live mount holds upper u and workdir w; a second mount of (upper, workdir) is refused while
# it lives, as kernel overlayfs refuses it with EBUSY (with index=on; with index=off, its
# default here, the kernel only warns and calls what follows undefined).
IN_USE = {
    "same-upper-and-workdir": ("", "u", "w", "upperdir", "u"),
    "same-upper": ("", "u", "w2", "upperdir", "u"),
    "same-workdir": ("", "u2", "w", "workdir", "w"),
    "upper-is-the-other-workdir": ("", "w", "w2", "upperdir", "w"),
    "read-only-same-upper": ("ro,", "u", "w2", "upperdir", "u"),
}


@pytest.mark.parametrize("case", list(IN_USE))
def test_upper_or_workdir_in_use_by_a_live_mount(base: Path, tmp_path: Path, case: str) -> None:
    prefix, upper, work, role, busy = IN_USE[case]
    for name in ("u2", "w2", "first"):
        (base / name).mkdir()
    options = f"{prefix}lowerdir={{b}}/l1,upperdir={{b}}/{upper},workdir={{b}}/{work}"
    with Overlay([base / "l1"], base / "u", base / "w", base / "first"):
        before = raw_snapshot(base / "u"), raw_snapshot(base / "w")
        mounts_before = mounts_under(base)
        result = run_cli("-o", options.format(b=base), base / "m")
        assert result.returncode == 1
        assert result.stderr == (f"overlayfuse: {role} is in-use as upperdir/workdir of another "
                                 f"mount: {base}/{busy} (Device or resource busy)\n")
        assert mounts_under(base) == mounts_before
        assert (raw_snapshot(base / "u"), raw_snapshot(base / "w")) == before
    # Unmounted, the same mount is fine.
    with Overlay([base / "l1"], base / upper, base / work, base / "m"):
        pass
    if KernelOverlay.unavailable() is None:
        k = tmp_path / "kernel"
        build_layer(k, {"l1/x": "file:x", "u": "dir", "w": "dir", "u2": "dir", "w2": "dir",
                        "first": "dir", "m": "dir"})
        with KernelOverlay([k / "l1"], k / "u", k / "w", k / "first", options=("index=on",)):
            assert kernel_mount_errno(options.format(b=k) + ",index=on", k / "m") == errno.EBUSY


@pytest.mark.parametrize("case", ["missing-lower", "missing-upper", "file-as-upper",
                                  "lower-inside-upper", "missing-mountpoint"])
def test_short_form_errors_touch_nothing(base: Path, case: str) -> None:
    b = base
    args, code, path = {
        "missing-lower": ([f"{b}/nope:{b}/l1", f"{b}/u", f"{b}/m"], errno.ENOENT, f"{b}/nope"),
        "missing-upper": ([f"{b}/l1", f"{b}/nope", f"{b}/m"], errno.ENOENT, f"{b}/nope"),
        "file-as-upper": ([f"{b}/l1", f"{b}/file", f"{b}/m"], errno.EINVAL, f"{b}/file"),
        "lower-inside-upper": ([f"{b}/u/sub", f"{b}/u", f"{b}/m"], errno.ELOOP, f"{b}/u/sub"),
        "missing-mountpoint": ([f"{b}/l1", f"{b}/u", f"{b}/nope"], errno.ENOENT, f"{b}/nope"),
    }[case]
    before = raw_snapshot(base)
    mounts_before = mounts_under(base)
    result = run_cli(*args)
    assert_refused(result, base, before, mounts_before, path, os.strerror(code))
    # In particular the workdir the short form would make beside the upper is not there.
    assert not Path(default_workdir(f"{b}/u")).exists()


def test_short_form_workdir_on_another_filesystem(base: Path) -> None:
    # Upper at the root of a filesystem: its chosen workdir would be on the parent's fs.
    before = raw_snapshot(base)
    mounts_before = mounts_under(base)
    result = run_cli(base / "l1", base / "tmpfs", base / "m")
    line = assert_refused(result, base, before, mounts_before, os.strerror(errno.EINVAL),
                          "--workdir")
    assert "filesystem" in line


def test_unknown_option_warns_then_fails_cleanly(base: Path) -> None:
    result = run_cli("-o", f"lowerdir={base}/nope,frobnicate,colour=blue", base / "m")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and "Traceback" not in result.stderr
    assert "frobnicate" in lines[0] and "warning" in lines[0]
    assert "colour=blue" in lines[1] and "warning" in lines[1]
    assert f"{base}/nope" in lines[2]
    assert not mounts.is_mounted(base / "m")


@pytest.mark.parametrize("args", [
    ["a", "b", "c", "d"],
    ["-o", "lowerdir=/a", "x", "y", "z"],
    ["--no-such-flag", "a", "b"],
    ["-o", "uidmapping=0:1", "/a", "/b"],
    ["-o", "timeout=soon", "/a", "/b"],
], ids=["four-paths", "lowerdir-and-three-paths", "unknown-flag", "bad-mapping", "bad-timeout"])
def test_usage_errors(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == cli.EXIT_USAGE
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("overlayfuse: error: ")
    assert result.stdout == ""


def test_no_arguments() -> None:
    result = run_cli()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "lowerdir" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"overlayfuse {__version__}"
    assert result.stderr == ""


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: overlayfuse")
    for word in ("lowerdir", "-o", "--foreground", "--workdir"):
        assert word in result.stdout
    assert result.stderr == "" and "Traceback" not in result.stdout


def test_module_form_runs_too() -> None:
    result = subprocess.run([sys.executable, "-m", "overlayfuse", "--version"],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip()) == (0, f"overlayfuse {__version__}")


# ---- the FUSE environment --------------------------------------------------------------------

@needs_fuse
def test_check_environment_passes_here() -> None:
    layers.check_environment()


def test_unusable_fuse_device(monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    monkeypatch.setattr(layers.os, "access",
                        lambda path, mode, **kw: False if str(path) == "/dev/fuse"
                        else real_access(path, mode, **kw))
    with pytest.raises(MountError) as info:
        layers.check_environment()
    assert info.value.errno == errno.EACCES
    assert "/dev/fuse" in str(info.value)


def test_missing_fuse_device(monkeypatch: pytest.MonkeyPatch) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(layers.os.path, "exists",
                        lambda path: False if str(path) == "/dev/fuse" else real_exists(path))
    with pytest.raises(MountError) as info:
        layers.check_environment()
    assert info.value.errno == errno.ENOENT
    assert "/dev/fuse" in str(info.value) and "fuse" in str(info.value).lower()


@pytest.mark.parametrize("uid", [0, 1000])
def test_fusermount3_needed_only_when_not_root(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    monkeypatch.setattr(layers.os, "geteuid", lambda: uid)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    real_access = os.access
    monkeypatch.setattr(layers.os, "access",
                        lambda path, mode, **kw: True if str(path) == "/dev/fuse"
                        else real_access(path, mode, **kw))
    if uid == 0:
        layers.check_environment()
        return
    with pytest.raises(MountError) as info:
        layers.check_environment()
    assert info.value.errno == errno.ENOENT
    assert "fusermount3" in str(info.value)


def test_cli_reports_an_unusable_fuse_device_in_one_line(
        base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_access = os.access
    monkeypatch.setattr(layers.os, "access",
                        lambda path, mode, **kw: False if str(path) == "/dev/fuse"
                        else real_access(path, mode, **kw))
    before = raw_snapshot(base)
    code = cli.main(["-o", f"lowerdir={base}/l1,upperdir={base}/u,workdir={base}/w",
                     str(base / "m")])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_MOUNT
    assert out == ""
    assert err.count("\n") == 1 and "/dev/fuse" in err and os.strerror(errno.EACCES) in err
    assert raw_snapshot(base) == before          # no workdir/work made
    assert not mounts.is_mounted(base / "m")


def test_cli_reports_missing_fusermount3_in_one_line(
        base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(layers.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    before = raw_snapshot(base)
    code = cli.main([f"{base}/l1", f"{base}/u", f"{base}/m"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_MOUNT
    assert err.count("\n") == 1 and "fusermount3" in err
    assert raw_snapshot(base) == before
    assert not Path(default_workdir(f"{base}/u")).exists()


@pytest.mark.parametrize("module", ["pyfuse3", "trio"])
def test_cli_reports_a_missing_fuse_runtime(base: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            module: str) -> None:
    # The runtime is looked for (not loaded) before anything is written or mounted.
    monkeypatch.setitem(sys.modules, module, None)
    before = raw_snapshot(base)
    code = cli.main(["-o", f"lowerdir={base}/l1,upperdir={base}/u,workdir={base}/w",
                     str(base / "m")])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_MOUNT
    assert err.count("\n") == 1 and "FUSE runtime" in err and module in err
    assert raw_snapshot(base) == before
    assert not mounts.is_mounted(base / "m")


# ---- option parsing --------------------------------------------------------------------------

def test_short_form() -> None:
    options = parse_args(["/l1:/l2", "/up/per", "/mnt"])
    assert options.lowerdirs == ("/l1", "/l2")
    assert options.upperdir == "/up/per"
    assert options.workdir == "/up/.per.overlayfuse-work" and options.workdir_chosen
    assert options.mountpoint == "/mnt"
    assert not options.foreground and not options.read_only


def test_short_form_with_workdir_and_read_only_form() -> None:
    options = parse_args(["--workdir", "/w", "/l", "/u", "/m"])
    assert (options.workdir, options.workdir_chosen) == ("/w", False)
    ro = parse_args(["/a:/b", "/m"])
    assert ro.lowerdirs == ("/a", "/b") and ro.upperdir is None and ro.workdir is None
    assert ro.mountpoint == "/m"


def test_mount_form() -> None:
    options = parse_args(["-f", "-o", "lowerdir=/a:/b:/c,upperdir=/u,workdir=/w", "src", "/m"])
    assert options.lowerdirs == ("/a", "/b", "/c")
    assert (options.upperdir, options.workdir, options.mountpoint) == ("/u", "/w", "/m")
    assert options.source == "src" and options.foreground and not options.workdir_chosen
    assert options.warnings == ()
    plain = parse_args(["-o", "lowerdir=/a", "/m"])
    assert plain.source == "overlayfuse" and plain.upperdir is None


def test_several_o_options_combine() -> None:
    options = parse_args(["-o", "lowerdir=/a", "-o", "upperdir=/u", "-o", "workdir=/w,ro", "/m"])
    assert (options.lowerdirs, options.upperdir, options.workdir) == (("/a",), "/u", "/w")
    assert options.read_only and "ro" in options.fuse_options


@pytest.mark.parametrize("text", [
    "lowerdir=/a:/b,,upperdir=/u,workdir=/w",
    ",lowerdir=/a:/b,upperdir=/u,workdir=/w,",
    "lowerdir=/a:/b,upperdir=/u,workdir=/w,,volatile,",
    ",,,lowerdir=/a:/b,,,upperdir=/u,,workdir=/w,,,",
])
def test_empty_items_are_ignored(text: str) -> None:
    options = parse_args(["-o", text, "/m"])
    assert options.lowerdirs == ("/a", "/b")
    assert (options.upperdir, options.workdir) == ("/u", "/w")
    assert options.warnings == ()
    assert options.volatile == ("volatile" in text)


def test_unknown_options_are_ignored_with_one_warning_each() -> None:
    options = parse_args(["-o", "lowerdir=/a,frobnicate,colour=blue,ro=1", "/m"])
    assert options.lowerdirs == ("/a",)
    assert len(options.warnings) == 3
    for warning, item in zip(options.warnings, ("frobnicate", "colour=blue", "ro=1")):
        assert item in warning and "\n" not in warning
    assert not options.read_only          # `ro=1` is not `ro`


@pytest.mark.parametrize("given, redirect_dir, metacopy", [
    ("", "on", False),
    (",redirect_dir=on", "on", False),
    (",redirect_dir=follow", "follow", False),
    (",redirect_dir=off", "follow", False),       # as a kernel with redirect_always_follow
    (",redirect_dir=nofollow", "nofollow", False),
    (",metacopy=off", "on", False),
    (",metacopy=on", "on", True),
    (",redirect_dir=on,metacopy=on", "on", True),
    (",metacopy=on,metacopy=off", "on", False),
])
def test_redirect_dir_and_metacopy(given: str, redirect_dir: str, metacopy: bool) -> None:
    options = parse_args(["-o", "lowerdir=/a,upperdir=/u,workdir=/w" + given, "/m"])
    assert (options.redirect_dir, options.metacopy) == (redirect_dir, metacopy)
    assert options.warnings == ()


@pytest.mark.parametrize("given, message", [
    ("metacopy=on,redirect_dir=follow", "conflicting options: metacopy=on,redirect_dir=follow"),
    ("redirect_dir=off,metacopy=on", "conflicting options: metacopy=on,redirect_dir=follow"),
    ("metacopy=on,redirect_dir=nofollow",
     "conflicting options: metacopy=on,redirect_dir=nofollow"),
    ("redirect_dir=sometimes", "bad value for 'redirect_dir'"),
    ("redirect_dir", "bad value for 'redirect_dir'"),
    ("metacopy", "bad value for 'metacopy'"),
])
def test_redirect_dir_and_metacopy_refused_as_the_kernel_does(given: str, message: str) -> None:
    with pytest.raises(MountError) as info:
        parse_args(["-o", "lowerdir=/a,upperdir=/u,workdir=/w," + given, "/m"])
    assert info.value.errno == errno.EINVAL and message in str(info.value)


@pytest.mark.parametrize("given, redirect_dir", [("redirect_dir=follow", "follow"),
                                                  ("redirect_dir=off", "follow")])
def test_metacopy_reads_redirects_on_a_mount_without_upper(given: str, redirect_dir: str
                                                           ) -> None:
    # As the kernel: following is all a read-only stack needs of redirects.
    options = parse_args(["-o", f"lowerdir=/a:/b,metacopy=on,{given}", "/m"])
    assert (options.redirect_dir, options.metacopy) == (redirect_dir, True)
    with pytest.raises(MountError, match="conflicting options"):
        parse_args(["-o", "lowerdir=/a:/b,metacopy=on,redirect_dir=nofollow", "/m"])


def test_silent_options_need_no_warning() -> None:
    options = parse_args(["-o", "lowerdir=/a,defaults,nofail,_netdev,noauto,rw", "/m"])
    assert options.warnings == () and options.fuse_options == frozenset()


def test_workdir_without_upperdir_warns() -> None:
    options = parse_args(["-o", "lowerdir=/a:/b,workdir=/w", "/m"])
    assert options.workdir is None and options.upperdir is None
    assert len(options.warnings) == 1 and "workdir" in options.warnings[0]


@pytest.mark.parametrize("argv, expected", [
    (["-o", r"lowerdir=/a\:b:/c", "/m"], ("/a:b", "/c")),
    (["-o", r"lowerdir=/x\:y\:z", "/m"], ("/x:y:z",)),
    (["-o", r"lowerdir=/with\,comma:/c", "/m"], ("/with,comma", "/c")),
    (["-o", r"lowerdir=/back\\slash:/c", "/m"], ("/back\\slash", "/c")),
    ([r"/a\:b:/c", "/m"], ("/a:b", "/c")),
])
def test_escaped_colons_and_commas_in_layer_paths(argv: list[str], expected: tuple) -> None:
    assert parse_args(argv).lowerdirs == expected


def test_escapes_in_upper_and_work_paths() -> None:
    options = parse_args(["-o", r"lowerdir=/a,upperdir=/u\,1,workdir=/w\:2", "/m"])
    assert (options.upperdir, options.workdir) == ("/u,1", "/w:2")


def test_splitters() -> None:
    assert split_escaped(r"a\:b:c", ":") == ["a:b", "c"]
    assert split_escaped("a::b", ":") == ["a", "", "b"]
    assert split_option_string(r"a,b\,c,,d,") == ["a", r"b,c", "d"]
    assert split_option_string(r"lowerdir=/x\:y") == [r"lowerdir=/x\:y"]


@pytest.mark.parametrize("text", ["lowerdir=/a::/b", "lowerdir=/a:", "lowerdir=:/a"])
def test_empty_layer_path_is_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_args(["-o", text, "/m"])


@pytest.mark.parametrize("text", ["upperdir=,lowerdir=/a,workdir=/w",
                                  "lowerdir=/a,upperdir=/u,workdir="])
def test_empty_upper_or_work_is_einval(text: str) -> None:
    with pytest.raises(MountError) as info:
        parse_args(["-o", text, "/m"])
    assert info.value.errno == errno.EINVAL


def test_fuse_options_pass_through() -> None:
    options = parse_args(["-o", "lowerdir=/a,allow_other,ro,noatime,fsname=my,subtype=x", "/m"])
    assert {"allow_other", "ro", "noatime", "fsname=my", "subtype=x"} <= options.fuse_options
    assert options.read_only
    assert options.warnings == ()
    from overlayfuse.fusedev import fuse_options
    chosen = fuse_options(options, types.SimpleNamespace(read_only=False))
    assert {"allow_other", "ro", "noatime", "default_permissions"} <= chosen
    assert "rw" not in parse_args(["-o", "lowerdir=/a,rw", "/m"]).fuse_options


def test_read_only_stack_always_mounts_ro() -> None:
    from overlayfuse.fusedev import fuse_options
    options = parse_args(["-o", "lowerdir=/a:/b", "src,with\\comma", "/m"])
    chosen = fuse_options(options, types.SimpleNamespace(read_only=True))
    assert "ro" in chosen
    assert not any("," in item for item in chosen)   # the source cannot inject options


@pytest.mark.parametrize("options, flags, kernel, fusermount", [
    # root's defaults: allow_other,dev,suid
    ({"default_permissions", "fsname=src", "subtype=overlayfuse", "allow_other", "dev", "suid"},
     0, ("allow_other", "default_permissions"),
     "rw,allow_other,default_permissions,fsname=src,subtype=overlayfuse"),
    # a user's: FUSE's nosuid,nodev stay
    ({"default_permissions", "fsname=src", "subtype=overlayfuse"},
     fusedev.MS_NOSUID | fusedev.MS_NODEV, ("default_permissions",),
     "rw,nosuid,nodev,default_permissions,fsname=src,subtype=overlayfuse"),
    ({"ro", "noexec", "noatime", "sync", "dirsync", "allow_root", "auto_unmount", "fsname=a,b\\c"},
     fusedev.MS_RDONLY | fusedev.MS_NOSUID | fusedev.MS_NODEV | fusedev.MS_NOEXEC
     | fusedev.MS_NOATIME | fusedev.MS_SYNCHRONOUS | fusedev.MS_DIRSYNC, ("allow_other",),
     "ro,nosuid,nodev,noexec,sync,dirsync,noatime,allow_other,fsname=a\\,b\\\\c,auto_unmount"),
], ids=["root", "user", "flags-and-escapes"])
def test_mount_request_as_libfuse_makes_it(options: set[str], flags: int, kernel: tuple,
                                           fusermount: str) -> None:
    request = fusedev.MountRequest.of(options)
    assert (request.flags, request.kernel) == (flags, kernel)
    assert request.auto_unmount == ("auto_unmount" in options)
    assert request.fusermount_options() == fusermount


def test_podman_style_options() -> None:
    options = parse_args(["-o", "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,,volatile,", "/m"])
    assert options.volatile and options.warnings == ()
    assert options.lowerdirs == ("/l1", "/l2")


def test_fuse_overlayfs_options() -> None:
    options = parse_args(["-o", "lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,"
                                "gidmapping=0:1000:1,squash_to_uid=5,timeout=0.5", "/m"])
    assert options.uidmapping == (IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536))
    assert options.gidmapping == (IdMapping(0, 1000, 1),)
    assert options.squash_to_uid == 5 and options.timeout == 0.5
    root = parse_args(["-o", "lowerdir=/a,squash_to_root", "/m"])
    assert (root.squash_to_uid, root.squash_to_gid) == (0, 0)


def test_debug_implies_foreground_unless_logging_to_a_file() -> None:
    assert parse_args(["-d", "-o", "lowerdir=/a", "/m"]).foreground
    logged = parse_args(["-d", "--log-file", "/tmp/x.log", "-o", "lowerdir=/a", "/m"])
    assert logged.debug and not logged.foreground and logged.log_file == "/tmp/x.log"


def test_no_lowerdir_in_the_mount_form_is_einval() -> None:
    with pytest.raises(MountError) as info:
        parse_args(["-o", "upperdir=/u,workdir=/w", "/m"])
    assert info.value.errno == errno.EINVAL and "lowerdir" in str(info.value)
    with pytest.raises(MountError) as info:
        parse_args([])
    assert info.value.errno == errno.EINVAL


# ---- a colon in a layer path, mounted --------------------------------------------------------

def test_layer_path_with_a_colon_mounts(tmp_path: Path) -> None:
    lower = tmp_path / "low:er"
    build_layer(lower, {"f": "file:colon"})
    build_layer(tmp_path / "other", {"g": "file:g"})
    upper, work, merged = tmp_path / "up", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    # mounts.overlayfuse escapes the ':' as '\:'.
    with Overlay([lower, tmp_path / "other"], upper, work, merged):
        assert sorted(os.listdir(merged)) == ["f", "g"]
        assert (merged / "f").read_text() == "colon"
