"""Copy-up: bring a lower object into the upper layer, atomically.

The copy is built in workdir/work under a temporary name (data, owner, mode, xattrs, times)
and renamed into place only when complete, so a crash leaves the lower version visible and
garbage only in the workdir, which is emptied at the next mount. Parents are copied first.
File data is copied in a worker thread (reflink, else copy_file_range over the data extents,
keeping holes) so that a large copy does not stall other requests; a small file's copy is
made in the request's own task, where it costs less than the hand-off to a thread and back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
from collections.abc import Callable

import trio

from . import metacopy
from .inodes import LowerData, Node, UpperDirState
from .syscalls import (RENAME_NOREPLACE, OwnedFd, open_in, open_noatime, open_path,
                       proc_path, renameat2)
from .tree import Tree
from .xattrs import XattrNames, optional_attr

FICLONE = 0x40049409
CAPABILITY_XATTR = b"security.capability"
COPY_CHUNK = 64 << 20
INLINE_COPY = 128 << 10     # the largest file copied up without a worker thread


class WorkDir:
    """Temporary names in workdir/work, and moving finished objects out of it."""

    def __init__(self, work_fd: int) -> None:
        self.fd = work_fd
        self._counter = itertools.count(1)

    def temp_name(self) -> bytes:
        return b"#ofs%x" % next(self._counter)

    def discard(self, name: bytes) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except IsADirectoryError:
            os.rmdir(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass


def copy_xattrs(names: XattrNames, src: tuple[int, bytes | None], dst: tuple[int, bytes | None]
                ) -> None:
    """Copy every stored xattr but our private markers."""
    src_path, src_follow = proc_path(*src)
    dst_path, dst_follow = proc_path(*dst)
    try:
        attrs = os.listxattr(src_path, follow_symlinks=src_follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for attr in attrs:
        real = os.fsencode(attr)
        if not names.is_copied(real):
            continue
        try:
            value = os.getxattr(src_path, real, follow_symlinks=src_follow)
            os.setxattr(dst_path, real, value, follow_symlinks=dst_follow)
        except OSError as e:
            # trusted.* we may not read or write as non-root, security.* the upper fs refuses
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EACCES):
                raise


def copy_file_data(src: int, dst: int, size: int, reflink: bool = True) -> bool:
    """Copy `size` bytes into `dst` (empty, or `size` long already): a reflink where the
    filesystem offers one, else the data extents with copy_file_range (holes stay holes).
    Returns False once the filesystem has said it has no reflinks (EOPNOTSUPP), which a
    caller passes back as `reflink` so as not to ask again for every file."""
    if reflink:
        try:
            fcntl.ioctl(dst, FICLONE, src)
            return True
        except OSError as e:
            reflink = e.errno != errno.EOPNOTSUPP
    offset = end = 0
    while offset < size:
        try:
            data = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:   # only a hole remains
                break
            raise
        hole = os.lseek(src, data, os.SEEK_HOLE)
        position = data
        while position < hole:
            copied = _copy_range(src, dst, min(hole - position, COPY_CHUNK), position)
            if copied == 0:
                break
            position += copied
        end = position
        offset = hole
    if end != size:     # a hole at the end
        os.ftruncate(dst, size)
    return reflink


def _copy_range(src: int, dst: int, count: int, offset: int) -> int:
    try:
        return os.copy_file_range(src, dst, count, offset, offset)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    data = os.pread(src, min(count, 1 << 20), offset)
    return os.pwrite(dst, data, offset) if data else 0


def _keep_owner(chown: Callable[..., None], target: int | bytes, st: os.stat_result,
                made_as: tuple[int, int], **kwargs: object) -> None:
    """Give the copy its original owner, unless it was made with it (`made_as`: a chown
    would change nothing on an object that has no set-ID bits or xattrs yet). A mount
    without the right to (not root) cannot copy up what another user owns: EOVERFLOW,
    which kernel overlayfs mounted in a user namespace answers for an owner it cannot map."""
    if (st.st_uid, st.st_gid) == made_as:
        return
    try:
        chown(target, st.st_uid, st.st_gid, **kwargs)
    except PermissionError:
        raise OSError(errno.EOVERFLOW, "cannot copy up a file owned by someone else") from None


def _stage_regular(src: int, dst: int, st: os.stat_result, names: XattrNames, sync: bool,
                   data: int | None, metacopy_prefix: bytes | None, made_as: tuple[int, int],
                   reflink: bool) -> bool:
    """Runs in a worker thread: everything that may take long. `src` gives the metadata,
    `data` (an fd) the data, if any; with `metacopy_prefix` the copy is metadata only:
    the full size, no data, and the marker. `made_as` is the owner `dst` was made with;
    `reflink` and the result as for copy_file_data."""
    if data is not None:
        reflink = copy_file_data(data, dst, st.st_size, reflink)
    elif metacopy_prefix is not None:
        os.ftruncate(dst, st.st_size)
    _keep_owner(os.fchown, dst, st, made_as)    # first: a chown drops security.capability
    copy_xattrs(names, (src, None), (dst, None))
    if metacopy_prefix is not None:
        metacopy.mark(dst, metacopy_prefix)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    if sync:
        os.fsync(dst)
    return reflink


class CopyUp:
    def __init__(self, tree: Tree, names: XattrNames,
                 attrs_changed: Callable[[Node], None]) -> None:
        """`attrs_changed(node)` tells the kernel that what it caches of `node`'s attributes
        is stale (a copy-up changes them behind its back)."""
        assert tree.stack.work_fd is not None and tree.upper is not None
        self.tree = tree
        self.attrs_changed = attrs_changed
        self.upper = tree.upper
        self.names = names
        self.prefix = tree.stack.xattr_prefix
        self.work = WorkDir(tree.stack.work_fd)
        # The owner of what is made in the work dir: ours, but the dir's group if it is setgid.
        work_st = os.stat(self.work.fd)
        self.made_as = (os.geteuid(), work_st.st_gid if work_st.st_mode & stat.S_ISGID
                        else os.getegid())
        self.reflink = True         # until the upper filesystem says it has none

    def set_metadata(self, name: bytes, st: os.stat_result, xattrs_from: tuple[int, bytes | None]
                     | None = None) -> None:
        """Owner, mode, xattrs and times on an object staged in the work dir."""
        work = self.work.fd
        # The owner first: a chown drops security.capability (the kernel's copy-up keeps it).
        _keep_owner(os.chown, name, st, self.made_as, dir_fd=work, follow_symlinks=False)
        if xattrs_from is not None:
            copy_xattrs(self.names, xattrs_from, (work, name))
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=work)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=work, follow_symlinks=False)

    def _install_keeping_times(self, parent: Node, temp: bytes, name: bytes) -> os.stat_result:
        """Move a finished copy from the work dir into the upper copy of `parent`, leaving the
        parent's mtime as it was (as the kernel does on copy-up). Its ctime changes, also
        for the kernel's cache."""
        upper_fd = self.tree.dir_fd(parent, self.upper)
        parent_st = os.stat(upper_fd)
        try:
            renameat2(self.work.fd, temp, upper_fd, name, RENAME_NOREPLACE)
        except OSError:
            self.work.discard(temp)
            raise
        path, _ = proc_path(upper_fd)
        os.utime(path, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
        self.attrs_changed(parent)
        return os.stat(name, dir_fd=upper_fd, follow_symlinks=False)

    def _became_upper(self, node: Node, st: os.stat_result) -> None:
        self.tree.table.copied_up(node, self.upper, st.st_ino)
        if node.is_dir:
            node.upper_state = UpperDirState(opaque=False, oci_whiteouts=set())
        else:
            node.lower_st = None
        # A merged dir reports st_nlink 1; a lower hard link becomes a single link.
        self.attrs_changed(node)

    def directory(self, node: Node) -> None:
        """Copy up a directory (not its contents) and its parents. Synchronous: it is small."""
        if node.in_upper:
            return
        parent = node.parent
        if parent is None:
            raise OSError(errno.ENOENT, "directory was removed")
        self.directory(parent)
        src_fd = self.tree.dir_fd(node, node.top_layer)
        src_dev = node.top_layer.dev
        temp = self.stage_directory(
            src_fd, lambda temp: self.tree.origins.record((src_fd, None), src_dev,
                                                          (self.work.fd, temp)))
        self._became_upper(node, self._install_keeping_times(parent, temp, node.name))

    def stage_directory(self, like_fd: int, finish: Callable[[bytes], None]) -> bytes:
        """An empty dir in the work dir with the owner, mode, times and xattrs of the dir
        behind `like_fd`; `finish` adds what the caller needs. Its temporary name, or
        nothing left behind on an error."""
        temp = self.work.temp_name()
        os.mkdir(temp, 0o700, dir_fd=self.work.fd)
        try:
            self.set_metadata(temp, os.stat(like_fd), xattrs_from=(like_fd, None))
            finish(temp)
        except BaseException:
            self.work.discard(temp)
            raise
        return temp

    async def ensure_upper(self, node: Node, with_data: bool = True) -> None:
        """Copy `node` up with its data unless it is in the upper layer already; a
        metadata-only copy gets its data now. Without data (for an open with O_TRUNC, as
        the kernel does) the copy starts empty."""
        await self._ensure(node, metadata_only=False, with_data=with_data)

    async def ensure_upper_metadata(self, node: Node) -> None:
        """Copy up what a change of `node`'s metadata needs (owner, mode, times, xattrs, a
        link or a rename): with metacopy=on, a regular file's metadata only."""
        await self._ensure(node, metadata_only=self.tree.stack.metacopy, with_data=True)

    async def _ensure(self, node: Node, metadata_only: bool, with_data: bool) -> None:
        def needed() -> bool:
            return not node.in_upper or (node.lower_data is not None and not metadata_only)

        if not needed():
            return
        if node.is_dir:
            self.directory(node)
            return
        while node.copy_up_done is not None:        # another request is copying it
            await node.copy_up_done.wait()          # type: ignore[attr-defined]
        if not needed():
            return
        done = trio.Event()
        node.copy_up_done = done
        try:
            if node.in_upper:
                await self._fill(node, with_data)
            else:
                await self._copy_up_file(node, with_data, metadata_only)
        finally:
            node.copy_up_done = None
            done.set()

    async def _copy_up_file(self, node: Node, with_data: bool, metadata_only: bool) -> None:
        if node.parent is None:
            raise OSError(errno.ENOENT, "file was removed")
        self.directory(node.parent)
        src_dir = self.tree.parent_fd(node)
        st = os.stat(node.name, dir_fd=src_dir, follow_symlinks=False)
        temp = self.work.temp_name()
        work = self.work.fd
        lower_data = node.lower_data
        try:
            if stat.S_ISREG(st.st_mode):
                if metadata_only and lower_data is None:
                    where = self.tree.lower_path(node.parent, node.top_layer)
                    lower_data = LowerData(node.top_layer, where + b"/" + node.name
                                           if where else node.name, st.st_blocks,
                                           st.st_nlink > 1)
                # Only fds of its own go past the await: src_dir is borrowed from the dir-fd
                # cache, and other requests may close its number and reuse it meanwhile.
                src = open_noatime(node.name, os.O_RDONLY | os.O_NOFOLLOW, src_dir)
                await self._stage_regular_file(src, temp, st, with_data, metadata_only,
                                               node.lower_data)
            else:
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(node.name, dir_fd=src_dir), temp, dir_fd=work)
                else:
                    os.mknod(temp, st.st_mode, st.st_rdev, dir_fd=work)
                self.set_metadata(temp, st, xattrs_from=(src_dir, node.name))
                self.tree.origins.record((src_dir, node.name), st.st_dev, (work, temp))
        except BaseException:
            self.work.discard(temp)
            raise
        # The name may have been removed or replaced while the data was copied.
        if node.parent is None or node.in_upper:
            self.work.discard(temp)
            if node.parent is None:
                raise OSError(errno.ENOENT, "file was removed during copy-up")
            return
        self._became_upper(node, self._install_keeping_times(node.parent, temp, node.name))
        node.lower_data = lower_data if metadata_only else None

    async def _stage_regular_file(self, src: int, temp: bytes, st: os.stat_result,
                                  with_data: bool, metadata_only: bool,
                                  lower_data: LowerData | None) -> None:
        """Stage a copy of the file open as `src` (which it closes) and record its origin.
        Its data is that of `lower_data` where `src` is a metadata-only copy itself. A small
        file is copied in the request's own task (the hand-off to a worker thread and back
        costs more than the copy); a bigger one in a worker thread, and then only fds it
        owns cross the await."""
        with_data = with_data and not metadata_only
        with contextlib.ExitStack() as owned:
            owned.enter_context(OwnedFd(src))
            dst = owned.enter_context(OwnedFd(open_in(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.work.fd)))
            data = src if lower_data is None or not with_data else owned.enter_context(
                OwnedFd(self.tree.open_lower_data(lower_data, os.O_RDONLY)))
            # A metadata-only copy holds no data to make durable, and a journalling upper
            # filesystem keeps its xattrs ahead of the rename that shows it: no fsync (as
            # the kernel's, short of fsync=strict), which would cost more than all the rest.
            sync = not (self.tree.stack.volatile or metadata_only)
            stage = (src, dst, st, self.names, sync, data if with_data else None,
                     self.prefix if metadata_only else None, self.made_as, self.reflink)
            if st.st_size <= INLINE_COPY or not with_data:
                self.reflink = _stage_regular(*stage)
            else:
                self.reflink = await trio.to_thread.run_sync(_stage_regular, *stage)
            self.tree.origins.record((src, None), st.st_dev, (dst, None))

    async def _fill(self, node: Node, with_data: bool) -> None:
        """Give the metadata-only copy `node` its data, in place (its other names are links
        to the same file): the data is written while the marker still sends reads to the
        lower file, made durable, and only then is the marker removed, so a crash leaves
        it as it was. Its mtime stays (the kernel's shows the copy's time; docs/behaviour.md).
        Without data (O_TRUNC) it is truncated first: empty, it shows as empty, marked or not."""
        data = node.lower_data
        assert data is not None
        with OwnedFd(self._open_to_fill(node)) as dst:
            before = os.fstat(dst)
            if not with_data:
                os.ftruncate(dst, 0)
            else:
                with OwnedFd(self.tree.open_lower_data(data, os.O_RDONLY)) as src:
                    capability = optional_attr(dst, CAPABILITY_XATTR)
                    if before.st_size <= INLINE_COPY:
                        self.reflink = copy_file_data(src, dst, before.st_size, self.reflink)
                    else:
                        self.reflink = await trio.to_thread.run_sync(
                            copy_file_data, src, dst, before.st_size, self.reflink)
                # Writing drops file capabilities and (unless root) set-ID bits.
                if capability is not None and capability != optional_attr(dst, CAPABILITY_XATTR):
                    os.setxattr(dst, CAPABILITY_XATTR, capability)
                if os.fstat(dst).st_mode != before.st_mode:
                    os.fchmod(dst, stat.S_IMODE(before.st_mode))
                os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
            if not self.tree.stack.volatile:
                os.fsync(dst)
            metacopy.unmark(dst)
        node.lower_data = None
        self.attrs_changed(node)

    def _open_to_fill(self, node: Node) -> int:
        parent_fd = self.tree.parent_fd(node)
        try:
            return open_in(node.name, os.O_WRONLY | os.O_NOFOLLOW, parent_fd)
        except PermissionError:
            pass
        # Not root, and its mode gives its owner no write permission: lend it that for the
        # open only.
        with OwnedFd(open_path(node.name, parent_fd)) as fd:
            mode = stat.S_IMODE(os.stat(fd).st_mode)
            path = proc_path(fd)[0]
            os.chmod(path, mode | stat.S_IWUSR)
            try:
                return open_in(node.name, os.O_WRONLY | os.O_NOFOLLOW, parent_fd)
            finally:
                os.chmod(path, mode)

