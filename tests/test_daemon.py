"""Daemon lifecycle: daemonizing, unmount by fusermount3 / umount, signals, mount(8) with
`-t fuse.overlayfuse`, and a podman-style command line.

A daemonized overlayfuse is nobody's child by the time it serves. To see how it exits, every
such command runs under a small "reaper" process that is a child subreaper
(PR_SET_CHILD_SUBREAPER): the daemon is re-parented to it, and it reports each exit status.
Daemons are found by pid through /proc/PID/cmdline (which holds the test's unique mountpoint)
and only ever signalled by that pid.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerspec import build_stack, raw_snapshot
import overlayfuse
from overlayfuse import Overlay, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

BIN = Path(sys.executable).parent
COMMAND = str(BIN / "overlayfuse")
WAIT = 15.0

REAPER = r"""
import ctypes, json, os, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl failed")
def say(**event):
    print(json.dumps(event), flush=True)
result = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)
say(event="returned", code=result.returncode, stdout=result.stdout, stderr=result.stderr)
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    say(event="exited", pid=pid, code=os.waitstatus_to_exitcode(status))
say(event="done")
"""


class Reaper:
    """Runs a command under a subreaper; reports its return and every orphan's exit."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", REAPER, *command],
                                        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        env=env, text=True)
        self.exits: dict[int, int] = {}
        self.done = False

    def next_event(self, timeout: float = WAIT) -> dict:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError("no word from the reaper")
        line = self.process.stdout.readline()
        if not line:
            raise EOFError("the reaper ended early")
        event = json.loads(line)
        if event["event"] == "exited":
            self.exits[event["pid"]] = event["code"]
        elif event["event"] == "done":
            self.done = True
        return event

    def returned(self) -> dict:
        while (event := self.next_event())["event"] != "returned":
            pass
        return event

    def exit_code(self, pid: int, timeout: float = WAIT) -> int:
        deadline = time.monotonic() + timeout
        while pid not in self.exits:
            if self.done:
                raise AssertionError(f"process {pid} was not reaped by the reaper")
            self.next_event(max(0.1, deadline - time.monotonic()))
        return self.exits[pid]

    def close(self) -> None:
        try:
            self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def processes_serving(mountpoint: Path, exclude: set[int] = frozenset()) -> list[int]:
    """Live overlayfuse processes whose command line names this mountpoint."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if os.fsencode(mountpoint) in argv and any(b"overlayfuse" in a for a in argv):
            found.append(int(entry))
    return found


def the_daemon(mountpoint: Path, reaper: Reaper) -> int:
    # The intermediate process of the double fork may take a moment to be gone.
    deadline = time.monotonic() + 5
    while len(pids := processes_serving(mountpoint, exclude={reaper.process.pid})) > 1 \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(pids) == 1, f"expected one daemon for {mountpoint}, found {pids}"
    return pids[0]


def wait_gone(pid: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running")
        time.sleep(0.02)


def stop_by_pid(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_gone(pid, 5)
            return
        except TimeoutError:
            continue


@pytest.fixture
def stack(tmp_path: Path) -> dict:
    return build_stack(tmp_path / "s", [{"top": "file:top", "d/x": "file:x"},
                                        {"bottom": "file:bottom", "d/y": "file:y"}],
                       {"up": "file:up"})


@pytest.fixture
def reaped() -> Iterator[list[tuple[Reaper, Path]]]:
    """Reapers started by a test, each with its mountpoint: cleaned up whatever happened."""
    started: list[tuple[Reaper, Path]] = []
    yield started
    for reaper, mountpoint in started:
        leftover = processes_serving(mountpoint, exclude={reaper.process.pid})
        mounts.unmount(mountpoint)
        for pid in leftover:
            stop_by_pid(pid)
        reaper.close()


def start(reaped: list, command: list[str], mountpoint: Path,
          env: dict[str, str] | None = None) -> Reaper:
    reaper = Reaper(command, env)
    reaped.append((reaper, mountpoint))
    return reaper


def mount_options(stack: dict) -> str:
    lowers = ":".join(str(p) for p in stack["lowers"])
    return f"lowerdir={lowers},upperdir={stack['upper']},workdir={stack['work']}"


EXPECTED_TOP = ["bottom", "d", "top", "up"]


def test_daemon_mode_returns_once_the_mount_is_live(stack: dict, reaped: list) -> None:
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", mount_options(stack), str(merged)], merged)
    returned = reaper.returned()
    assert returned["code"] == 0, returned["stderr"]
    assert "Traceback" not in returned["stderr"]
    # Live at once: no waiting, no polling.
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    assert (merged / "d/y").read_text() == "y"
    pid = the_daemon(merged, reaper)
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null", fd
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert os.getsid(pid) != os.getsid(0)          # detached from our session
    with open(f"/proc/{pid}/status") as status:
        ppid = int(next(line for line in status if line.startswith("PPid:")).split()[1])
    assert ppid == reaper.process.pid               # orphaned, not a child of the command
    result = subprocess.run(["fusermount3", "-u", str(merged)], capture_output=True)
    assert result.returncode == 0
    assert reaper.exit_code(pid) == 0
    assert not mounts.is_mounted(merged)


@pytest.mark.parametrize("how", [["fusermount3", "-u"], ["umount"]], ids=["fusermount3", "umount"])
def test_unmount_ends_the_daemon(stack: dict, reaped: list, how: list[str]) -> None:
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", mount_options(stack), str(merged)], merged)
    assert reaper.returned()["code"] == 0
    pid = the_daemon(merged, reaper)
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    result = subprocess.run([*how, str(merged)], capture_output=True)
    assert result.returncode == 0, result.stderr
    assert reaper.exit_code(pid) == 0
    assert not Path(f"/proc/{pid}").exists()
    assert not mounts.is_mounted(merged)


@pytest.mark.parametrize("how", [["fusermount3", "-u", "-z"], ["umount", "-l"]],
                         ids=["fusermount3", "umount"])
def test_lazy_unmount_with_an_open_file(stack: dict, reaped: list, how: list[str]) -> None:
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, str(stack["lowers"][0]) + ":" + str(stack["lowers"][1]),
                            str(stack["upper"]), str(merged), "--workdir", str(stack["work"])],
                   merged)
    assert reaper.returned()["code"] == 0
    pid = the_daemon(merged, reaper)
    with open(merged / "top") as held:
        subprocess.run([*how, str(merged)], check=True, capture_output=True)
        assert not mounts.is_mounted(merged)
        assert held.read() == "top"            # still served while the file is open
    # The last reference is gone: the daemon ends.
    assert reaper.exit_code(pid) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_a_foreground_daemon(stack: dict, tmp_path: Path, sig: int) -> None:
    merged = stack["merged"]
    with Overlay(stack["lowers"], stack["upper"], stack["work"], merged,
                 log_file=tmp_path / "log") as overlay:
        process = overlay.process
        assert process is not None
        # Serving (so the signal handler is in place), then signalled.
        assert sorted(os.listdir(merged)) == EXPECTED_TOP
        process.send_signal(sig)
        assert process.wait(timeout=WAIT) == 0
        assert not mounts.is_mounted(merged)
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log
    assert f"received signal {int(sig)}" in log


def _opening_a_fifo(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read() == "wait_for_partner"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_start_up_ends_it_before_the_mount(stack: dict, tmp_path: Path,
                                                                sig: int) -> None:
    # Ctrl-C while the command still works (held up here opening its log file, a FIFO that
    # nobody reads yet): it ends as the signal's default action ends it, without a traceback
    # and with nothing mounted.
    merged = stack["merged"]
    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    command = subprocess.Popen([COMMAND, "-f", "--log-file", str(fifo), "-o",
                                mount_options(stack), str(merged)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not _opening_a_fifo(command.pid):
            assert command.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        command.send_signal(sig)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)     # its open goes on now
        try:
            stdout, stderr = command.communicate(timeout=WAIT)
        finally:
            os.close(reader)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
            mounts.unmount(merged)
    assert (command.returncode, stdout, stderr) == (-sig, "", "")
    assert not mounts.is_mounted(merged)


# Where /bin/sh looks when it has no PATH: util-linux mount(8) drops PATH from the
# environment before it runs /sbin/mount.fuse3, which runs `/bin/sh -c 'overlayfuse' ...`.
SH_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _check_fuse_mount(merged: Path, reaper: Reaper, source: str) -> None:
    returned = reaper.returned()
    assert returned["code"] == 0, returned["stderr"]
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    with open("/proc/self/mountinfo") as mountinfo:
        fields = next(line.split() for line in mountinfo if line.split()[4] == str(merged))
    separator = fields.index("-")
    assert fields[separator + 1:separator + 3] == ["fuse.overlayfuse", source]
    pid = the_daemon(merged, reaper)
    assert subprocess.run(["umount", str(merged)], capture_output=True).returncode == 0
    assert reaper.exit_code(pid) == 0
    assert not mounts.is_mounted(merged)


@pytest.mark.skipif(shutil.which("overlayfuse", path=SH_DEFAULT_PATH) is None,
                    reason="mount(8) runs its helpers without PATH: overlayfuse must be "
                           f"installed in {SH_DEFAULT_PATH} for `mount -t fuse.overlayfuse`")
def test_mount_t_fuse_overlayfuse(stack: dict, reaped: list) -> None:
    merged = stack["merged"]
    reaper = start(reaped, ["mount", "-t", "fuse.overlayfuse", "overlay", str(merged),
                            "-o", mount_options(stack)], merged)
    _check_fuse_mount(merged, reaper, "overlay")


def test_mount_fuse3_helper_finds_overlayfuse_in_path(stack: dict, reaped: list) -> None:
    # What `mount -t fuse.overlayfuse overlay MNT -o ...` runs, with PATH reaching .venv/bin.
    merged = stack["merged"]
    helper = shutil.which("mount.fuse3", path="/sbin:/usr/sbin") or "mount.fuse3"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', SH_DEFAULT_PATH)}")
    reaper = start(reaped, [helper, "overlay", str(merged), "-o", "rw," + mount_options(stack),
                            "-t", "fuse.overlayfuse"], merged, env=env)
    _check_fuse_mount(merged, reaper, "overlay")


def test_mount_t_fuse_with_the_program_in_the_source(stack: dict, reaped: list) -> None:
    # mount(8) -> mount.fuse3 -> overlayfuse, the whole chain, the program named in the
    # source as `PROGRAM#SOURCE` (no PATH look-up needed).
    merged = stack["merged"]
    reaper = start(reaped, ["mount", "-t", "fuse", f"{COMMAND}#overlay", str(merged),
                            "-o", mount_options(stack)], merged)
    _check_fuse_mount(merged, reaper, "overlay")


def test_podman_style_command_line(stack: dict, reaped: list) -> None:
    merged = stack["merged"]
    lowers = ":".join(str(p) for p in stack["lowers"])
    options = f"lowerdir={lowers},upperdir={stack['upper']},workdir={stack['work']},,volatile,"
    before_lowers = [raw_snapshot(p) for p in stack["lowers"]]
    reaper = start(reaped, [COMMAND, "-o", options, str(merged)], merged)
    returned = reaper.returned()
    assert returned["code"] == 0, returned["stderr"]
    assert returned["stderr"] == "" and returned["stdout"] == ""
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    assert (merged / "bottom").read_text() == "bottom"
    pid = the_daemon(merged, reaper)
    assert subprocess.run(["fusermount3", "-u", str(merged)], capture_output=True).returncode == 0
    assert reaper.exit_code(pid) == 0
    assert [raw_snapshot(p) for p in stack["lowers"]] == before_lowers


def test_warning_goes_to_the_terminal_before_detaching(stack: dict, reaped: list) -> None:
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", mount_options(stack) + ",frobnicate", str(merged)],
                   merged)
    returned = reaper.returned()
    assert returned["code"] == 0
    lines = returned["stderr"].splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "frobnicate" in lines[0]
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    pid = the_daemon(merged, reaper)
    mounts.unmount(merged)
    assert reaper.exit_code(pid) == 0


def test_failed_mount_in_daemon_mode_leaves_no_process(stack: dict, reaped: list,
                                                       tmp_path: Path) -> None:
    # The mountpoint is already a mount point of something that cannot be stacked on by
    # this check: here simply a missing layer, refused before any fork.
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", f"lowerdir={tmp_path}/missing", str(merged)], merged)
    returned = reaper.returned()
    assert returned["code"] != 0 and len(returned["stderr"].splitlines()) == 1
    while not reaper.done:
        reaper.next_event()
    assert reaper.exits == {}                      # nothing was forked
    assert not mounts.is_mounted(merged)


def _holders_of(path: Path) -> set[int]:
    """Live processes with an fd that holds an flock on the directory `path` (/proc/locks
    names the process that took a lock, which may be gone; fdinfo names who has it now)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    if any(line.startswith("lock:") and " FLOCK " in line and
                           line.split()[6] == inode for line in info):
                        holders.add(int(pid))
        except OSError:
            continue
    return holders


def test_upper_and_workdir_are_locked_by_the_daemon_alone_until_it_dies(
        stack: dict, reaped: list, tmp_path: Path) -> None:
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", mount_options(stack), str(merged)], merged)
    assert reaper.returned()["code"] == 0
    pid = the_daemon(merged, reaper)
    # Held by the daemon, not by the command that started it (gone) or anyone else.
    assert _holders_of(stack["upper"]) == _holders_of(stack["work"]) == {pid}
    second = tmp_path / "second"
    second.mkdir()
    refused = subprocess.run([COMMAND, "-o", mount_options(stack), str(second)],
                             capture_output=True, text=True)
    assert (refused.returncode, refused.stderr) == (
        1, "overlayfuse: upperdir is in-use as upperdir/workdir of another mount: "
           f"{stack['upper']} (Device or resource busy)\n")
    assert not mounts.is_mounted(second)
    os.kill(pid, signal.SIGKILL)
    assert reaper.exit_code(pid) == -signal.SIGKILL
    assert _holders_of(stack["upper"]) == _holders_of(stack["work"]) == set()
    mounts.unmount(merged)                  # the dead daemon's mount
    again = start(reaped, [COMMAND, "-o", mount_options(stack), str(second)], second)
    assert again.returned()["code"] == 0
    assert sorted(os.listdir(second)) == EXPECTED_TOP


# ---- start-up: the command mounts, the daemon loads the FUSE runtime afterwards ---------------

# What the command must not load before it returns: the FUSE runtime and the request handlers
# (the daemon loads them), and the heavy parts of the standard library.
NOT_IN_THE_COMMAND = {"pyfuse3", "trio", "overlayfuse.daemon", "overlayfuse.loop",
                      "overlayfuse.ops", "overlayfuse.tree", "logging", "dataclasses", "inspect",
                      "subprocess", "ctypes.util", "socket", "shutil", "typing_extensions"}


def test_the_command_leaves_the_runtime_to_the_daemon(stack: dict, reaped: list) -> None:
    # -X importtime reports each import on stderr; the daemon's stderr is /dev/null from the
    # fork on, so every module reported was loaded by the command itself.
    merged = stack["merged"]
    reaper = start(reaped, ["env", "PYTHONPROFILEIMPORTTIME=1", COMMAND, "-o",
                            mount_options(stack), str(merged)], merged)
    returned = reaper.returned()
    assert returned["code"] == 0, returned["stderr"]
    loaded = {line.split("|")[-1].strip() for line in returned["stderr"].splitlines()
              if line.startswith("import time:")}
    assert "overlayfuse.fusedev" in loaded          # the report is there at all
    assert loaded & NOT_IN_THE_COMMAND == set()
    # and the daemon serves all the same
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    pid = the_daemon(merged, reaper)
    mounts.unmount(merged)
    assert reaper.exit_code(pid) == 0


class _RecordingLoop(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stands in for overlayfuse.loop: records the cyclic collector's state while the daemon
    loads it and once it serves."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def find_spec(self, name: str, path: object, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name == "overlayfuse.loop" else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        self.seen["loading"] = gc.isenabled()

        def serve(*args: object) -> None:
            self.seen["serving"] = gc.isenabled()
            self.seen["frozen"] = gc.get_freeze_count()
        module.serve = serve        # type: ignore[attr-defined]


def test_the_daemon_loads_the_runtime_without_the_cyclic_collector(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # It would walk the modules being loaded again and again and free almost none of them;
    # they stay out of later collections (frozen), and the daemon serves with the collector on.
    from overlayfuse import daemon
    loop = _RecordingLoop()
    monkeypatch.setattr(sys, "meta_path", [loop, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "overlayfuse.loop", raising=False)
    monkeypatch.delattr(overlayfuse, "loop", raising=False)
    try:
        stack = types.SimpleNamespace(mountpoint="/nowhere")
        assert daemon._serve(stack, None, None) == 0    # type: ignore[arg-type]
    finally:
        gc.unfreeze()
    assert loop.seen["loading"] is False
    assert loop.seen["serving"] is True
    assert isinstance(loop.seen["frozen"], int) and loop.seen["frozen"] > 0
    assert gc.isenabled()


def test_the_command_script_and_package_leave_re_and_enum_alone() -> None:
    # `re` and `enum` (brought in by pip's wrapper for an entry point, and by `signal`) took
    # longer to import than the rest of the command together. Run without site (-S), so that
    # what is reported is what the command loads, not what a venv's start-up loaded before.
    package_root = Path(overlayfuse.__file__).parent.parent
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", COMMAND, "--version"],
                            env=dict(os.environ, PYTHONPATH=str(package_root)),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    loaded = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
              if line.startswith("import time:")}
    assert "overlayfuse.fusedev" in loaded
    assert loaded & {"re", "enum", "signal"} == set()


def test_stop_signal_while_the_runtime_loads(stack: dict, reaped: list, tmp_path: Path) -> None:
    # The command returns before the daemon has loaded the runtime; a SIGTERM sent at once
    # must still end in a clean unmount, not a dead mount.
    merged = stack["merged"]
    log = tmp_path / "log"
    reaper = start(reaped, [COMMAND, "--log-file", str(log), "-o", mount_options(stack),
                            str(merged)], merged)
    assert reaper.returned()["code"] == 0
    pid = the_daemon(merged, reaper)
    os.kill(pid, signal.SIGTERM)
    assert reaper.exit_code(pid) == 0
    assert not mounts.is_mounted(merged)
    assert "received signal 15: unmounting" in log.read_text()


@pytest.fixture
def broken_runtime(tmp_path: Path) -> dict[str, str]:
    """An environment where pyfuse3 is found but fails to load."""
    fake = tmp_path / "broken"
    fake.mkdir()
    (fake / "pyfuse3.py").write_text("raise ImportError('pyfuse3 broken on purpose')\n")
    return dict(os.environ, PYTHONPATH=str(fake))


def test_a_runtime_that_fails_in_the_foreground(stack: dict, broken_runtime: dict) -> None:
    merged = stack["merged"]
    result = subprocess.run([COMMAND, "-f", "-o", mount_options(stack), str(merged)],
                            capture_output=True, text=True, env=broken_runtime,
                            stdin=subprocess.DEVNULL, timeout=WAIT)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot load the FUSE runtime" in lines[0], result.stderr
    assert "broken on purpose" in lines[0]
    assert not mounts.is_mounted(merged)


def test_a_runtime_that_fails_in_the_daemon(stack: dict, reaped: list, broken_runtime: dict,
                                            tmp_path: Path) -> None:
    # The command has returned 0 by then (see docs/usage.md): the daemon logs the failure,
    # removes the mount and exits 1.
    merged = stack["merged"]
    log = tmp_path / "log"
    reaper = start(reaped, [COMMAND, "--log-file", str(log), "-o", mount_options(stack),
                            str(merged)], merged, env=broken_runtime)
    assert reaper.returned()["code"] == 0
    while not reaper.done:
        reaper.next_event()
    assert sorted(reaper.exits.values()) == [0, 1]     # the intermediate fork, the daemon
    assert not mounts.is_mounted(merged)
    assert "cannot load the FUSE runtime: pyfuse3 broken on purpose" in log.read_text()


def _mount_flags(merged: Path) -> tuple[set[str], str, str]:
    """Options (per mount and of the superblock), type and source of the mount at `merged`."""
    with open("/proc/self/mountinfo") as mountinfo:
        fields = next(line.split() for line in mountinfo if line.split()[4] == str(merged))
    separator = fields.index("-")
    fstype, source, super_options = fields[separator + 1:separator + 4]
    return set(fields[5].split(",")) | set(super_options.split(",")), fstype, source


@pytest.mark.parametrize("extra, flags, absent", [
    ("", {"rw"}, {"nosuid", "nodev", "noexec"}),
    (",ro,noexec,nodev,noatime", {"ro", "noexec", "nodev", "noatime"}, {"nosuid"}),
    (",nosuid,sync,dirsync", {"rw", "nosuid", "sync", "dirsync"}, {"nodev"}),
], ids=["defaults", "ro-noexec-nodev-noatime", "nosuid-sync-dirsync"])
def test_mount_options_reach_the_kernel(stack: dict, reaped: list, extra: str, flags: set[str],
                                        absent: set[str]) -> None:
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", mount_options(stack) + extra + ",fsname=my\\,fs",
                            str(merged)], merged)
    returned = reaper.returned()
    assert returned["code"] == 0, returned["stderr"]
    mount_flags, fstype, source = _mount_flags(merged)
    assert flags <= mount_flags and not absent & mount_flags, mount_flags
    assert {"default_permissions", "allow_other", "user_id=0", "group_id=0"} <= mount_flags
    assert (fstype, source) == ("fuse.overlayfuse", "my,fs")
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    pid = the_daemon(merged, reaper)
    mounts.unmount(merged)
    assert reaper.exit_code(pid) == 0


def test_auto_unmount_outlives_a_killed_daemon(stack: dict, reaped: list) -> None:
    # With auto_unmount, fusermount3 watches the daemon and unmounts when it dies.
    merged = stack["merged"]
    reaper = start(reaped, [COMMAND, "-o", mount_options(stack) + ",auto_unmount", str(merged)],
                   merged)
    assert reaper.returned()["code"] == 0
    assert sorted(os.listdir(merged)) == EXPECTED_TOP
    daemons = [pid for pid in processes_serving(merged, exclude={reaper.process.pid})
               if b"fusermount3" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(daemons) == 1
    os.kill(daemons[0], signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while mounts.is_mounted(merged) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not mounts.is_mounted(merged)
