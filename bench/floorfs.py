"""The floor: the least a pyfuse3 filesystem can do per metadata request, on the same pyfuse3,
trio and mount options as overlayfuse.

It shows a fixed tree, the names of a stack's lists (every visible file and dir), and answers
LOOKUP and GETATTR from a dict built at start, READDIR(PLUS) from a list per directory, and a
missing name with a negative entry, as overlayfuse does; a file (1 KiB each) opens and reads
zeros, and FLUSH is refused with ENOSYS as overlayfuse does. Nothing touches a disk. A metadata
phase timed on it costs the FUSE round trips and nothing of overlay logic, so overlayfuse's
time over the floor's is its per-request cost over the least possible (bench/phases.py).

Run as `python -m bench.floorfs LIST... MOUNTPOINT` (each list: relative paths of files, one a
line); serves in the foreground until the
mount goes away (`fusermount3 -u MOUNTPOINT`).
"""

from __future__ import annotations

import errno
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 3600.0        # overlayfuse's default entry and attribute timeouts
OPTIONS = {"default_permissions", "fsname=floor", "subtype=floor"}


class FloorFS(pyfuse3.Operations):
    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.listings: dict[int, list[tuple[bytes, int]]] = {}
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self._add(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755)
        for path in paths:
            parent = pyfuse3.ROOT_INODE
            parts = path.encode().split(b"/")
            for depth, name in enumerate(parts):
                found = self.children[parent].get(name)
                if found is None:
                    is_dir = depth < len(parts) - 1
                    found = self._add(len(self.attrs) + 1,
                                      stat.S_IFDIR | 0o755 if is_dir else stat.S_IFREG | 0o644)
                    self.children[parent][name] = found
                    if is_dir:
                        self.children[found] = {}
                parent = found
        self.listings = {ino: list(names.items()) for ino, names in self.children.items()}
        self.negative = pyfuse3.EntryAttributes()
        self.negative.st_ino = 0
        self.negative.entry_timeout = TIMEOUT

    def _add(self, ino: int, mode: int) -> int:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = ino
        entry.st_mode = mode
        entry.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        entry.st_size = 4096 if stat.S_ISDIR(mode) else 1024
        entry.st_blksize = 4096
        entry.entry_timeout = TIMEOUT
        entry.attr_timeout = TIMEOUT
        self.attrs[ino] = entry
        return ino

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        ino = self.children.get(parent_inode, {}).get(name)
        return self.negative if ino is None else self.attrs[ino]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode not in self.listings:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.listings[fh]
        for index in range(start_id, len(listing)):
            name, ino = listing[index]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(max(0, min(size, self.attrs[fh].st_size - off)))

    async def flush(self, fh: int) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        return None


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m bench.floorfs LIST... MOUNTPOINT", file=sys.stderr)
        return 2
    *lists, mountpoint = argv
    paths = []
    for listing in lists:
        with open(listing, encoding="utf-8") as f:
            paths += [line.rstrip("\n") for line in f if line.strip()]
    pyfuse3.init(FloorFS(paths), mountpoint, OPTIONS)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
