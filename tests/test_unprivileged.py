"""overlayfuse run by a non-root user (made by the test), through fusermount3: whiteouts stay
chardev 0/0, opaque dirs use user.overlay.opaque, writes work within the user's rights, and
the upper dir mounts under kernel overlayfs with -o userxattr inside `unshare -Urm`."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayfuse import mounts
from overlayfuse.compare.trees import build_layer

USER = "overlayfuse-test"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a test user")


def _runtime_modules(target: Path) -> None:
    """Copy overlayfuse and what it imports into `target`: the test user cannot read this
    checkout's virtualenv (it may live in a private home)."""
    import overlayfuse.cli  # noqa: F401  (load what the daemon loads)
    import overlayfuse.daemon  # noqa: F401
    import overlayfuse.ops  # noqa: F401
    import pyfuse3  # noqa: F401
    import trio  # noqa: F401
    bases = {os.path.realpath(p) for p in sys.path if p.endswith("site-packages")}
    bases.add(os.path.realpath(Path(overlayfuse.__file__).parent.parent))
    tops: set[tuple[str, str]] = set()
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        if not source or not os.path.exists(source):
            continue
        source = os.path.realpath(source)
        for base in bases:
            if source.startswith(base + "/"):
                tops.add((base, os.path.relpath(source, base).split("/")[0]))
    for base, top in tops:
        src = Path(base) / top
        if src.is_dir():
            shutil.copytree(src, target / top, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, target / top)


def _python_for_user() -> str:
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        probe = subprocess.run(["runuser", "-u", USER, "--", candidate, "-c",
                                "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "%d.%d" % sys.version_info[:2]:
            return candidate
    pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} the test user may run")


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if shutil.which("fusermount3") is None or shutil.which("runuser") is None:
        pytest.skip("needs fusermount3 and runuser")
    made_user = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
        made_user = True
    runtime = tmp_path_factory.mktemp("runtime")
    _runtime_modules(runtime)
    os.chmod(runtime, 0o755)
    for path in runtime.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)    # what a normal system has; this machine has 0600
    try:
        entry = pwd.getpwnam(USER)
        yield {"user": USER, "uid": entry.pw_uid, "gid": entry.pw_gid,
               "python": _python_for_user(), "pythonpath": str(runtime)}
    finally:
        os.chmod("/dev/fuse", fuse_mode)
        if made_user:
            subprocess.run(["userdel", USER], check=False)


def as_user(env: dict, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", env["user"], "--", *argv], capture_output=True,
                          text=True, check=check, cwd="/")


def _open_to(path: Path) -> None:
    """Let the test user reach `path` (pytest's tmp dirs are private)."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = stat.S_IMODE(os.stat(parent).st_mode)
        os.chmod(parent, mode | 0o011)


def _user_command(env: dict, base: Path, merged: Path, *extra: str) -> list[str]:
    return ["env", f"PYTHONPATH={env['pythonpath']}", env["python"], "-m", "overlayfuse",
            *extra, f"{base}/lower:{base}/lower2", str(base / "upper"), str(merged)]


@contextlib.contextmanager
def user_mount(env: dict, base: Path, *extra: str) -> Iterator[Path]:
    merged = base / "merged"
    done = as_user(env, *_user_command(env, base, merged, *extra), check=False)
    assert done.returncode == 0, done.stderr
    try:
        yield merged
    finally:
        as_user(env, "fusermount3", "-u", str(merged), check=False)
        mounts.unmount(merged)


@pytest.fixture
def user_stack(user_env: dict, tmp_path: Path) -> Path:
    base = tmp_path / "stack"
    build_layer(base / "lower", {"d/f": "file:lower", "d/g": "file:gone", "root-only/x": "file:x",
                                 "shared": "file:shared", "ld": "dir", "ld/in": "file:in"})
    build_layer(base / "lower2", {"ld/deep": "file:deep"})
    os.chmod(base / "lower/shared", 0o666)
    for name in ("upper", "merged"):
        (base / name).mkdir()
    os.chown(base / "upper", user_env["uid"], user_env["gid"])
    os.chown(base / "merged", user_env["uid"], user_env["gid"])
    os.chmod(base, 0o777)          # the workdir is made beside the upper dir
    for owned in ("lower/d", "lower/d/f", "lower/d/g", "lower/ld", "lower/ld/in", "lower2/ld",
                  "lower2/ld/deep"):
        os.chown(base / owned, user_env["uid"], user_env["gid"])
    _open_to(base)
    return base


def test_unprivileged_mount_writes_kernel_format(user_env: dict, user_stack: Path) -> None:
    base = user_stack
    with user_mount(user_env, base) as merged:
        shell = (f"cd {merged} && echo more >> d/f && rm d/g && rm -r ld && mkdir ld && "
                 f"touch d/new && cat d/f && ls -A ld")
        done = as_user(user_env, "sh", "-c", shell, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["lowermore"]
        denied = as_user(user_env, "sh", "-c", f"touch {merged}/root-only/y", check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        # World-writable, but owned by root: the copy could not keep its owner. Kernel
        # overlayfs in a user namespace refuses the same with EOVERFLOW.
        denied = as_user(user_env, "sh", "-c", f"echo x >> {merged}/shared", check=False)
        assert "Value too large" in denied.stderr
        assert not (base / "upper/shared").exists()
        upper = base / "upper"
        whiteout = os.lstat(upper / "d/g")
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
        assert os.getxattr(upper / "ld", "user.overlay.opaque") == b"y"
        assert os.stat(upper / "d/new").st_uid == user_env["uid"]
        listing = as_user(user_env, "sh", "-c", f"cd {merged} && find . -mindepth 1 | sort")
        view = [path[2:] for path in listing.stdout.split()]
    assert (base / "lower/d/g").read_text() == "gone"
    # The same upper dir under kernel overlayfs in userxattr mode, in a user namespace.
    kernel_view = subprocess.run(
        ["runuser", "-u", user_env["user"], "--", "unshare", "-Urm", "sh", "-c",
         f"mkdir -p {base}/kmerged && mount -t overlay overlay -o userxattr,"
         f"lowerdir={base}/lower:{base}/lower2,upperdir={base}/upper,"
         f"workdir={base}/.upper.overlayfuse-work {base}/kmerged && "
         f"cd {base}/kmerged && find . -mindepth 1 | sort && cat d/f"],
        capture_output=True, text=True)
    if kernel_view.returncode != 0 and "mount" in kernel_view.stderr:
        pytest.skip(f"kernel overlayfs in a user namespace: {kernel_view.stderr.strip()}")
    assert kernel_view.returncode == 0, kernel_view.stderr
    lines = kernel_view.stdout.split()
    assert sorted(p[2:] for p in lines if p.startswith("./")) == sorted(view)
    assert lines[-1] == "lowermore"


def test_unprivileged_second_mount_of_the_same_upper_is_refused(user_env: dict,
                                                                user_stack: Path) -> None:
    base = user_stack
    second = base / "second"
    second.mkdir()
    os.chown(second, user_env["uid"], user_env["gid"])
    command = [user_env["python"], "-m", "overlayfuse", f"{base}/lower:{base}/lower2",
               str(base / "upper"), str(second)]
    with user_mount(user_env, base):
        refused = as_user(user_env, "env", f"PYTHONPATH={user_env['pythonpath']}", *command,
                          check=False)
        assert not mounts.is_mounted(second)
    assert (refused.returncode, refused.stderr) == (
        1, "overlayfuse: upperdir is in-use as upperdir/workdir of another mount: "
           f"{base}/upper (Device or resource busy)\n")
    # The first mount is gone (through fusermount3): so is its lock.
    again = as_user(user_env, "env", f"PYTHONPATH={user_env['pythonpath']}", *command,
                    check=False)
    try:
        assert again.returncode == 0, again.stderr
    finally:
        as_user(user_env, "fusermount3", "-u", str(second), check=False)
        mounts.unmount(second)


@pytest.mark.parametrize("option, moves", [("relatime", True), ("noatime", False)])
def test_unprivileged_noatime_holds(user_env: dict, user_stack: Path, option: str,
                                    moves: bool) -> None:
    # Without root no copy of the upper mount carries the policy: noatime still holds
    # (O_NOATIME opens); relatime is the upper filesystem's own (relatime here).
    (user_stack / "upper/mine").write_text("mine")
    os.chown(user_stack / "upper/mine", user_env["uid"], user_env["gid"])
    os.utime(user_stack / "upper/mine", (1000, 2000))       # atime before mtime
    with user_mount(user_env, user_stack, "-o", option) as merged:
        as_user(user_env, "cat", str(merged / "mine"))
        seen = int(as_user(user_env, "stat", "-c", "%X", str(merged / "mine")).stdout)
    assert (seen != 1000) == moves
    assert (os.stat(user_stack / "upper/mine").st_atime != 1000) == moves


def _daemons(merged: Path) -> list[int]:
    """Live processes of the test user whose command line names `merged`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            continue
        if os.fsencode(merged) in argv and state != "Z":
            found.append(int(entry))
    return found


def test_unprivileged_stop_signal_unmounts(user_env: dict, user_stack: Path) -> None:
    # Not root: the daemon cannot umount2(); it must go through fusermount3 itself.
    base = user_stack
    merged = base / "merged"
    done = as_user(user_env, *_user_command(user_env, base, merged), check=False)
    assert done.returncode == 0, done.stderr
    try:
        assert mounts.is_mounted(merged)
        daemons = _daemons(merged)
        assert len(daemons) == 1
        os.kill(daemons[0], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while (mounts.is_mounted(merged) or _daemons(merged)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not mounts.is_mounted(merged)
        assert _daemons(merged) == []
    finally:
        for pid in _daemons(merged):
            os.kill(pid, signal.SIGKILL)
        mounts.unmount(merged)


def test_refusal_by_fusermount3_is_one_line(user_env: dict, user_stack: Path) -> None:
    # A mountpoint the user may not write: fusermount3 refuses, and says why.
    base = user_stack
    merged = base / "root-owned"
    merged.mkdir()
    done = as_user(user_env, *_user_command(user_env, base, merged), check=False)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"overlayfuse: cannot mount on {merged}: fusermount3: ")
    assert "Traceback" not in done.stderr
    assert not mounts.is_mounted(merged)
    assert _daemons(merged) == []


def test_unprivileged_metacopy(user_env: dict, user_stack: Path) -> None:
    """Without root the marker goes to user.overlay.metacopy; the data copy works as well."""
    base = user_stack
    with user_mount(user_env, base, "-o", "metacopy=on") as merged:
        done = as_user(user_env, "sh", "-c", f"cd {merged} && chmod 600 d/f && cat d/f",
                       check=False)
        assert done.returncode == 0 and done.stdout == "lower", done.stderr
        stub = base / "upper/d/f"
        assert os.getxattr(stub, "user.overlay.metacopy") == b""
        assert os.lstat(stub).st_size == len("lower") and stub.read_bytes() == b"\0" * 5
        done = as_user(user_env, "sh", "-c", f"cd {merged} && echo more >> d/f && cat d/f",
                       check=False)
        assert done.returncode == 0 and done.stdout.split() == ["lowermore"], done.stderr
        assert "user.overlay.metacopy" not in os.listxattr(stub)
        assert stat.S_IMODE(os.lstat(stub).st_mode) == 0o600
