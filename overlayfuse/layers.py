"""The layer stack: each layer is an O_PATH fd on its root; every later access is relative
to it. `open_stack` checks a MountOptions against the filesystem, the way kernel overlayfs
checks its mount options, before anything is written anywhere."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from .atime import AtimePolicy
from .errors import MountError
from .options import MountOptions
from .syscalls import (open_dir_path, open_given_dir, open_readable_dir, open_tree_clone, proc_path,
                       set_atime_attrs)

LOCK_GRACE = 2.0       # seconds a busy upper dir or workdir is waited for before refusing
WORK_SUBDIR = "work"   # staging area inside the workdir, the name kernel overlayfs uses too

TRUSTED_PREFIX = b"trusted.overlay."
USER_PREFIX = b"user.overlay."


class Layer:
    """One layer: its index (0 is the top of the stack), its path, an O_PATH fd on its root
    with that root's st_dev and st_ino, and whether it is the upper layer (the writable one:
    on a read-only mount an upperdir is one more lower layer, as in the kernel). Compared
    and hashed by identity: a stack holds each layer once."""

    __slots__ = ("index", "path", "fd", "dev", "ino", "upper")

    def __init__(self, index: int, path: str, fd: int, dev: int, ino: int, upper: bool) -> None:
        self.index = index
        self.path = path
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.upper = upper

    def __repr__(self) -> str:
        return f"Layer({self.index}, {self.path!r}{', upper' if self.upper else ''})"


class Stack:
    """The layers of one mount, opened and checked. Built once, by open_stack."""

    __slots__ = ("layers", "upper", "work_fd", "mountpoint", "single_fs", "forbidden",
                 "xattr_prefix", "volatile", "lock_fds", "atime", "redirect_dir", "metacopy")

    def __init__(self, *, layers: tuple[Layer, ...], upper: Layer | None, work_fd: int | None,
                 mountpoint: str, single_fs: bool, forbidden: frozenset[tuple[int, int]],
                 xattr_prefix: bytes, volatile: bool, lock_fds: tuple[int, ...] = (),
                 atime: AtimePolicy = AtimePolicy(), redirect_dir: str = "on",
                 metacopy: bool = False) -> None:
        self.layers = layers            # top first: the upper (if any), then the lowers
        self.upper = upper
        self.work_fd = work_fd          # O_PATH fd on workdir/work, the copy-up staging area
        self.mountpoint = mountpoint
        self.single_fs = single_fs      # one filesystem for all: real inode numbers are unique
        self.forbidden = forbidden      # upper and work roots seen inside a lower: ELOOP
        self.xattr_prefix = xattr_prefix    # our markers' namespace: trusted. or user.overlay.
        self.volatile = volatile
        self.lock_fds = lock_fds        # flock'ed upper dir and workdir, held while serving
        self.atime = atime
        self.redirect_dir = redirect_dir    # options.REDIRECT_MODES: on, follow or nofollow
        self.metacopy = metacopy

    @property
    def read_only(self) -> bool:
        return self.upper is None

    def close(self) -> None:
        for layer in self.layers:
            os.close(layer.fd)
        if self.work_fd is not None:
            os.close(self.work_fd)
        for fd in self.lock_fds:
            os.close(fd)


def _stat_dir(role: str, path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(errno.ENOENT, f"{role} does not exist", path) from None
    except PermissionError:
        raise MountError(errno.EACCES, f"{role} is not accessible", path) from None
    except OSError as e:
        raise MountError(e.errno or errno.EINVAL, f"{role} cannot be used", path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(errno.EINVAL, f"{role} is not a directory", path)
    return st


def _ancestor_ids(path: str) -> list[tuple[int, int]]:
    """(dev, ino) of every proper ancestor of `path`, after resolving symlinks."""
    ids = []
    current = os.path.realpath(path)
    while current != "/":
        current = os.path.dirname(current)
        st = os.stat(current)
        ids.append((st.st_dev, st.st_ino))
    return ids


def check_environment() -> None:
    """FUSE itself must be usable: /dev/fuse, and fusermount3 when we are not root."""
    if not os.path.exists("/dev/fuse"):
        raise MountError(errno.ENOENT, "FUSE device missing (is the fuse module loaded?)",
                         "/dev/fuse")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError(errno.EACCES, "no read/write access to the FUSE device", "/dev/fuse")
    if os.geteuid() != 0:
        import shutil   # here and in empty_directory only: a mount by root does without it

        if shutil.which("fusermount3") is None:
            raise MountError(errno.ENOENT, "fusermount3 not found in PATH (install fuse3)",
                             "fusermount3")


def validate(options: MountOptions) -> set[tuple[int, int]]:
    """Every check kernel overlayfs makes at mount time, with its errno.

    Like the kernel, each layer root becomes a "trap" in turn (upper, workdir, then the lowers
    top first); a layer that is, or lies inside, an earlier trap is refused with ELOOP. The traps
    are returned: meeting one inside a lower layer at run time is ELOOP too."""
    _stat_dir_mountpoint(options.mountpoint)
    traps: dict[tuple[int, int], str] = {}
    if options.upperdir is not None:
        upper_st = _stat_dir("upperdir", options.upperdir)
        upper_id = (upper_st.st_dev, upper_st.st_ino)
        traps[upper_id] = "upperdir"
        assert options.workdir is not None
        _check_workdir(options, upper_st)
        if os.path.lexists(options.workdir):
            work_st = os.stat(options.workdir)
            traps[(work_st.st_dev, work_st.st_ino)] = "workdir"
    lower_stats = [_stat_dir("lowerdir", path) for path in options.lowerdirs]
    for path, st in zip(options.lowerdirs, lower_stats):
        ident = (st.st_dev, st.st_ino)
        if ident in traps:
            other = traps[ident]
            what = "lowerdir given twice" if other == "lowerdir" else f"lowerdir is also the {other}"
            raise MountError(errno.ELOOP, what, path)
        traps[ident] = "lowerdir"
    # As the kernel's overlapping-layers check, once every trap is set: a lowerdir inside any
    # layer root, including a lowerdir listed after it, is refused.
    for path in options.lowerdirs:
        for ancestor in _ancestor_ids(path):
            if ancestor in traps:
                other = traps[ancestor]
                other = "another lowerdir" if other == "lowerdir" else f"the {other}"
                raise MountError(errno.ELOOP, f"lowerdir is inside {other}", path)
    return set(traps)


def _check_workdir(options: MountOptions, upper_st: os.stat_result) -> None:
    assert options.workdir is not None and options.upperdir is not None
    upper_id = (upper_st.st_dev, upper_st.st_ino)
    if options.workdir_chosen and not os.path.lexists(options.workdir):
        parent = os.path.dirname(os.path.abspath(options.workdir))
        work_st = _stat_dir("parent of the workdir", parent)
        work_id = None
    else:
        work_st = _stat_dir("workdir", options.workdir)
        work_id = (work_st.st_dev, work_st.st_ino)
    if work_st.st_dev != upper_st.st_dev:
        hint = " (give --workdir on the upper's filesystem)" if options.workdir_chosen else ""
        raise MountError(errno.EINVAL, f"workdir is not on the same filesystem as upperdir{hint}",
                         options.workdir)
    if work_id is None:
        return
    if work_id == upper_id:
        raise MountError(errno.EINVAL, "workdir is the same directory as upperdir", options.workdir)
    if upper_id in _ancestor_ids(options.workdir):
        raise MountError(errno.EINVAL, "workdir is inside upperdir", options.workdir)
    if work_id in _ancestor_ids(options.upperdir):
        raise MountError(errno.EINVAL, "upperdir is inside workdir", options.upperdir)


def _stat_dir_mountpoint(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(errno.ENOENT, "mountpoint does not exist", path) from None
    except OSError as e:
        raise MountError(e.errno or errno.EINVAL, "mountpoint cannot be used", path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(errno.ENOTDIR, "mountpoint is not a directory", path)
    return st


def _layer(index: int, path: str, fd: int, upper: bool) -> Layer:
    st = os.fstat(fd)
    return Layer(index=index, path=os.path.abspath(path), fd=fd, dev=st.st_dev, ino=st.st_ino,
                 upper=upper)


def _detached(path: str) -> int:
    """An O_PATH fd on the directory `path` in a detached copy of its mount, without the
    filesystems mounted below it: a layer then looks as it does to kernel overlayfs (a
    mount point shows the directory underneath, and the overlay's own mount point inside a
    layer cannot lead the daemon back into itself). Where that is not permitted (not root),
    the directory as it is."""
    try:
        return open_tree_clone(path)
    except OSError:
        return open_given_dir(path)


def _walk_down(root_fd: int, relative: str) -> int:
    fd = open_dir_path(".", root_fd)
    for part in [p for p in relative.split("/") if p not in ("", ".")]:
        next_fd = open_dir_path(part, fd)
        os.close(fd)
        fd = next_fd
    return fd


def _same_dir(fd: int, path: str) -> bool:
    st, real = os.fstat(fd), os.stat(path)
    return (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino)


def _upper_and_workdir(upper: str, workdir: str, atime: AtimePolicy
                       ) -> tuple[int, int, AtimePolicy]:
    """O_PATH fds on the upper dir and the workdir, in one detached copy of their common
    mount (a rename between them must stay inside one mount), which carries the mount's
    atime policy (see atime.py); and the policy as it then holds. Where no copy may be made
    (not root), the upper's own mount options rule its atime."""
    real_upper, real_work = os.path.realpath(upper), os.path.realpath(workdir)
    common = os.path.commonpath([real_upper, real_work])
    try:
        root = open_tree_clone(common)
    except OSError:
        root = open_given_dir(common)
        atime = atime._replace(by_mount=False)
    else:
        try:
            set_atime_attrs(root, atime.mount_attrs)
        except OSError:
            os.close(root)
            raise
    try:
        upper_fd = _walk_down(root, os.path.relpath(real_upper, common))
        work_fd = _walk_down(root, os.path.relpath(real_work, common))
    finally:
        os.close(root)
    if _same_dir(upper_fd, upper) and _same_dir(work_fd, workdir):
        return upper_fd, work_fd, atime
    # A mount between the common directory and one of them: take them as they are.
    os.close(upper_fd)
    os.close(work_fd)
    return (open_given_dir(upper), open_given_dir(workdir),
            atime._replace(by_mount=False))


def _lock(role: str, dir_fd: int, path: str) -> int:
    """An exclusive flock on the directory behind `dir_fd`, for as long as the returned fd
    is open: like the kernel's in-use mark, it keeps a second mount off an upper dir or
    workdir that a live mount uses. It dies with the process, even on SIGKILL; the fd is
    close-on-exec, so no program the daemon starts (fusermount3) can keep it."""
    fd = open_readable_dir(dir_fd)
    # A daemon whose mount was just unmounted still holds its lock while it exits: an
    # unmount followed at once by a new mount must not be refused for that.
    deadline = time.monotonic() + LOCK_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise MountError(errno.EBUSY, f"{role} is in-use as upperdir/workdir of "
                                              "another mount", path) from None
            time.sleep(0.02)


def _prepare_workdir(workdir_fd: int) -> int:
    """Create workdir/work and empty it: whatever a crashed copy-up left there is garbage."""
    try:
        os.mkdir(WORK_SUBDIR, 0o700, dir_fd=workdir_fd)
    except FileExistsError:
        pass
    work_fd = open_dir_path(WORK_SUBDIR, workdir_fd)
    empty_directory(work_fd)
    return work_fd


def empty_directory(dir_fd: int) -> None:
    """Remove everything inside a directory without following symlinks."""
    readable = open_readable_dir(dir_fd)
    try:
        with os.scandir(readable) as entries:     # scans a dup: ours is closed below
            names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    finally:
        os.close(readable)
    for name, is_dir in names:
        if is_dir:
            import shutil
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)


def _choose_xattr_prefix(work_fd: int) -> bytes:
    """trusted.overlay. where we may set trusted xattrs (real root), else user.overlay.,
    which kernel overlayfs reads with -o userxattr."""
    probe = TRUSTED_PREFIX + b"overlayfuse-probe"
    path, _ = proc_path(work_fd)    # the magic link names the exact directory
    try:
        os.setxattr(path, probe, b"y")
    except OSError:
        return USER_PREFIX
    os.removexattr(path, probe)
    return TRUSTED_PREFIX


def open_stack(options: MountOptions) -> Stack:
    traps = validate(options)
    check_environment()
    writable = options.upperdir is not None and not options.read_only
    atime = AtimePolicy.from_flags(options.vfs_flags)
    opened: list[Layer] = []
    locks: list[int] = []
    work_fd = None
    try:
        if writable:
            assert options.upperdir is not None and options.workdir is not None
            if options.workdir_chosen and not os.path.lexists(options.workdir):
                os.mkdir(options.workdir, 0o700)
            upper_fd, workdir_fd, atime = _upper_and_workdir(options.upperdir, options.workdir,
                                                             atime)
            opened.append(_layer(0, options.upperdir, upper_fd, upper=True))
            try:
                # Both locked before anything is written: the workdir is emptied next.
                locks.append(_lock("upperdir", upper_fd, options.upperdir))
                locks.append(_lock("workdir", workdir_fd, options.workdir))
                work_fd = _prepare_workdir(workdir_fd)
            finally:
                os.close(workdir_fd)
            prefix = _choose_xattr_prefix(work_fd)
        else:
            if options.upperdir is not None:    # `ro`: the upper is one more lower layer
                opened.append(_layer(0, options.upperdir, _detached(options.upperdir), False))
                locks.append(_lock("upperdir", opened[0].fd, options.upperdir))
            prefix = TRUSTED_PREFIX if os.geteuid() == 0 else USER_PREFIX
        for path in options.lowerdirs:
            opened.append(_layer(len(opened), path, _detached(path), upper=False))
    except (OSError, MountError) as e:
        for fd in [layer.fd for layer in opened] + locks:
            os.close(fd)
        if isinstance(e, MountError):
            raise
        raise MountError(e.errno or errno.EIO, "cannot prepare layer", e.filename) from None
    if writable:
        assert options.workdir is not None
        work_st = os.stat(options.workdir)
        traps.add((work_st.st_dev, work_st.st_ino))
    return Stack(
        layers=tuple(opened),
        upper=opened[0] if writable else None,
        work_fd=work_fd,
        mountpoint=os.path.abspath(options.mountpoint),
        single_fs=len({layer.dev for layer in opened}) == 1,
        forbidden=frozenset(traps),
        xattr_prefix=prefix,
        volatile=options.volatile,
        lock_fds=tuple(locks),
        atime=atime,
        redirect_dir=options.redirect_dir,
        metacopy=options.metacopy,
    )
