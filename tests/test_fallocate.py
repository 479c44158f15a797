"""fallocate(2) through the mount, against kernel overlayfs on identical stacks: each mode
FUSE carries (allocate, keep size, punch a hole, zero a range) on a lower file (copied up at
the writable open), a file in the upper dir and a new file; then sizes, allocated blocks,
contents and the upper dir must match. Needs the patched pyfuse3 (scripts/setup builds it);
with a stock pyfuse3 the call fails with EOPNOTSUPP, which is checked instead."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

import pytest

from overlayfuse import capabilities
from overlayfuse.compare.trees import raw_snapshot, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

BLOCK = 4096
DATA = bytes(range(256)) * (4 * BLOCK // 256)    # four blocks, no zero block among them
LOWERS = [{"lower": "file:" + "L" * 3 * BLOCK}]
UPPER = {"upper": "file:" + "U" * 3 * BLOCK}

# (mode, offset, length): each applied in turn to the same file.
CALLS = [
    (0, 0, 6 * BLOCK),                                          # grow
    (FALLOC_FL_KEEP_SIZE, 0, 10 * BLOCK),                       # allocate past EOF
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BLOCK, BLOCK),
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 50),      # inside one block: zeroes
    (FALLOC_FL_ZERO_RANGE, 2 * BLOCK + 7, 3 * BLOCK),
    (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 5 * BLOCK, 8 * BLOCK),
    (FALLOC_FL_PUNCH_HOLE, 0, BLOCK),                           # EOPNOTSUPP without KEEP_SIZE
    (0, -1, BLOCK),                                             # EINVAL
    (0, 0, 0),                                                  # EINVAL
]


# ext4 may count a block more or less for the same calls (an extent block, a partial range
# zeroed by writing rather than by an unwritten extent), depending on what the page cache
# holds: allocated sectors agree within two blocks.
BLOCK_SLACK = 2 * BLOCK // 512


def _allowing_slack(outcome: list[object]) -> list[object]:
    """The outcome with each (size, blocks) reduced to its size: blocks are compared apart."""
    return [entry[0] if isinstance(entry, tuple) else entry for entry in outcome]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    return 0 if _libc.fallocate(fd, mode, offset, length) == 0 else -ctypes.get_errno()


def _exercise(merged: Path, name: str, create: bool) -> list[object]:
    path = merged / name
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if create:
            os.write(fd, DATA)
        outcome: list[object] = []
        for mode, offset, length in CALLS:
            outcome.append(_fallocate(fd, mode, offset, length))
            st = os.fstat(fd)
            outcome.append((st.st_size, st.st_blocks))
        os.fsync(fd)
    finally:
        os.close(fd)
    outcome.append(path.read_bytes())
    return outcome


@pytest.mark.skipif(not capabilities.FALLOCATE, reason="stock pyfuse3: no fallocate handler")
@pytest.mark.parametrize("name,create", [("lower", False), ("upper", False), ("new", True)])
def test_fallocate_modes_match_the_kernel(both, name: str, create: bool) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        results = {who: _exercise(stack["merged"], name, create)
                   for who, stack in (("kernel", kernel), ("ofs", ofs))}
        assert _allowing_slack(results["ofs"]) == _allowing_slack(results["kernel"])
        for ours, kernels in zip(results["ofs"], results["kernel"]):
            if isinstance(ours, tuple):         # (size, blocks)
                assert abs(ours[1] - kernels[1]) <= BLOCK_SLACK, (results["ofs"],
                                                                  results["kernel"])
        assert results["ofs"][0] == 0           # the first call grows the file
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])


@pytest.mark.skipif(not capabilities.FALLOCATE, reason="stock pyfuse3: no fallocate handler")
def test_fallocate_on_a_read_only_handle_is_ebadf_and_copies_nothing_up(both) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        results = {}
        for who, stack in (("kernel", kernel), ("ofs", ofs)):
            fd = os.open(stack["merged"] / "lower", os.O_RDONLY)
            try:
                results[who] = _fallocate(fd, 0, 0, BLOCK)
            finally:
                os.close(fd)
        assert results == {"kernel": -errno.EBADF, "ofs": -errno.EBADF}
        assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])


@pytest.mark.skipif(not capabilities.FALLOCATE, reason="stock pyfuse3: no fallocate handler")
@pytest.mark.parametrize("mode", [FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE])
def test_fallocate_modes_fuse_cannot_carry_are_eopnotsupp(make_stack, mount_ofs,
                                                           mode: int) -> None:
    """The FUSE kernel module refuses these before asking the daemon (docs/behaviour.md)."""
    stack = make_stack(LOWERS, UPPER)
    with mount_ofs(stack):
        fd = os.open(stack["merged"] / "upper", os.O_RDWR)
        try:
            assert _fallocate(fd, mode, 0, BLOCK) == -errno.EOPNOTSUPP
        finally:
            os.close(fd)
        assert (stack["merged"] / "upper").read_bytes() == b"U" * 3 * BLOCK


@pytest.mark.skipif(capabilities.FALLOCATE, reason="this pyfuse3 has the fallocate handler")
def test_fallocate_without_the_capability_is_eopnotsupp(make_stack, mount_ofs) -> None:
    stack = make_stack(LOWERS, UPPER)
    with mount_ofs(stack):
        fd = os.open(stack["merged"] / "upper", os.O_RDWR)
        try:
            assert _fallocate(fd, 0, 0, 6 * BLOCK) == -errno.EOPNOTSUPP
        finally:
            os.close(fd)
