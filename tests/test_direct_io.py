"""Direct I/O and the page cache: after an O_DIRECT write completes, buffered reads see its
data, also while other processes keep reading the file buffered (the kernel's generic/451
case: asynchronous direct rewrites of a 640 KiB file, racing buffered readers).

The race is one of timing: without the fix, about one cycle in a thousand read stale data on
this kind of machine, so the test runs enough cycles to see it almost always."""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from aio import AioContext

SIZE = 640 << 10
CYCLES = 2000
PATTERNS = (b"\x55", b"\xaa")

# As the test suite's readers (xfs_io pread): open, read the file 4 KiB at a time, close.
READER = """
import os, sys
while True:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    for offset in range(0, int(sys.argv[2]), 4096):
        os.pread(fd, 4096, offset)
    os.close(fd)
"""


@contextlib.contextmanager
def buffered_readers(path: Path, count: int = 3) -> Iterator[None]:
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(path), str(SIZE)])
               for _ in range(count)]
    try:
        yield
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()


def stale_cycles(path: Path) -> list[int]:
    """Rewrite the file with asynchronous direct writes, each cycle with the other pattern,
    while buffered readers run; after each write, a fresh buffered read must see it. Returns
    the cycles whose read did not (stops at the first few)."""
    with open(path, "wb") as f:
        f.write(PATTERNS[0] * SIZE)
    buffers = []
    for pattern in PATTERNS:
        buffer = mmap.mmap(-1, SIZE)
        buffer.write(pattern * SIZE)
        buffers.append(buffer)
    stale = []
    with buffered_readers(path), AioContext() as aio:
        for cycle in range(1, CYCLES + 1):
            fd = os.open(path, os.O_RDWR | os.O_DIRECT)
            try:
                assert aio.pwrite(fd, buffers[cycle % 2], 0) == SIZE
            finally:
                os.close(fd)
            fd = os.open(path, os.O_RDONLY)
            try:
                seen = os.pread(fd, SIZE, 0)
            finally:
                os.close(fd)
            if seen != PATTERNS[cycle % 2] * SIZE:
                stale.append(cycle)
                if len(stale) == 3:
                    break
    return stale


def test_async_direct_writes_racing_buffered_reads(both) -> None:
    with both([{}]) as (kernel, ofs):
        assert stale_cycles(kernel["merged"] / "f") == []
        assert stale_cycles(ofs["merged"] / "f") == []


def test_direct_write_over_a_lower_file(both) -> None:
    """A synchronous direct write into a file still in the lower layer: the copy-up and the
    write both land, and the page cache filled by an earlier buffered read is refreshed."""
    with both([{"f": "file:" + "a" * 8192}]) as (kernel, ofs):
        for stack in (kernel, ofs):
            path = stack["merged"] / "f"
            assert path.read_bytes() == b"a" * 8192
            buffer = mmap.mmap(-1, 4096)
            buffer.write(b"b" * 4096)
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            try:
                assert os.pwrite(fd, buffer, 4096) == 4096
            finally:
                os.close(fd)
            assert path.read_bytes() == b"a" * 4096 + b"b" * 4096
            assert (stack["upper"] / "f").read_bytes() == b"a" * 4096 + b"b" * 4096
