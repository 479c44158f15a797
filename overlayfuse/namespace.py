"""Operations that change names: create, mkdir, mknod, symlink, link, unlink, rmdir, rename.

New objects are made in the work dir with their final owner and mode, then renamed into the
upper layer (exchanged with a whiteout they replace), so that no one ever sees an object
half made. A removed name that a lower layer still holds becomes a whiteout.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from . import acls, redirect
from .copyup import CopyUp
from .inodes import Node, UpperDirState
from .layers import empty_directory
from .syscalls import (RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, OwnedFd, open_dir_path,
                       open_in, open_path, proc_path, renameat2)
from .tree import NAME_MAX, Found, Tree
from .whiteout import Whiteouts, is_reserved_name, is_whiteout, set_opaque

# (uid, gid, mode, what a default ACL of the parent passes on) of a new object
Owner = tuple[int, int, int, acls.Inherited | None]


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    umask: int = 0      # the kernel leaves it to us (FUSE_DONT_MASK), unless a default ACL


def check_new_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    if is_reserved_name(name):
        # It would be read back as a whiteout: refuse it (documented in docs/behaviour.md).
        raise OSError(errno.EINVAL, "names starting with .wh. are reserved")


class Namespace:
    def __init__(self, tree: Tree, copy_up: CopyUp) -> None:
        assert tree.upper is not None
        self.tree = tree
        self.upper = tree.upper
        self.copy_up = copy_up
        self.work = copy_up.work
        self.prefix = tree.stack.xattr_prefix
        self.whiteouts = Whiteouts()
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.umask = os.umask(0o022)
        os.umask(self.umask)

    # ---- helpers -------------------------------------------------------------------------

    def _upper_entry(self, parent: Node, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.tree.dir_fd(parent, self.upper),
                           follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _owner(self, parent: Node, caller: Caller, mode: int) -> Owner:
        """Owner, mode and ACLs of a new object: a setgid directory passes on its group (and,
        to directories, its setgid bit); a default ACL passes on permissions, which also
        limit the mode."""
        self.copy_up.directory(parent)     # callers have checked the new name already
        parent_fd = self.tree.dir_fd(parent, self.upper)
        parent_st = os.stat(parent_fd)
        gid = caller.gid
        if parent_st.st_mode & stat.S_ISGID:
            gid = parent_st.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inherited = None
        if not stat.S_ISLNK(mode):
            default_acl = acls.read_default(proc_path(parent_fd)[0])
            if default_acl is not None:
                inherited = acls.inherit(default_acl, mode)
                mode = inherited.mode
            else:
                mode &= ~caller.umask
        return caller.uid, gid, mode, inherited

    def _chowned(self, uid: int, gid: int) -> bool:
        return (uid, gid) != (self.euid, self.egid)

    def _needs_chmod(self, mode: int, chowned: bool, inherited: acls.Inherited | None) -> bool:
        """Whether an object made with `mode` must be given it again: bits the creation may
        have dropped (the umask's, setgid, which mkdir takes from the parent, not the mode,
        and setuid once chowned), or the mode an ACL limits."""
        dropped = self.umask | stat.S_ISGID | (stat.S_ISUID if chowned else 0)
        return not stat.S_ISLNK(mode) and bool(stat.S_IMODE(mode) & dropped
                                                or inherited is not None)

    def _set_owner(self, temp: bytes, uid: int, gid: int, mode: int,
                   inherited: acls.Inherited | None) -> None:
        """Owner, mode and ACLs of a new object in the work dir. It was made with its mode
        already: a chown (which clears setuid bits), the umask or an ACL may call for a chmod
        after it."""
        work = self.work.fd
        chowned = self._chowned(uid, gid)
        if chowned:
            os.chown(temp, uid, gid, dir_fd=work, follow_symlinks=False)
        if inherited is not None:
            path = proc_path(work, temp)[0]
            for name, value in ((acls.ACCESS, inherited.access),
                                (acls.DEFAULT, inherited.default)):
                if value is not None:
                    os.setxattr(path, name, value, follow_symlinks=False)
        if self._needs_chmod(mode, chowned, inherited):
            os.chmod(temp, stat.S_IMODE(mode), dir_fd=work)

    def _made_whole(self, owner: Owner | None) -> bool:
        """Whether a non-directory made with `owner` is finished by the call that makes it:
        no chown, ACL or chmod follows (and `owner` None sets nothing)."""
        if owner is None:
            return True
        uid, gid, mode, inherited = owner
        chowned = self._chowned(uid, gid)
        return not chowned and not self._needs_chmod(mode, chowned, inherited)

    def _place(self, parent: Node, name: bytes, make: Callable[[int, bytes], None],
               owner: Owner | None, directory: bool = False
               ) -> tuple[os.stat_result, bool]:
        """Make an object in the work dir, give it its owner, and move it to `name` in the
        upper copy of `parent`, replacing a whiteout there. `owner` comes from `_owner`.
        Returns its stat, and whether it replaced a whiteout (a directory then is opaque).
        The caller has checked the name.

        A non-directory that one call makes whole is made in place, as the kernel does in
        the upper dir: no one can see it half made, and the staging's create and rename
        cost more than the create alone. Where a whiteout holds the name it is staged."""
        self.copy_up.directory(parent)
        if not directory and self._made_whole(owner):
            upper_fd = self.tree.dir_fd(parent, self.upper)
            try:
                make(upper_fd, name)
            except FileExistsError:
                pass        # a whiteout to replace (or a name taken meanwhile): as below
            else:
                return os.stat(name, dir_fd=upper_fd, follow_symlinks=False), False
        work = self.work.fd
        temp = self.work.temp_name()
        make(work, temp)
        try:
            if owner is not None:
                self._set_owner(temp, *owner)
            upper_fd = self.tree.dir_fd(parent, self.upper)
            replaces_whiteout = False
            try:
                renameat2(work, temp, upper_fd, name, RENAME_NOREPLACE)
            except FileExistsError:
                occupant = self._upper_entry(parent, name)
                if occupant is None or not is_whiteout(occupant):
                    raise
                replaces_whiteout = True
                if directory:
                    set_opaque(work, temp, self.prefix)
                renameat2(work, temp, upper_fd, name, RENAME_EXCHANGE)
                self.work.discard(temp)     # now the whiteout
        except BaseException:
            self.work.discard(temp)
            raise
        return os.stat(name, dir_fd=upper_fd, follow_symlinks=False), replaces_whiteout

    def _new_node(self, parent: Node, name: bytes, st: os.stat_result, opaque: bool = False
                  ) -> Node:
        node = self.tree.node_for(parent, name, Found((self.upper,), (st.st_ino,), st),
                                  made_here=True)
        if node.is_dir:
            node.upper_state = UpperDirState(opaque=opaque, oci_whiteouts=set())
        return node

    def _existing(self, parent: Node, name: bytes) -> tuple[Node, os.stat_result]:
        found = self.tree.lookup(parent, name)
        if found is None:
            raise OSError(errno.ENOENT, "no such entry", name)
        return found

    # ---- creating ------------------------------------------------------------------------

    def create(self, parent: Node, name: bytes, mode: int, caller: Caller
               ) -> tuple[Node, os.stat_result, int]:
        """Create a regular file; also returns a read-write fd on it."""
        check_new_name(name)
        fd_box: list[int] = []
        owner = self._owner(parent, caller, stat.S_IFREG | mode)

        def make(work: int, temp: bytes) -> None:
            fd_box.append(open_in(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, work,
                                  stat.S_IMODE(owner[2])))
        try:
            st, _ = self._place(parent, name, make, owner)
        except BaseException:
            for fd in fd_box:
                os.close(fd)
            raise
        return self._new_node(parent, name, st), st, fd_box[0]

    def mkdir(self, parent: Node, name: bytes, mode: int, caller: Caller
              ) -> tuple[Node, os.stat_result]:
        check_new_name(name)
        owner = self._owner(parent, caller, stat.S_IFDIR | stat.S_IMODE(mode))
        # With redirect_dir=on the kernel marks a new dir in a merged dir opaque (so that
        # lookups in it never go below): the same marker keeps upper dirs interchangeable.
        marked: list[bool] = []

        def make(work: int, temp: bytes) -> None:
            os.mkdir(temp, stat.S_IMODE(owner[2]), dir_fd=work)
            if self.tree.stack.redirect_dir == "on" and len(parent.layers) > 1:
                set_opaque(work, temp, self.prefix)
                marked.append(True)
        st, opaque = self._place(parent, name, make, owner, directory=True)
        return self._new_node(parent, name, st, opaque or bool(marked)), st

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, caller: Caller
              ) -> tuple[Node, os.stat_result]:
        check_new_name(name)
        if stat.S_ISCHR(mode) and rdev == 0:
            raise OSError(errno.EPERM, "a 0/0 character device is a whiteout")
        if stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0:
            mode = stat.S_IFREG | stat.S_IMODE(mode)
        owner = self._owner(parent, caller, mode)
        st, _ = self._place(parent, name,
                            lambda work, temp: os.mknod(temp, owner[2], rdev, dir_fd=work),
                            owner)
        return self._new_node(parent, name, st), st

    def symlink(self, parent: Node, name: bytes, target: bytes, caller: Caller
                ) -> tuple[Node, os.stat_result]:
        check_new_name(name)
        st, _ = self._place(parent, name,
                            lambda work, temp: os.symlink(target, temp, dir_fd=work),
                            self._owner(parent, caller, stat.S_IFLNK | 0o777))
        return self._new_node(parent, name, st), st

    async def link(self, node: Node, parent: Node, name: bytes) -> tuple[Node, os.stat_result]:
        if node.is_dir:
            raise OSError(errno.EPERM, "hard link to a directory")
        check_new_name(name)
        await self.copy_up.ensure_upper_metadata(node)
        if node.parent is None:
            raise OSError(errno.ENOENT, "file was removed")
        if node.lower_data is not None:
            # Each name of a metadata-only copy must find its data: an absolute redirect,
            # as the kernel writes.
            self._write_redirect(node, self._absolute_redirect(node))
        source_dir = self.tree.parent_fd(node)
        source_name = node.name

        def make(work: int, temp: bytes) -> None:
            os.link(source_name, temp, src_dir_fd=source_dir, dst_dir_fd=work,
                    follow_symlinks=False)
        self._place(parent, name, make, owner=None)
        self.tree.table.add_link(node, parent, name)
        return node, self.tree.stat(node)

    # ---- removing ------------------------------------------------------------------------

    def unlink(self, parent: Node, name: bytes) -> None:
        node, st = self._existing(parent, name)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory", name)
        self.copy_up.directory(parent)
        self._keep_reachable(node, parent, name)
        upper_fd = self.tree.dir_fd(parent, self.upper)
        self._remove_name(parent, name, in_upper=node.in_upper, upper_fd=upper_fd)
        self.tree.table.remove_link(node, parent, name)

    def rmdir(self, parent: Node, name: bytes) -> None:
        node, _ = self._existing(parent, name)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory", name)
        if node is self.tree.root:
            raise OSError(errno.EBUSY, "root")
        if not self.tree.is_empty_dir(node):
            raise OSError(errno.ENOTEMPTY, "directory not empty", name)
        self.copy_up.directory(parent)
        self._keep_reachable(node, parent, name)
        upper_fd = self.tree.dir_fd(parent, self.upper)
        self._remove_name(parent, name, in_upper=node.in_upper, upper_fd=upper_fd)
        self._forget_dir(node)
        self.tree.table.remove_link(node, parent, name)

    def _keep_reachable(self, node: Node, parent: Node, name: bytes) -> None:
        """`parent/name` is about to go: if it is `node`'s last name, keep an fd on the object,
        so that fstat of an open file or dir (or stat of a removed working directory) still
        answers, with st_nlink 0, as in the kernel. A dir's fd is usually cached already; a
        file's is opened only while the file is open."""
        if node.orphan_fd is not None or node.extra_links:
            return
        if node.is_dir:
            node.orphan_fd = self.tree.take_dir_fd(node, node.top_layer)
        elif node.open_files:
            node.orphan_fd = open_path(name, self.tree.dir_fd(parent, node.top_layer))

    def _remove_name(self, parent: Node, name: bytes, in_upper: bool, upper_fd: int) -> None:
        """Make `name` vanish from the merged view: whiteout if a lower layer still has it."""
        needs_whiteout = self.tree.lower_positive(parent, name)
        if not in_upper:
            if needs_whiteout:
                self.whiteouts.make(upper_fd, name)
            return
        upper_st = os.stat(name, dir_fd=upper_fd, follow_symlinks=False)
        if needs_whiteout or stat.S_ISDIR(upper_st.st_mode):
            # Swap in a whiteout (or, for a dir that holds whiteouts, move it out of the way)
            # in one atomic step, then clean up in the work dir.
            temp = self.work.temp_name()
            if needs_whiteout:
                self.whiteouts.make(self.work.fd, temp)
                renameat2(self.work.fd, temp, upper_fd, name, RENAME_EXCHANGE)
            else:
                renameat2(upper_fd, name, self.work.fd, temp, RENAME_NOREPLACE)
            self._delete_in_work(temp)
        else:
            os.unlink(name, dir_fd=upper_fd)

    def _delete_in_work(self, temp: bytes) -> None:
        st = os.stat(temp, dir_fd=self.work.fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            with OwnedFd(open_dir_path(temp, self.work.fd)) as fd:
                empty_directory(fd)
            os.rmdir(temp, dir_fd=self.work.fd)
        else:
            os.unlink(temp, dir_fd=self.work.fd)

    def _forget_dir(self, node: Node) -> None:
        for layer in node.layers:
            self.tree.forget_dir_fd(node, layer)

    # ---- rename --------------------------------------------------------------------------

    async def rename(self, old_parent: Node, old_name: bytes, new_parent: Node, new_name: bytes,
                     flags: int) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (RENAME_NOREPLACE |
                                                                      RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "unsupported rename flags")
        exchange = bool(flags & RENAME_EXCHANGE)
        check_new_name(new_name)
        source, _ = self._existing(old_parent, old_name)
        found = self.tree.lookup(new_parent, new_name)
        target = found[0] if found else None
        # What the VFS and kernel overlayfs refuse before anything is copied up.
        if exchange and target is None:
            raise OSError(errno.ENOENT, "exchange target missing", new_name)
        if target is not None and flags & RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "target exists", new_name)
        if source is target and not exchange:
            return
        self._redirect_for(source, old_parent, new_parent)
        if exchange:
            assert target is not None
            self._redirect_for(target, new_parent, old_parent)
        elif target is not None:
            self._check_types(source, target)
            if target.is_dir and target.layers != (self.upper,) \
                    and not self.tree.is_empty_dir(target):
                raise OSError(errno.ENOTEMPTY, "target directory not empty")
        # Copy-ups may wait; everything after them runs without a pause.
        await self.copy_up.ensure_upper_metadata(source)
        if exchange:
            assert target is not None
            await self.copy_up.ensure_upper_metadata(target)
        self.copy_up.directory(old_parent)
        self.copy_up.directory(new_parent)

        source, _ = self._existing(old_parent, old_name)
        found = self.tree.lookup(new_parent, new_name)
        target = found[0] if found else None
        if source is target and not exchange:
            return
        if exchange:
            if target is None:
                raise OSError(errno.ENOENT, "exchange target missing", new_name)
            self._exchange(old_parent, old_name, source, new_parent, new_name, target)
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, "target exists", new_name)
            self._check_replaceable(source, target, old_parent, new_parent)
        self._move(old_parent, old_name, source, new_parent, new_name, target)

    def _redirect_for(self, node: Node, old_parent: Node, new_parent: Node) -> bytes | None:
        """The redirect `node` needs to move from `old_parent` to `new_parent`: None for
        anything but a dir with a lower part or a metadata-only copy. Such a dir moves only
        with redirect_dir=on (as in the kernel, EXDEV otherwise, and `mv` copies), and only
        if the redirect fits in the kernel's redirect_max."""
        if node.is_dir:
            if node.layers == (self.upper,):
                return None
            if self.tree.stack.redirect_dir != "on":
                raise OSError(errno.EXDEV, "directory has a lower layer")
        elif node.lower_data is None:
            return None
        # The kernel's rule: a file whose lower file is hard-linked gets an absolute one,
        # since its other names may be copied up in other dirs.
        if old_parent is new_parent and not (node.lower_data and node.lower_data.linked):
            return redirect.relative(node.name, node.redirect)
        return self._absolute_redirect(node)

    @staticmethod
    def _absolute_redirect(node: Node) -> bytes:
        """`node`'s absolute redirect: the one it has, or one made from its path."""
        if node.redirect is not None and node.redirect.startswith(b"/"):
            return node.redirect
        chain = []
        ancestor: Node | None = node
        while ancestor is not None and ancestor.parent is not None:
            chain.append((ancestor.name, ancestor.redirect))
            ancestor = ancestor.parent
        return redirect.absolute(chain)

    def _prepare_to_move(self, node: Node, old_parent: Node, new_parent: Node) -> None:
        """Before a dir with a lower part (or a metadata-only copy) moves: record where its
        lower part is. The redirect is written while it is still at its old name, where it
        points at what is there already, so a crash before the rename changes nothing (the
        kernel's order)."""
        value = self._redirect_for(node, old_parent, new_parent)
        if value is None:
            return
        if node.is_dir:
            self.tree.pin_lower_paths(node)
        self._write_redirect(node, value)

    def _write_redirect(self, node: Node, value: bytes) -> None:
        if value != node.redirect:
            redirect.write(self.tree.xattr_target(node), self.prefix, value)
            node.redirect = value

    @staticmethod
    def _check_types(source: Node, target: Node) -> None:
        if source.is_dir and not target.is_dir:
            raise OSError(errno.ENOTDIR, "target is not a directory")
        if not source.is_dir and target.is_dir:
            raise OSError(errno.EISDIR, "target is a directory")

    def _check_replaceable(self, source: Node, target: Node, old_parent: Node,
                           new_parent: Node) -> None:
        self._check_types(source, target)
        if target.is_dir and not self.tree.is_empty_dir(target):
            if target.layers == (self.upper,):
                # The kernel marks the source (opaque, or its redirect) before the upper
                # filesystem refuses a non-empty pure-upper target: the same marker stays.
                self._mark_opaque_if_needed(source, new_parent)
                self._prepare_to_move(source, old_parent, new_parent)
            raise OSError(errno.ENOTEMPTY, "target directory not empty")
        if target is self.tree.root:
            raise OSError(errno.EBUSY, "root")

    def _mark_opaque_if_needed(self, node: Node, new_parent: Node) -> None:
        """A pure-upper directory moved into a merged directory becomes opaque (kernel rule),
        so no lower directory of the same name can show through it."""
        if node.is_dir and node.layers == (self.upper,) and len(new_parent.layers) > 1:
            self._set_opaque(node)

    def _move(self, old_parent: Node, old_name: bytes, source: Node, new_parent: Node,
              new_name: bytes, target: Node | None) -> None:
        if target is not None:
            self._keep_reachable(target, new_parent, new_name)
        old_fd = self.tree.dir_fd(old_parent, self.upper)
        new_fd = self.tree.dir_fd(new_parent, self.upper)
        if target is not None and target.is_dir and target.in_upper:
            # The target's upper dir may hold whiteouts, which rename(2) would call entries:
            # swap in an empty stand-in first, as the kernel's ovl_clear_empty does. With the
            # target's owner, mode, times and xattrs, and opaque so that nothing below shows
            # through it, the view does not change: a crash here leaves the state before.
            temp = self.copy_up.stage_directory(
                self.tree.dir_fd(target, self.upper),
                lambda temp: set_opaque(self.work.fd, temp, self.prefix))
            renameat2(self.work.fd, temp, new_fd, new_name, RENAME_EXCHANGE)
            self._forget_dir(target)
            self._delete_in_work(temp)
        self._mark_opaque_if_needed(source, new_parent)
        self._prepare_to_move(source, old_parent, new_parent)
        whiteout = self.tree.lower_positive(old_parent, old_name)
        occupant = self._upper_entry(new_parent, new_name)
        if source.is_dir and occupant is not None and is_whiteout(occupant):
            # A directory cannot replace the whiteout's chardev: swap them instead, and keep
            # the whiteout at the old name only if something below needs hiding there.
            renameat2(old_fd, old_name, new_fd, new_name, RENAME_EXCHANGE)
            if not whiteout:
                os.unlink(old_name, dir_fd=old_fd)
        elif whiteout:
            try:
                renameat2(old_fd, old_name, new_fd, new_name, RENAME_WHITEOUT)
            except PermissionError:
                renameat2(old_fd, old_name, new_fd, new_name)
                self.whiteouts.make(old_fd, old_name)
        else:
            renameat2(old_fd, old_name, new_fd, new_name)
        table = self.tree.table
        if target is not None:
            if target.is_dir:
                self._forget_dir(target)
            table.remove_link(target, new_parent, new_name)
        table.move_link(source, (old_parent, old_name), (new_parent, new_name))

    def _set_opaque(self, node: Node) -> None:
        state = self.tree.upper_state(node)
        if not state.opaque:
            set_opaque(self.tree.dir_fd(node, self.upper), None, self.prefix)
            state.opaque = True

    def _exchange(self, old_parent: Node, old_name: bytes, source: Node, new_parent: Node,
                  new_name: bytes, target: Node) -> None:
        self._mark_opaque_if_needed(source, new_parent)
        self._mark_opaque_if_needed(target, old_parent)
        self._prepare_to_move(source, old_parent, new_parent)
        self._prepare_to_move(target, new_parent, old_parent)
        renameat2(self.tree.dir_fd(old_parent, self.upper), old_name,
                  self.tree.dir_fd(new_parent, self.upper), new_name, RENAME_EXCHANGE)
        if source is target:
            return
        # The first move leaves both nodes claiming the new name; the second ends that.
        self.tree.table.move_link(source, (old_parent, old_name), (new_parent, new_name))
        self.tree.table.move_link(target, (new_parent, new_name), (old_parent, old_name))
