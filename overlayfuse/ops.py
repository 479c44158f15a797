"""The FUSE edge: pyfuse3 requests in, Tree calls, replies out.

Every handler runs under `_edge`: an OSError becomes FUSEError(errno); anything else is a bug,
logged once with its traceback, and answered with EIO, so that no request can end the daemon.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import traceback
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from . import capabilities
from .copyup import CopyUp
from .dirversions import DirHandle, DirVersions
from .idmap import OVERFLOW_ID, IdMap
from .inodes import Node
from .killpriv import bits_to_clear, clear_setid
from .layers import Layer
from .listingexpiry import ListingExpiry
from .namespace import Caller, Namespace
from .syscalls import (RENAME_EXCHANGE, OwnedFd, fallocate, open_in, open_noatime, open_path,
                       open_readable_dir, proc_path)
from .tree import Tree
from .xattrs import XattrNames, get_attr, list_attrs, remove_attr, set_attr

log = logging.getLogger("overlayfuse")

# The kernel sends the offset of every write (also for O_APPEND), and O_DIRECT would demand
# aligned buffers of us; O_CREAT/O_EXCL were handled by the kernel's lookup.
OPEN_FLAGS_DROPPED = os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_DIRECT | os.O_NOCTTY
COPY_UP_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC
# A file no larger than this (one readahead unit) is read in the request's own task even
# when its data must come from the disk; nor does a larger readahead window help it.
INLINE_READ = 128 << 10


def _edge(method: Callable[..., Any]) -> Callable[..., Any]:
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: Operations, *args: Any) -> Any:
        if self.debug:
            log.debug("%s%r", name, args)
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception as e:  # noqa: BLE001 - the daemon must survive any bug
            self.report_bug(name, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            # Before the reply: the caller's next listing must not come from the cache.
            if self.listing_expiry is not None and self.listing_expiry.busy:
                await self.listing_expiry.drop_pending()

    return handler


class OpenFile:
    __slots__ = ("node", "fd", "layer", "direct", "retired", "atime_due", "size")

    def __init__(self, node: Node, fd: int, layer: Layer, direct: bool) -> None:
        self.node = node
        self.fd = fd
        self.layer = layer
        self.direct = direct            # opened O_DIRECT: its writes bypass the page cache
        self.retired: list[int] = []    # fds replaced after a copy-up, closed at release
        self.atime_due = False          # a read must move the upper file's atime itself
        # The size of the file `fd` reads where it cannot change (a lower file's, known
        # from the lookup): a short read then needs no fstat to tell the end of the file.
        self.size: int | None = None

    def close(self) -> None:
        for fd in (self.fd, *self.retired):
            os.close(fd)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True
    enable_setxattr_flags = True     # a patched pyfuse3 passes the flags; stock ignores this
    enable_killpriv_v2 = True        # likewise: write() and ctx then say what to clear
    enable_dont_mask = True          # likewise: the umask comes in ctx, to apply unless an ACL

    def __init__(self, tree: Tree, timeout: float = 3600.0, debug: bool = False,
                 uids: IdMap | None = None, gids: IdMap | None = None,
                 no_opendir: bool = True) -> None:
        super().__init__()
        self.tree = tree
        self.uids = uids or IdMap()
        self.gids = gids or IdMap()
        self._ids_mapped = not (self.uids.identity and self.gids.identity)
        self.timeout = timeout
        self.debug = debug
        self.xattr_names = XattrNames(tree.stack.xattr_prefix)
        self.copy_up: CopyUp | None = None
        self.namespace: Namespace | None = None
        if tree.writable:
            self.copy_up = CopyUp(tree, self.xattr_names, self._copied_up)
            self.namespace = Namespace(tree, self.copy_up)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, DirHandle] = {}
        # Without OPENDIR the kernel keeps every listing cached, so where a listing may move
        # the upper dir's atime (relatime) the daemon drops a cached listing when the next
        # one is due (listingexpiry.py). Under strictatime every listing is due: OPENDIR stays.
        # `no_opendir` False keeps it too (see loop.serve).
        atime = tree.stack.atime
        listings_move_atimes = tree.writable and atime.touches_dirs and atime.by_mount
        self.enable_no_opendir = no_opendir and capabilities.NO_OPENDIR and not (
            listings_move_atimes and atime.strictatime)
        self.dir_versions = DirVersions(tree.table, keep_ended=self.enable_no_opendir)
        self.listing_expiry: ListingExpiry | None = None
        if self.enable_no_opendir and listings_move_atimes:
            self.listing_expiry = ListingExpiry(tree.table, atime, _invalidate_data)
        self._next_fh = 1
        self._reported: set[tuple[str, str]] = set()

    # ---- helpers -------------------------------------------------------------------------

    def report_bug(self, handler: str, error: Exception) -> None:
        where = traceback.extract_tb(error.__traceback__)[-1]
        key = (handler, f"{type(error).__name__}@{where.filename}:{where.lineno}")
        if key in self._reported:
            log.error("%s: %s: %s (repeated)", handler, type(error).__name__, error)
            return
        self._reported.add(key)
        log.error("%s failed with an unexpected error, answered EIO:\n%s", handler,
                  "".join(traceback.format_exception(error)))

    def _caller(self, ctx: pyfuse3.RequestContext) -> Caller:
        """Who asks, in on-disk ids. What a caller with no mapping creates is stored as owned
        by the overflow id, as fuse-overlayfs does: podman creates files through the mount as
        an unmapped id (its own root) and chowns them afterwards. The umask (sent with
        create, mkdir and mknod) is applied to the mode by the kernel only without
        FUSE_DONT_MASK; applying it again does no harm."""
        return Caller(self.uids.to_disk(ctx.uid, OVERFLOW_ID),
                      self.gids.to_disk(ctx.gid, OVERFLOW_ID), ctx.umask)

    def _node(self, ino: int) -> Node:
        return self.tree.table.get(ino)

    def _copied_up(self, node: Node) -> None:
        """A copy-up changed `node`'s attributes (of a dir: its upper ctime)."""
        _invalidate_attrs(node)
        self._upper_dir_touched(node)

    def _upper_dir_touched(self, node: Node) -> None:
        if node.is_dir and self.listing_expiry is not None:
            self.listing_expiry.touched(node)

    def _entry(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        # Made for every lookup, getattr and readdirplus entry: each attribute set costs.
        # A new EntryAttributes has generation 0 already.
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        if node.st_ino:
            entry.attr_ino = node.st_ino
        entry.entry_timeout = self.timeout
        entry.attr_timeout = self.timeout
        entry.st_mode = st.st_mode
        entry.st_nlink = 1 if node.is_dir and len(node.layers) > 1 else st.st_nlink
        if self._ids_mapped:
            entry.st_uid = self.uids.to_view(st.st_uid)
            entry.st_gid = self.gids.to_view(st.st_gid)
        else:
            entry.st_uid = st.st_uid
            entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = 0
        entry.entry_timeout = self.timeout
        return entry

    def _unreachable_entry(self) -> pyfuse3.EntryAttributes:
        """Attributes for a listed name whose lookup fails: a number of its own (readdir
        skips d_ino 0), and no caching, so that every access looks it up and gets the error."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = self.tree.table.synthetic_ino()
        entry.st_mode = stat.S_IFDIR    # what a trap (a layer root met inside a layer) is
        entry.entry_timeout = 0
        entry.attr_timeout = 0
        return entry

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _writer(self) -> tuple[CopyUp, Namespace]:
        if self.copy_up is None or self.namespace is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.copy_up, self.namespace

    def _reply_new(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        self.tree.table.looked_up(node)
        return self._entry(node, st)

    def _add_file(self, node: Node, fd: int, direct: bool) -> int:
        fh = self._new_fh()
        self._files[fh] = OpenFile(node, fd, node.data_layer, direct)
        if not direct:
            node.may_be_cached = True
        self.tree.table.opened(node)
        return fh

    # ---- lookup and attributes -----------------------------------------------------------

    @_edge
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            found: tuple[Node, os.stat_result] | None = (parent, self.tree.stat(parent))
        elif name == b"..":
            up = parent.parent or self.tree.root
            found = (up, self.tree.stat(up))
        else:
            found = self.tree.lookup(parent, name)
        if found is None:
            return self._negative_entry()
        node, st = found
        self.tree.table.looked_up(node)
        return self._entry(node, st)

    @_edge
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.tree.table.forget(ino, count)

    @_edge
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        return self._entry(node, self.tree.stat(node))

    @_edge
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(self._node(inode))

    @_edge
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self._node(inode)
        if mode & os.W_OK and not self.tree.writable:
            return False
        return _may_access(self._entry(node, self.tree.stat(node)), mode, ctx)

    @_edge
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        vfs = self.tree.statvfs()
        data = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(data, attr, getattr(vfs, attr))
        return data

    # ---- directories ---------------------------------------------------------------------

    @_edge
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        node = self._node(inode)
        fh = self._new_fh()
        self._dirs[fh] = DirHandle(node)
        self.tree.table.opened(node)
        if not capabilities.CACHED_LISTINGS:
            return fh
        # The kernel keeps the listing across opens (dirversions says how it stays whole).
        # But a listing that should move the upper dir's atime must reach the daemon, and
        # under strictatime every listing should.
        moves = self._listing_moves_atime(node)
        cached = not (moves and self.tree.stack.atime.strictatime)
        if cached:
            self.dir_versions.may_cache(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=not moves, cache_readdir=cached)

    def _listing_moves_atime(self, node: Node) -> bool:
        atime = self.tree.stack.atime
        if not (node.in_upper and atime.touches_dirs):
            return False
        return atime.read_would_update(os.stat(self.tree.dir_fd(node, node.top_layer)))

    def _listings_changed(self, *dirs: Node) -> None:
        for node in dirs:
            if self.dir_versions.changed(node):
                # At once: the kernel holds these dirs locked for the request being answered,
                # so no reader holds a page of their cached listings.
                _invalidate_data(node.ino)

    @_edge
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # A snapshot per version keeps offsets stable while the directory changes: no stable
        # entry is skipped or repeated, and the kernel's cache stays one listing.
        if self.enable_no_opendir:
            node = self._node(fh)      # no handles: the offset says which version is read
            snapshot = self.dir_versions.at(node, start_id, self.tree.list_names)
            self.dir_versions.may_cache(node)
        else:
            handle = self._dirs[fh]
            node = handle.node
            if start_id == 0 or handle.snapshot is None:
                handle.snapshot = self.dir_versions.current(node, self.tree.list_names)
            snapshot = handle.snapshot
        names = snapshot.names
        listings = self.tree.readdir_listings(node)
        lookup = self.tree.lookup
        looked_up = self.tree.table.looked_up
        entry = self._entry
        reply = pyfuse3.readdir_reply
        offset_after = snapshot.offset_after
        start = snapshot.index_at(start_id)
        skipped = 0
        for index in range(start, len(names)):
            name = names[index]
            if index < 2:
                target = node if index == 0 else (node.parent or self.tree.root)
                if not reply(token, name, entry(target, self.tree.stat(target)),
                             offset_after(index)):
                    return
                continue
            try:
                found = lookup(node, name, listings)
            except OSError as e:
                if e.errno == errno.EPERM:
                    # What lookups are refused to follow (a redirect under nofollow, a
                    # metadata-only copy without metacopy=on) the kernel leaves out.
                    skipped += 1
                    continue
                # Listed all the same, as the kernel does (a lookup then gives the error).
                if not reply(token, name, self._unreachable_entry(), offset_after(index)):
                    return
                continue
            if found is None:
                skipped += 1
                continue
            child, st = found
            if not reply(token, name, entry(child, st), offset_after(index)):
                return
            looked_up(child)
        if skipped >= len(names) - start and self.listing_expiry is not None:
            # An empty answer: the kernel now holds the listing complete.
            await self._listing_completed(node)

    async def _listing_completed(self, node: Node) -> None:
        assert self.listing_expiry is not None
        upper_st = os.stat(self.tree.dir_fd(node, node.top_layer)) if node.in_upper else None
        if self.listing_expiry.completed(node, upper_st):
            await self.listing_expiry.drop_now(node)

    @_edge
    async def releasedir(self, fh: int) -> None:
        node = self._dirs.pop(fh).node
        self.tree.table.closed(node)

    @_edge
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self._node(fh) if self.enable_no_opendir else self._dirs[fh].node
        if self.tree.stack.volatile or not node.in_upper:
            return      # nothing of it was written by us
        fd = open_readable_dir(self.tree.dir_fd(node, node.top_layer))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- files ---------------------------------------------------------------------------

    @_edge
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & COPY_UP_FLAGS:
            copy_up, _ = self._writer()
            await copy_up.ensure_upper(node, with_data=not flags & os.O_TRUNC)
        direct = bool(flags & os.O_DIRECT)
        flags = (flags & ~OPEN_FLAGS_DROPPED) | os.O_NOFOLLOW
        atime = self.tree.stack.atime
        keep_cache = True
        atime_due = False
        size = None
        if node.lower_data is not None:
            # A metadata-only copy opened for reading: its data is the lower file's, and its
            # reads move the upper file's atime, as the kernel's do.
            fd = self.tree.open_lower_data(node.lower_data, flags)
            if node.in_upper:
                atime_due = atime.read_would_update(self.tree.stat(node))
                keep_cache = not atime_due
        elif node.in_upper and not atime.noatime:
            fd = open_in(node.name, flags, self.tree.parent_fd(node))
            if flags & os.O_ACCMODE != os.O_WRONLY:
                # The daemon's reads move the atime: the next read must reach it if it should.
                keep_cache = not atime.read_would_update(os.fstat(fd))
        else:
            # Reads through the overlay leave a lower file's atime alone, as in the kernel.
            fd = open_noatime(node.name, flags, self.tree.parent_fd(node))
            if node.lower_st is not None:
                size = self.tree.stat(node).st_size
        if flags & os.O_TRUNC and _kill_suidgid(ctx) and clear_setid(fd):
            _invalidate_attrs(node)
        if flags & os.O_ACCMODE != os.O_WRONLY and (size is None or size > INLINE_READ):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)    # a larger readahead
        fh = self._add_file(node, fd, direct)
        handle = self._files[fh]
        handle.atime_due = atime_due
        handle.size = size
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    @_edge
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        _, namespace = self._writer()
        parent = self._node(parent_inode)
        node, st, fd = namespace.create(parent, name, mode, self._caller(ctx))
        self._listings_changed(parent)
        return pyfuse3.FileInfo(fh=self._add_file(node, fd, bool(flags & os.O_DIRECT)),
                                keep_cache=True), \
            self._reply_new(node, st)

    @_edge
    async def write(self, fh: int, off: int, buf: bytes, kill_suidgid: bool = False) -> int:
        handle = self._files[fh]
        node = handle.node
        if kill_suidgid and clear_setid(handle.fd):
            _invalidate_attrs(node)
        written = os.pwrite(handle.fd, buf, off)
        if handle.direct and node.may_be_cached:
            # The kernel drops the cached pages of the range before it sends a direct write,
            # but after an asynchronous one (aio, io_uring) not again: a buffered reader may
            # have cached the old data in between. They are dropped here, before the reply
            # completes the write; from a worker thread, because the kernel waits for pages
            # locked by reads that this loop has yet to answer.
            if not any(f.node is node and not f.direct for f in self._files.values()):
                node.may_be_cached = False     # until a buffered handle opens (also meanwhile)
            await trio.to_thread.run_sync(_invalidate_data, node.ino)
        return written

    @_edge
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        # Only a handle open for writing gets here (the kernel checks), and opening a lower
        # file for writing copied it up. Allocating or zeroing much may take a while.
        await trio.to_thread.run_sync(fallocate, self._files[fh].fd, mode, offset, length)

    @_edge
    async def read(self, fh: int, off: int, size: int) -> memoryview:
        handle = self._files[fh]
        if handle.layer is not handle.node.data_layer:
            self._reopen_copied_up(handle)
        if handle.atime_due:
            handle.atime_due = False
            self._touch_atime(handle.node)
        # What the page cache holds is read at once. A read that would wait for the disk
        # goes to a worker thread, so that other requests (and other reads) go on meanwhile;
        # except the rest of a small file, read here like a cold lookup's stat: the hand-off
        # to a thread and back cost more than the one disk read (bench/notes.md).
        buffer = bytearray(size)
        try:
            got = os.preadv(handle.fd, [buffer], off, os.RWF_NOWAIT)
        except BlockingIOError:
            got = 0
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:     # tmpfs, for one, has no RWF_NOWAIT: in memory
                raise
            got = _read_into(handle.fd, memoryview(buffer), off)
        if got < size:
            end = handle.size if handle.size is not None else os.fstat(handle.fd).st_size
            if off + got >= end:
                return memoryview(buffer)[:got]
            rest = memoryview(buffer)[got:min(size, end - off)]
            if end - off <= INLINE_READ:
                got += _read_into(handle.fd, rest, off + got)
            else:
                fd = handle.fd      # the handle may move to a copied-up fd meanwhile
                got += await trio.to_thread.run_sync(_read_into, fd, rest, off + got)
        return memoryview(buffer)[:got]

    def _touch_atime(self, node: Node) -> None:
        """Move the atime of the upper file, though the data read is another file's: by a
        read of the upper file itself (no data there, so no disk read), as only a read moves
        the atime without the ctime, by the mount's atime policy."""
        try:
            fd = os.open(proc_path(*self.tree.xattr_target(node))[0], os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            return      # not root, and no read permission on it: nor would the kernel have
        with OwnedFd(fd):
            os.pread(fd, 1, 0)

    def _reopen_copied_up(self, handle: OpenFile) -> None:
        """The file was copied up since it was opened: read from the copy, as the kernel does."""
        fd = open_in(handle.node.name, os.O_RDONLY, self.tree.parent_fd(handle.node))
        # Not closed yet: a read of this handle may still be using it in a worker thread.
        handle.retired.append(handle.fd)
        handle.fd, handle.layer, handle.size = fd, handle.node.top_layer, None

    @_edge
    async def flush(self, fh: int) -> None:
        # Nothing to do at close: ENOSYS tells the kernel to stop sending FLUSH at all,
        # which spares a round trip on every close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_edge
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh)
        handle.close()
        self.tree.table.closed(handle.node)

    @_edge
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.tree.stack.volatile:
            return
        handle = self._files[fh]
        if datasync:
            os.fdatasync(handle.fd)
        else:
            os.fsync(handle.fd)

    # ---- extended attributes -------------------------------------------------------------

    @_edge
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        fd, child = self.tree.xattr_target(self._node(inode))
        return get_attr(fd, child, self.xattr_names.to_real(name))

    @_edge
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        fd, child = self.tree.xattr_target(self._node(inode))
        visible = (self.xattr_names.to_visible(real) for real in list_attrs(fd, child))
        return [name for name in visible if name is not None]

    @_edge
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext, flags: int = 0) -> None:
        copy_up, _ = self._writer()
        node = self._node(inode)
        # The kernel copies up first, then lets the upper filesystem apply the flags.
        await copy_up.ensure_upper_metadata(node)
        set_attr(*self.tree.xattr_target(node), self.xattr_names.to_real(name), value, flags)
        self._upper_dir_touched(node)

    @_edge
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        copy_up, _ = self._writer()
        node = self._node(inode)
        real = self.xattr_names.to_real(name)
        # Removing what is not there fails without a copy-up, as in the kernel.
        get_attr(*self.tree.xattr_target(node), real)
        await copy_up.ensure_upper_metadata(node)
        remove_attr(*self.tree.xattr_target(node), real)
        self._upper_dir_touched(node)

    # ---- attributes ----------------------------------------------------------------------

    @_edge
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        changes = (fields.update_size, fields.update_mode, fields.update_uid, fields.update_gid,
                   fields.update_atime, fields.update_mtime)
        if not any(changes):
            # Nothing but ctime (utimensat with both times UTIME_OMIT): no copy-up.
            return self._entry(node, self.tree.stat(node))
        copy_up, _ = self._writer()
        if fields.update_size:
            await copy_up.ensure_upper(node)
            self._truncate(node, attr.st_size, fh)
        else:
            await copy_up.ensure_upper_metadata(node)
        # The kernel holds the dir locked: no listing of it completes before the reply.
        self._upper_dir_touched(node)
        if _kill_suidgid(ctx) and not fields.update_mode:
            mode = self.tree.stat(node).st_mode
            if kill := bits_to_clear(mode):
                self._chmod(node, stat.S_IMODE(mode) & ~kill)
        fd, child = self.tree.xattr_target(node)
        path, follow = proc_path(fd, child)
        if fields.update_uid or fields.update_gid:
            os.chown(path, self.uids.to_disk(attr.st_uid) if fields.update_uid else -1,
                     self.gids.to_disk(attr.st_gid) if fields.update_gid else -1,
                     follow_symlinks=follow)
        if fields.update_mode:
            self._chmod(node, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            current = self.tree.stat(node)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else current.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns),
                     follow_symlinks=follow)
        return self._entry(node, self.tree.stat(node))

    def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        handle = self._files.get(fh) if fh is not None else None
        if handle is not None and handle.layer.upper:
            try:
                os.ftruncate(handle.fd, size)
                return
            except OSError as e:
                if e.errno not in (errno.EBADF, errno.EINVAL):
                    raise
        with OwnedFd(open_in(node.name, os.O_WRONLY, self.tree.parent_fd(node))) as fd:
            os.ftruncate(fd, size)

    def _chmod(self, node: Node, mode: int) -> None:
        if node.is_dir or node.unlinked:    # (a removed file kept only because it is open)
            os.chmod(proc_path(self.tree.xattr_target(node)[0])[0], mode)
            return
        with OwnedFd(open_path(node.name, self.tree.parent_fd(node))) as fd:
            if stat.S_ISLNK(os.stat(fd).st_mode):
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
            os.chmod(proc_path(fd)[0], mode)

    # ---- names ---------------------------------------------------------------------------

    @_edge
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _, namespace = self._writer()
        parent = self._node(parent_inode)
        made = namespace.mkdir(parent, name, mode, self._caller(ctx))
        self._listings_changed(parent)
        return self._reply_new(*made)

    @_edge
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _, namespace = self._writer()
        parent = self._node(parent_inode)
        made = namespace.mknod(parent, name, mode, rdev, self._caller(ctx))
        self._listings_changed(parent)
        return self._reply_new(*made)

    @_edge
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _, namespace = self._writer()
        parent = self._node(parent_inode)
        made = namespace.symlink(parent, name, target, self._caller(ctx))
        self._listings_changed(parent)
        return self._reply_new(*made)

    @_edge
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _, namespace = self._writer()
        parent = self._node(new_parent_inode)
        made = await namespace.link(self._node(inode), parent, new_name)
        self._listings_changed(parent)
        return self._reply_new(*made)

    @_edge
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, namespace = self._writer()
        parent = self._node(parent_inode)
        namespace.unlink(parent, name)
        self._listings_changed(parent)

    @_edge
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, namespace = self._writer()
        parent = self._node(parent_inode)
        namespace.rmdir(parent, name)
        self._listings_changed(parent)

    @_edge
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        _, namespace = self._writer()
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        await namespace.rename(old_parent, name_old, new_parent, name_new, flags)
        self._listings_changed(*{old_parent, new_parent})
        if self.listing_expiry is not None:
            # A dir moved has a new upper ctime (so has one exchanged).
            moved = [(new_parent, name_new)]
            if flags & RENAME_EXCHANGE:
                moved.append((old_parent, name_old))
            for parent, name in moved:
                try:
                    found = self.tree.lookup(parent, name)
                except OSError:
                    continue    # renamed all the same: the reply must say so
                if found is not None:
                    self._upper_dir_touched(found[0])


def _invalidate_attrs(node: Node) -> None:
    # Attribute-only invalidation touches no page locks: safe inside a handler.
    try:
        pyfuse3.invalidate_inode(node.ino, attr_only=True)
    except OSError:
        pass    # the kernel does not hold this inode (ENOENT): nothing is cached


def _kill_suidgid(ctx: pyfuse3.RequestContext) -> bool:
    """Whether the kernel asks the daemon to clear set-ID bits (a stock pyfuse3 never
    does: the kernel then clears them itself)."""
    return capabilities.KILLPRIV_V2 and ctx.kill_suidgid


def _invalidate_data(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino)
    except OSError:
        pass    # the kernel does not hold this inode (ENOENT): nothing is cached


def _read_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Fill `buffer` from `offset` (in a worker thread); fewer bytes only at end of file."""
    got = 0
    while got < len(buffer):
        count = os.preadv(fd, [buffer[got:]], offset + got)
        if count == 0:
            break
        got += count
    return got


def _may_access(st: pyfuse3.EntryAttributes, mode: int, ctx: pyfuse3.RequestContext) -> bool:
    if mode == os.F_OK or ctx.uid == 0 and not (mode & os.X_OK):
        return True
    if ctx.uid == 0:
        return stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == ctx.uid:
        granted = (st.st_mode >> 6) & 7
    elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return (mode & granted) == mode
