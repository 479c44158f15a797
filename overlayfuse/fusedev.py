"""The FUSE mount itself, made by the command before the FUSE runtime is loaded.

As libfuse does it: mount(2) with an fd on /dev/fuse when we are root, and otherwise
fusermount3, which mounts and hands the fd back over a socket. The daemon then serves that
fd, given to pyfuse3 as the mountpoint `/dev/fd/N` (libfuse then mounts nothing itself), and
unmounts with `unmount` when a signal or a failure ends it.
"""

from __future__ import annotations

import os
import select
import stat
from collections import namedtuple

from .errors import MountError
from .layers import Stack
from .options import MountOptions
from .syscalls import MNT_DETACH, umount2
from .syscalls import mount as mount_syscall

FUSERMOUNT = "fusermount3"

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_DIRSYNC, MS_NOATIME = 16, 128, 1024
# Each flag option: the mount flag and whether it sets it. Without any, FUSE mounts nosuid,nodev.
FLAG_OPTIONS = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True), "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True), "atime": (MS_NOATIME, False),
}
DEFAULT_FLAGS = MS_NOSUID | MS_NODEV
# Options the FUSE kernel module reads from the mount data. allow_root is allow_other there;
# libfuse's session then refuses everyone but the owner and root.
KERNEL_OPTIONS = {"default_permissions": "default_permissions", "allow_other": "allow_other",
                  "allow_root": "allow_other"}
SESSION_OPTIONS = frozenset({"allow_root"})


def fuse_options(options: MountOptions, stack: Stack) -> set[str]:
    """Our defaults, then the user's options (a user's fsname= or subtype= replaces ours)."""
    fsname = options.source.replace(",", "_").replace("\\", "_")
    chosen = {"default_permissions", f"fsname={fsname}", "subtype=overlayfuse"}
    if os.geteuid() == 0:
        # Like kernel overlayfs: usable by every user, and device nodes and setuid programs
        # work (FUSE's defaults are nodev,nosuid and only the mounter).
        chosen.update({"allow_other", "dev", "suid"})
    for option in options.fuse_options:
        key = option.partition("=")[0]
        opposite = {"dev": "nodev", "nodev": "dev", "suid": "nosuid", "nosuid": "suid"}.get(key)
        chosen = {c for c in chosen if c.partition("=")[0] not in (key, opposite)}
        chosen.add(option)
    if stack.read_only:
        chosen.add("ro")
    return chosen


class MountRequest(namedtuple("MountRequest", "flags kernel fsname subtype auto_unmount")):
    """FUSE options sorted the way libfuse sorts them before mounting: the mount flags, the
    options for the mount data (`kernel`), fsname= and subtype= (or None), auto_unmount."""

    __slots__ = ()

    @classmethod
    def of(cls, options: set[str] | frozenset[str]) -> MountRequest:
        flags = DEFAULT_FLAGS
        kernel: dict[str, None] = {}
        values: dict[str, str] = {}
        for option in sorted(options):
            key, _, value = option.partition("=")
            if option in FLAG_OPTIONS:
                flag, on = FLAG_OPTIONS[option]
                flags = flags | flag if on else flags & ~flag
            elif option in KERNEL_OPTIONS:
                kernel[KERNEL_OPTIONS[option]] = None
            elif key in ("fsname", "subtype"):
                values[key] = value
        return cls(flags, tuple(kernel), values.get("fsname"), values.get("subtype"),
                   "auto_unmount" in options)

    def fusermount_options(self) -> str:
        """The -o string for fusermount3, which takes the flags as words."""
        words = ["ro" if self.flags & MS_RDONLY else "rw"]
        words += [name for name, (flag, on) in FLAG_OPTIONS.items()
                  if on and flag != MS_RDONLY and self.flags & flag]
        words += self.kernel
        for key, value in (("fsname", self.fsname), ("subtype", self.subtype)):
            if value is not None:
                words.append(f"{key}=" + value.replace("\\", "\\\\").replace(",", "\\,"))
        if self.auto_unmount:
            words.append("auto_unmount")
        return ",".join(words)


class FuseMount(namedtuple("FuseMount", "fd mountpoint keepalive")):
    """A mounted FUSE connection: an fd on /dev/fuse, where requests wait until it is served.
    With auto_unmount, `keepalive` is the socket fusermount3 watches: it unmounts when the
    socket closes; else None."""

    __slots__ = ()


def mount(mountpoint: str, options: set[str] | frozenset[str]) -> FuseMount:
    """Mount a FUSE connection on `mountpoint` with libfuse's options."""
    request = MountRequest.of(options)
    if os.geteuid() == 0 and not request.auto_unmount:
        try:
            return FuseMount(_mount_directly(mountpoint, request), mountpoint, None)
        except PermissionError:
            pass    # root of a user namespace that may not mount FUSE: fusermount3, as libfuse
        except OSError as e:
            raise MountError(e.errno, "cannot mount", mountpoint) from None
    return _mount_with_fusermount(mountpoint, request)


def _mount_directly(mountpoint: str, request: MountRequest) -> int:
    root_type = stat.S_IFMT(os.stat(mountpoint).st_mode)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = [*request.kernel, f"fd={fd}", f"rootmode={root_type:o}", f"user_id={os.getuid()}",
            f"group_id={os.getgid()}"]
    fstype = "fuse" if request.subtype is None else f"fuse.{request.subtype}"
    try:
        mount_syscall(request.fsname or request.subtype or "/dev/fuse", mountpoint, fstype,
                      request.flags, ",".join(data))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount_with_fusermount(mountpoint: str, request: MountRequest) -> FuseMount:
    import socket   # only here: root mounts without it

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    error_read, error_write = os.pipe()
    try:
        os.set_inheritable(theirs.fileno(), True)
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        argv = [FUSERMOUNT, "-o", request.fusermount_options(), "--", mountpoint]
        # With auto_unmount it outlives the command: it must not hold the command's stdin and
        # stdout (podman waits for the ends of those pipes).
        redirect = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, error_write, 2)]
        try:
            # Without the command's held stop signals (cli.main): it may outlive the command.
            pid = os.posix_spawnp(FUSERMOUNT, argv, env, file_actions=redirect, setsigmask=())
        except OSError as e:
            ours.close()
            os.close(error_read)
            raise MountError(e.errno, "cannot run fusermount3", FUSERMOUNT) from None
    finally:
        theirs.close()
        os.close(error_write)
    try:
        fds = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)[1]
    except OSError:
        fds = []
    if fds and request.auto_unmount:
        os.close(error_read)    # fusermount3 stays, quiet, until the socket closes
        return FuseMount(fds[0], mountpoint, ours.detach())
    ours.close()
    status = os.waitpid(pid, 0)[1]
    with open(error_read, errors="replace") as errors:
        message = "; ".join(line.strip() for line in errors if line.strip())
    if not fds:
        why = message or f"fusermount3 failed with status {os.waitstatus_to_exitcode(status)}"
        raise MountError(None, f"cannot mount on {mountpoint}: {why}")
    return FuseMount(fds[0], mountpoint, None)


def unmount(fuse: FuseMount) -> None:
    """Close the connection and unmount it (lazily, as libfuse does); nothing more if the
    kernel has ended it already (unmounted or aborted: the path may name another mount now)."""
    poller = select.poll()
    poller.register(fuse.fd, 0)
    ended = any(events & select.POLLERR for _, events in poller.poll(0))
    os.close(fuse.fd)
    if fuse.keepalive is not None:
        os.close(fuse.keepalive)
    if ended:
        return
    try:
        umount2(fuse.mountpoint, MNT_DETACH)
        return
    except OSError:
        pass        # not permitted: fusermount3 may
    try:
        pid = os.posix_spawnp(FUSERMOUNT, [FUSERMOUNT, "-u", "-q", "-z", "--", fuse.mountpoint],
                              os.environ)
    except OSError:
        return
    os.waitpid(pid, 0)
