"""The public Python API: mount an overlay for the duration of a `with` block.

`Overlay` runs the `overlayfuse` command in a child process; `KernelOverlay` mounts kernel
overlayfs with mount(8). Both take the same arguments and give the same object, so the same
code can run on each and the results can be compared. Only the standard library is imported
here: the FUSE runtime lives in the child.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

from .mounts import MOUNT_WAIT, is_mounted, overlayfuse_command, unmount

StrPath = str | os.PathLike[str]
IdRange = tuple[int, int, int]
"""One id-mapping range, as in `-o uidmapping=`: (first id stored in the layers, the id it
shows as through the mount, number of ids)."""

STOP_WAIT = 10.0


class OverlayError(Exception):
    """A mount was refused or did not come up. `message` is the mounter's own error text
    (the `overlayfuse` command's or mount(8)'s stderr); `status` is its exit status, or None
    if it was still running when the wait timed out."""

    def __init__(self, kind: str, merged: Path, message: str, status: int | None) -> None:
        self.merged = merged
        self.message = message
        self.status = status
        super().__init__(f"{kind} could not be mounted on {merged}: {message}")


class BaseOverlay:
    """What `Overlay` and `KernelOverlay` share: the layers, the mount point, and the
    context-manager protocol. Use it to annotate code that takes either."""

    kind: ClassVar[str]

    def __init__(self, lowers: Sequence[StrPath], upper: StrPath | None = None,
                 workdir: StrPath | None = None, merged: StrPath | None = None, *,
                 read_only: bool = False, volatile: bool = False,
                 options: Sequence[str] = ()) -> None:
        """`lowers`: the lower dirs, the first one on top (at least one). `upper` and
        `workdir`: the writable layer and its work dir, on one filesystem; without `upper`
        the mount is read-only. `merged`: the mount point, an existing directory; when None a
        temporary directory is made and removed again. `read_only`: mount read-only even with
        an upper dir. `volatile`: skip fsync. `options`: more `-o` options, passed as they
        are (e.g. "redirect_dir=on")."""
        if not lowers:
            raise ValueError("at least one lower dir is needed")
        if (upper is None) != (workdir is None):
            raise ValueError("upper and workdir go together: give both or neither")
        self.lowers = tuple(Path(p) for p in lowers)
        self.upper = None if upper is None else Path(upper)
        self.workdir = None if workdir is None else Path(workdir)
        self._given_merged = None if merged is None else Path(merged)
        self._made_merged: Path | None = None
        self.read_only = read_only or upper is None
        self.volatile = volatile
        self.options = tuple(options)
        self._mounted = False

    @property
    def merged(self) -> Path:
        """The mount point: the merged view while mounted. One that was made for the mount
        no longer exists after it."""
        merged = self._given_merged or self._made_merged
        if merged is None:
            raise RuntimeError("the overlay has no mount point until it is mounted")
        return merged

    @property
    def mounted(self) -> bool:
        return self._mounted

    def mount(self) -> Self:
        """Mount, and return once the merged view is live. Raises `OverlayError` with the
        mounter's message if the mount is refused."""
        if self._mounted:
            raise RuntimeError(f"{self.kind} is already mounted on {self.merged}")
        if self._given_merged is None:
            prefix = f"{type(self).__name__.lower()}-merged-"
            self._made_merged = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            self._mount()
        except BaseException:
            self._remove_made_merged()
            raise
        self._mounted = True
        return self

    def unmount(self) -> None:
        """Unmount (lazily if the mount is busy) and stop whatever served it. Safe to call
        twice, and after the mount went away by other means."""
        if not self._mounted:
            return
        try:
            self._unmount()
        finally:
            self._mounted = False
            self._remove_made_merged()

    def __enter__(self) -> Self:
        return self.mount()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.unmount()

    def __repr__(self) -> str:
        state = "mounted" if self._mounted else "not mounted"
        where = self._given_merged or self._made_merged
        return f"<{type(self).__name__} on {where} ({state})>"

    def _option_list(self) -> list[str]:
        lowerdir = ":".join(str(p).replace("\\", "\\\\").replace(":", "\\:")
                            for p in self._lowerdirs())
        options = ["lowerdir=" + lowerdir]
        if self.upper is not None:
            options += [f"upperdir={self.upper}", f"workdir={self.workdir}"]
        if self.read_only and self.upper is not None:
            options.append("ro")
        if self.volatile and not self.read_only:
            options.append("volatile")
        return options + list(self.options)

    def _lowerdirs(self) -> tuple[Path, ...]:
        return self.lowers

    def _remove_made_merged(self) -> None:
        # rmdir, never a recursive delete: if the unmount failed, this is still the view.
        if self._made_merged is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._made_merged)

    def _mount(self) -> None:
        raise NotImplementedError

    def _unmount(self) -> None:
        raise NotImplementedError


class Overlay(BaseOverlay):
    """overlayfuse, served by `python -m overlayfuse -f` in a child process of its own
    session (a Ctrl-C reaches the caller, which then unmounts). Works as root and, through
    fusermount3, as any user.

        with Overlay([lower], upper, workdir) as overlay:
            (overlay.merged / "file").write_text("new")
    """

    kind = "overlayfuse"

    def __init__(self, lowers: Sequence[StrPath], upper: StrPath | None = None,
                 workdir: StrPath | None = None, merged: StrPath | None = None, *,
                 read_only: bool = False, volatile: bool = False,
                 options: Sequence[str] = (), timeout: float | None = None,
                 uid_mapping: Sequence[IdRange] = (), gid_mapping: Sequence[IdRange] = (),
                 log_file: StrPath | None = None, debug: bool = False,
                 mount_wait: float = MOUNT_WAIT, program: Sequence[str] | None = None) -> None:
        """As `BaseOverlay`, and: `timeout`: how long the kernel caches entries and
        attributes (seconds; overlayfuse's default when None). `uid_mapping`,
        `gid_mapping`: (stored, shown, size) ranges, as podman passes them. `log_file`:
        where the daemon logs (by default, an unnamed temporary file, dropped at the
        unmount). `debug`:
        log every request. `mount_wait`: seconds to wait for the mount to come up.
        `program`: the command that runs overlayfuse, taking its command-line arguments
        (by default this Python's `-m overlayfuse`)."""
        super().__init__(lowers, upper, workdir, merged, read_only=read_only,
                         volatile=volatile, options=options)
        self.timeout = timeout
        self.uid_mapping = tuple(uid_mapping)
        self.gid_mapping = tuple(gid_mapping)
        self.log_file = None if log_file is None else Path(log_file)
        self.debug = debug
        self.mount_wait = mount_wait
        self.program = list(program) if program is not None else overlayfuse_command()
        self.process: subprocess.Popen[bytes] | None = None
        """The daemon while mounted (to signal it, or to check that it is alive)."""
        self._stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self) -> list[str]:
        """The command line that mounts this overlay (in the foreground)."""
        command = [*self.program, "-f"]
        if self.log_file is not None:
            command += ["--log-file", str(self.log_file)]
        if self.debug:
            command.append("-d")
        return [*command, "-o", ",".join(_escape_commas(o) for o in self._option_list()),
                str(self.merged)]

    def _option_list(self) -> list[str]:
        options = super()._option_list()
        if self.timeout is not None:
            options.append(f"timeout={self.timeout:g}")
        for name, ranges in (("uidmapping", self.uid_mapping),
                             ("gidmapping", self.gid_mapping)):
            if ranges:
                options.append(f"{name}=" + ":".join(f"{c}:{h}:{s}" for c, h, s in ranges))
        return options

    def _mount(self) -> None:
        # The daemon's stderr goes to an unnamed file, not a pipe: nobody has to drain it
        # while the mount is up, and it holds the daemon's own message if the mount fails.
        self._stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=self._stderr,
                                            start_new_session=True)
            self._wait_live()
        except BaseException:
            # Refused, too slow, or interrupted (Ctrl-C): a daemon not yet serving dies of
            # SIGTERM, one that is serving unmounts and exits.
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
            self._stop()
            raise

    def _wait_live(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.mount_wait
        while not is_mounted(self.merged):
            status = self.process.poll()
            if status is not None:
                raise OverlayError(self.kind, self.merged, self._daemon_message(), status)
            if time.monotonic() > deadline:
                raise OverlayError(self.kind, self.merged,
                                   f"not mounted within {self.mount_wait:g} s; "
                                   f"its output: {self._daemon_message()}", None)
            time.sleep(0.005)

    def _daemon_message(self) -> str:
        assert self._stderr is not None
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text or "(it printed nothing)"

    def _unmount(self) -> None:
        self._stop()

    def _stop(self) -> None:
        """Unmount, then reap the daemon (killed if it has not exited in time)."""
        try:
            if self.process is not None:
                unmount(self.merged)
                try:
                    self.process.wait(timeout=STOP_WAIT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                unmount(self.merged)
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None


class KernelOverlay(BaseOverlay):
    """Kernel overlayfs through mount(8), where this process may mount it: as root, or
    inside a user namespace of its own (`unshare -Urm`). `KernelOverlay.unavailable()` says
    why not, elsewhere. Takes the arguments of `Overlay`; those kernel overlayfs has no
    counterpart for are refused (id mappings, `program`) or have no effect (`timeout`,
    `log_file`, `debug`, `mount_wait`)."""

    kind = "kernel overlayfs"

    def __init__(self, lowers: Sequence[StrPath], upper: StrPath | None = None,
                 workdir: StrPath | None = None, merged: StrPath | None = None, *,
                 read_only: bool = False, volatile: bool = False,
                 options: Sequence[str] = (), timeout: float | None = None,
                 uid_mapping: Sequence[IdRange] = (), gid_mapping: Sequence[IdRange] = (),
                 log_file: StrPath | None = None, debug: bool = False,
                 mount_wait: float = MOUNT_WAIT, program: Sequence[str] | None = None) -> None:
        if uid_mapping or gid_mapping:
            raise ValueError("kernel overlayfs has no uid/gid mapping options")
        if program is not None:
            raise ValueError("kernel overlayfs is mounted by mount(8), not by a program")
        super().__init__(lowers, upper, workdir, merged, read_only=read_only,
                         volatile=volatile, options=options)
        self._empty_lower: Path | None = None

    @staticmethod
    @functools.cache
    def unavailable() -> str | None:
        """None if kernel overlayfs can be mounted by this process, else why not (the
        answer of a trial mount, made once per process)."""
        if shutil.which("mount") is None:
            return "mount(8) is not installed"
        with tempfile.TemporaryDirectory(prefix="overlayfuse-probe-") as base:
            for name in ("lower", "upper", "work", "merged"):
                os.mkdir(os.path.join(base, name))
            probe = KernelOverlay([os.path.join(base, "lower")], os.path.join(base, "upper"),
                                  os.path.join(base, "work"), os.path.join(base, "merged"))
            try:
                with probe:
                    return None
            except OverlayError as e:
                # mount(8)'s first line says why; the second only points at dmesg.
                return f"kernel overlayfs cannot be mounted here: {e.message.splitlines()[0]}"

    def command(self) -> list[str]:
        """The mount(8) command line that mounts this overlay."""
        return ["mount", "-t", "overlay", "overlay", "-o", ",".join(self._option_list()),
                str(self.merged)]

    def _option_list(self) -> list[str]:
        options = super()._option_list()
        # overlayfuse's defaults where the kernel's differ, so that both behave alike: dir
        # renames with redirects (a kernel in userxattr mode refuses them).
        if self.upper is not None and not any(
                option.startswith(("redirect_dir=", "metacopy=")) or option == "userxattr"
                for option in self.options):
            options.append("redirect_dir=on")
        return options

    def _lowerdirs(self) -> tuple[Path, ...]:
        # The kernel wants two lower dirs for a mount without an upper dir; an empty one
        # changes nothing.
        if self.upper is None and len(self.lowers) == 1 and self._empty_lower is not None:
            return (*self.lowers, self._empty_lower)
        return self.lowers

    def _mount(self) -> None:
        if self.upper is None and len(self.lowers) == 1:
            self._empty_lower = Path(tempfile.mkdtemp(prefix="overlayfuse-empty-lower-"))
        try:
            done = subprocess.run(self.command(), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise OverlayError(self.kind, self.merged,
                                   done.stderr.strip() or "(mount printed nothing)",
                                   done.returncode)
        except BaseException:
            self._remove_empty_lower()
            raise

    def _unmount(self) -> None:
        try:
            unmount(self.merged)
        finally:
            self._remove_empty_lower()

    def _remove_empty_lower(self) -> None:
        if self._empty_lower is not None:
            os.rmdir(self._empty_lower)
            self._empty_lower = None


def _escape_commas(option: str) -> str:
    return option.replace(",", "\\,")

