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

from .inodes import Node
from .tree import Tree
from .xattrs import XattrNames, get_attr, list_attrs

log = logging.getLogger("overlayfuse")

OPEN_FLAGS_DROPPED = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_DIRECT | os.O_NOCTTY
WRITE_ACCESS = os.O_WRONLY | os.O_RDWR


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

    return handler


class OpenFile:
    __slots__ = ("node", "fd", "layer")

    def __init__(self, node: Node, fd: int, layer: int) -> None:
        self.node = node
        self.fd = fd
        self.layer = layer


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, timeout: float = 3600.0, debug: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.timeout = timeout
        self.debug = debug
        self.xattr_names = XattrNames(tree.stack.xattr_prefix)
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, tuple[Node, list[bytes]]] = {}
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

    def _node(self, ino: int) -> Node:
        return self.tree.table.get(ino)

    def _entry(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.generation = 0
        entry.entry_timeout = self.timeout
        entry.attr_timeout = self.timeout
        entry.st_mode = st.st_mode
        entry.st_nlink = 1 if node.is_dir and len(node.layers) > 1 else st.st_nlink
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

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _check_writable(self) -> None:
        if not self.tree.writable:
            raise pyfuse3.FUSEError(errno.EROFS)

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
        node.nlookup += 1
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
        st = self.tree.stat(node)
        if mode & os.W_OK and not self.tree.writable:
            return False
        return _may_access(st, mode, ctx)

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
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        fh = self._new_fh()
        # A snapshot taken at opendir (and at each rewind) keeps offsets stable while the
        # directory changes: no stable entry is skipped or repeated.
        self._dirs[fh] = (node, [b".", b".."])
        node.open_files += 1
        return fh

    @_edge
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node, names = self._dirs[fh]
        if start_id == 0:
            names[2:] = self.tree.list_names(node)
        for index in range(start_id, len(names)):
            name = names[index]
            if index < 2:
                target = node if index == 0 else (node.parent or self.tree.root)
                if not pyfuse3.readdir_reply(token, name, self._entry(target, self.tree.stat(target)),
                                             index + 1):
                    return
                continue
            try:
                found = self.tree.lookup(node, name)
            except OSError:
                found = None
            if found is None:
                continue
            child, st = found
            if not pyfuse3.readdir_reply(token, name, self._entry(child, st), index + 1):
                return
            child.nlookup += 1

    @_edge
    async def releasedir(self, fh: int) -> None:
        node, _ = self._dirs.pop(fh)
        node.open_files -= 1
        self.tree.table.forget(node.ino, 0)

    @_edge
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # ---- files ---------------------------------------------------------------------------

    @_edge
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & (WRITE_ACCESS | os.O_TRUNC | os.O_APPEND):
            self._check_writable()
        fd = os.open(node.name, (flags & ~OPEN_FLAGS_DROPPED) | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=self.tree.parent_fd(node))
        fh = self._new_fh()
        self._files[fh] = OpenFile(node, fd, node.top_layer)
        node.open_files += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_edge
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files[fh]
        if handle.layer != handle.node.top_layer:
            self._reopen_copied_up(handle)
        return os.pread(handle.fd, size, off)

    def _reopen_copied_up(self, handle: OpenFile) -> None:
        """The file was copied up since it was opened: read from the copy, as the kernel does."""
        fd = os.open(handle.node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=self.tree.parent_fd(handle.node))
        os.close(handle.fd)
        handle.fd, handle.layer = fd, handle.node.top_layer

    @_edge
    async def flush(self, fh: int) -> None:
        return None

    @_edge
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh)
        os.close(handle.fd)
        handle.node.open_files -= 1
        self.tree.table.forget(handle.node.ino, 0)

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

    # ---- writes (read-only until the write path lands) ------------------------------------

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)


def _may_access(st: os.stat_result, mode: int, ctx: pyfuse3.RequestContext) -> bool:
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
