"""Metadata-only copy-up (`metacopy=on`), against kernel overlayfs mounted with the same option:
the same results, the same view and data, the same upper dir on disk (markers and redirects
included), st_blocks and inode numbers, and uppers that move between the two both ways."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayfuse.compare.fsops import apply_all
from overlayfuse.compare.trees import raw_snapshot, snapshot
from overlayfuse.syscalls import RENAME_EXCHANGE
from rotation import run_rotations

METACOPY = ["metacopy=on"]
BIG = 300 << 10       # bytes of each "big" lower file: its stub is clearly without data

LOWERS = [
    {"d/f": "file:top f", "d/g": "file:top g", "d/sub/h": "file:h", "e": "dir",
     "x/attr": "file:with an xattr", "link2": "file:two names", "empty": "file:"},
    {"d/bottom": "file:bottom", "e/old": "file:old", "m/k": "file:k"},
]


def _with_big_files(stack: dict) -> None:
    """Large lower files (written here: a layer spec holds short contents)."""
    lower = Path(stack["lowers"][0])
    for name in ("big", "d/big2"):
        (lower / name).write_bytes(bytes(range(256)) * (BIG // 256))
    os.setxattr(lower / "x/attr", "user.note", b"kept")
    os.link(lower / "link2", lower / "link2b")


SCENARIOS: dict[str, list[tuple]] = {
    "chmod": [("chmod", "d/f", 0o600), ("stat", "d/f"), ("read", "d/f"), ("read", "big")],
    "chown": [("chown", "big", 1000, 1000), ("chown", "d/bottom", 2, 3), ("stat", "big"),
              ("read", "big"), ("read", "d/bottom")],
    "utime": [("utime", "big", 10**18, 2 * 10**18), ("read", "big")],
    "setxattr": [("setxattr", "big", "user.a", "1"), ("listxattr", "big"), ("read", "big")],
    "removexattr": [("removexattr", "x/attr", "user.note"), ("listxattr", "x/attr"),
                    ("read", "x/attr")],
    "write-after-chmod": [("chmod", "big", 0o640), ("write", "big", 10, "XYZ"),
                          ("read", "big"), ("stat", "big")],
    "append-after-chown": [("chown", "d/big2", 7, 7), ("append", "d/big2", "tail"),
                           ("read", "d/big2")],
    "open-for-writing": [("chmod", "big", 0o600), ("open", "big", os.O_RDWR), ("read", "big")],
    "truncate": [("chmod", "big", 0o600), ("truncate", "big", 1000), ("read", "big"),
                 ("truncate", "d/big2", 5), ("read", "d/big2")],
    "open-trunc": [("chmod", "big", 0o600), ("open", "big", os.O_WRONLY | os.O_TRUNC),
                   ("read", "big"), ("stat", "big")],
    "rename-same-dir": [("rename", "big", "big-moved"), ("read", "big-moved"),
                        ("listdir", ""), ("stat", "big")],
    "rename-across": [("rename", "d/big2", "e/moved"), ("read", "e/moved"),
                      ("rename", "e/moved", "e/again"), ("read", "e/again"),
                      ("rename", "e/again", "twice"), ("read", "twice")],
    "rename-bottom-file": [("rename", "m/k", "d/k"), ("read", "d/k"), ("listdir", "m")],
    "rename-then-write": [("rename", "big", "e/w"), ("write", "e/w", 0, "new"),
                          ("read", "e/w"), ("rename", "e/w", "back"), ("read", "back")],
    "rename-into-renamed-dir": [("rename", "d", "e/d2"), ("rename", "e/d2/big2", "e/d2/b3"),
                                ("read", "e/d2/b3"), ("rename", "e/d2/f", "f-out"),
                                ("read", "f-out")],
    "exchange": [("rename", "d/f", "d/g", RENAME_EXCHANGE), ("read", "d/f"), ("read", "d/g")],
    "link": [("link", "big", "e/big-link"), ("read", "e/big-link"), ("stat", "big"),
             ("write", "e/big-link", 0, "via link"), ("read", "big"), ("stat", "e/big-link")],
    "rename-lower-hard-link": [("rename", "link2b", "renamed"), ("read", "renamed"),
                               ("rename", "link2", "d/elsewhere"), ("read", "d/elsewhere")],
    "lower-hard-link": [("chmod", "link2", 0o600), ("read", "link2"), ("stat", "link2b"),
                        ("write", "link2", 0, "W"), ("read", "link2b"), ("read", "link2")],
    "unlink-after": [("chmod", "big", 0o600), ("unlink", "big"), ("listdir", ""),
                     ("stat", "big")],
    "empty-file": [("chown", "empty", 5, 5), ("read", "empty"), ("append", "empty", "now"),
                   ("read", "empty")],
}


@pytest.fixture
def both_metacopy(make_stack, mount_ofs, mount_kernel):
    """The same stack (big files included) twice, under kernel overlayfs and overlayfuse,
    both with metacopy=on: yields (kernel_stack, ofs_stack)."""
    @contextlib.contextmanager
    def run() -> Iterator[tuple[dict, dict]]:
        stacks = [make_stack(LOWERS, {}, name=kind) for kind in ("kernel", "ofs")]
        for stack in stacks:
            _with_big_files(stack)
        with mount_kernel(stacks[0], options=METACOPY), mount_ofs(stacks[1], options=METACOPY):
            yield stacks[0], stacks[1]
    return run


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_metadata_changes_match_the_kernel(both_metacopy, scenario: str) -> None:
    ops = SCENARIOS[scenario]
    with both_metacopy() as (kernel, ofs):
        kernel_results = apply_all(kernel["merged"], ops)
        ofs_results = apply_all(ofs["merged"], ops)
        assert ofs_results == kernel_results, list(zip(ops, kernel_results, ofs_results))
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert _blocks_of_stubs(ofs) == _blocks_of_stubs(kernel)
    assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])


def _stubs(stack: dict) -> list[str]:
    """The upper dir's metadata-only copies, from the upper root."""
    upper = Path(stack["upper"])
    return sorted(str(path.relative_to(upper)) for path in upper.rglob("*")
                  if path.is_file() and "trusted.overlay.metacopy" in os.listxattr(path))


def _blocks_of_stubs(stack: dict) -> dict[str, int]:
    """What the merged view shows as st_blocks of each metadata-only copy: its data's."""
    merged = Path(stack["merged"])
    return {name: os.lstat(merged / name).st_blocks for name in _stubs(stack)
            if (merged / name).exists()}


def test_a_metadata_change_copies_no_data(both_metacopy) -> None:
    with both_metacopy() as (kernel, ofs):
        for stack in (kernel, ofs):
            merged = Path(stack["merged"])
            os.chmod(merged / "big", 0o600)
            os.chown(merged / "d/big2", 1, 1)
            upper = Path(stack["upper"])
            assert os.lstat(upper / "big").st_size == BIG
            assert os.lstat(upper / "big").st_blocks * 512 < 8192     # no data, maybe xattrs
            assert os.lstat(merged / "big").st_blocks * 512 >= BIG    # the data's, shown
            assert (merged / "big").read_bytes() == (Path(stack["lowers"][0]) / "big"
                                                      ).read_bytes()
        assert _stubs(ofs) == _stubs(kernel) == ["big", "d/big2"]
        assert os.getxattr(Path(ofs["upper"]) / "big", "trusted.overlay.metacopy") == b""


def test_without_metacopy_a_metadata_change_copies_the_data(make_stack, mount_ofs) -> None:
    stack = make_stack(LOWERS, {})
    _with_big_files(stack)
    with mount_ofs(stack):
        os.chmod(Path(stack["merged"]) / "big", 0o600)
    assert _stubs(stack) == []
    assert (Path(stack["upper"]) / "big").read_bytes() == (Path(stack["lowers"][0]) / "big"
                                                           ).read_bytes()


def test_opening_for_writing_keeps_the_mtime(make_stack, mount_ofs) -> None:
    """The kernel shows the time of its data copy as the file's mtime after the first open
    for writing, even when nothing is written; overlayfuse keeps the mtime, as a plain
    copy-up and POSIX do (docs/behaviour.md)."""
    stack = make_stack(LOWERS, {})
    _with_big_files(stack)
    merged = Path(stack["merged"])
    with mount_ofs(stack, options=METACOPY):
        os.utime(merged / "big", ns=(10**18, 10**18))
        assert _stubs(stack) == ["big"]
        os.close(os.open(merged / "big", os.O_RDWR))
        assert _stubs(stack) == []
        assert os.lstat(merged / "big").st_mtime_ns == 10**18
        assert os.lstat(Path(stack["upper"]) / "big").st_blocks * 512 >= BIG


@pytest.mark.parametrize("writer", ["kernel", "overlayfuse"])
def test_metacopy_uppers_move_between_kernel_and_overlayfuse(writer: str, make_stack,
                                                             mount_ofs, mount_kernel) -> None:
    stack = make_stack(LOWERS, {})
    _with_big_files(stack)
    first, second = (mount_kernel, mount_ofs) if writer == "kernel" else (mount_ofs,
                                                                         mount_kernel)
    ops = [("chmod", "big", 0o600), ("chown", "d/big2", 3, 4), ("rename", "d/big2", "e/b2"),
           ("rename", "d", "e/dd"), ("link", "e/dd/f", "f-link"), ("setxattr", "m/k", "user.x", "y"),
           ("rename", "m/k", "m/k2"), ("chmod", "link2", 0o700)]
    paths = ["big", "e/b2", "e/dd/f", "f-link", "m/k2", "link2", "link2b", "e/dd/bottom"]
    merged = Path(stack["merged"])
    with first(stack, options=METACOPY):
        assert apply_all(merged, ops) == ["ok"] * len(ops)
        view = snapshot(merged)
        inos = [os.lstat(merged / path).st_ino for path in paths]
        blocks = [os.lstat(merged / path).st_blocks for path in paths]
    assert len(_stubs(stack)) >= 5
    with second(stack, options=METACOPY):
        assert snapshot(merged) == view
        assert [os.lstat(merged / path).st_ino for path in paths] == inos
        assert [os.lstat(merged / path).st_blocks for path in paths] == blocks
        # and the data is copied in where the first one left it as metadata only
        for path in paths[:3]:
            with open(merged / path, "r+b") as f:
                f.write(b"#")
        changed = snapshot(merged)
    with first(stack, options=METACOPY):
        assert snapshot(merged) == changed


def test_a_metacopy_file_is_refused_without_metacopy(make_stack, mount_ofs,
                                                     mount_kernel) -> None:
    """As the kernel: with metacopy=off a metadata-only copy is not followed to its data
    (EPERM), rather than shown without it."""
    outcomes = {}
    for kind, mount in (("kernel", mount_kernel), ("ofs", mount_ofs)):
        stack = make_stack(LOWERS, {}, name=kind)
        _with_big_files(stack)
        with mount_kernel(stack, options=METACOPY):
            os.chmod(Path(stack["merged"]) / "big", 0o600)
        with mount(stack):
            outcomes[kind] = apply_all(stack["merged"], [("stat", "big"), ("read", "d/f"),
                                                         ("listdir", "")])
    assert outcomes["ofs"] == outcomes["kernel"]
    assert outcomes["ofs"][0] == "EPERM"


def test_a_metacopy_file_without_its_data_is_an_io_error(make_stack, mount_ofs,
                                                         mount_kernel) -> None:
    outcomes = {}
    for kind, mount in (("kernel", mount_kernel), ("ofs", mount_ofs)):
        stack = make_stack([{"a": "dir"}], {}, name=kind)
        upper = Path(stack["upper"])
        with open(upper / "lost", "wb") as f:
            f.truncate(5000)
        os.setxattr(upper / "lost", "trusted.overlay.metacopy", b"")
        with mount(stack, options=METACOPY):
            outcomes[kind] = apply_all(stack["merged"], [("stat", "lost"), ("listdir", "")])
    assert outcomes["ofs"] == outcomes["kernel"]
    assert outcomes["ofs"][0] == "EIO"


def test_layer_rotation(tmp_path: Path, mount_ofs, mount_kernel) -> None:
    """Metadata-only copies in yesterday's upper, now a lower layer: their data is found
    below it, through their redirects, and they are copied up again as the kernel does."""
    rounds = [
        [("chmod", "big", 0o600), ("rename", "d/big2", "e/b2"), ("chown", "d/f", 9, 9)],
        [("chmod", "big", 0o640), ("rename", "e/b2", "b3"), ("read", "b3"), ("read", "big"),
         ("rename", "d/f", "e/f")],
        [("write", "b3", 0, "data"), ("read", "b3"), ("read", "e/f"), ("chmod", "e/f", 0o611),
         ("read", "big")],
    ]
    def observe(stack: dict, ops: list[tuple]) -> tuple:
        return (apply_all(stack["merged"], ops), snapshot(stack["merged"]),
                _blocks_of_stubs(stack), raw_snapshot(Path(stack["upper"])))

    results = {kind: run_rotations(tmp_path / kind, LOWERS, {}, rounds, mount, observe,
                                   METACOPY, lambda lowers: _with_big_files({"lowers": lowers}))
               for kind, mount in (("kernel", mount_kernel), ("ofs", mount_ofs))}
    assert results["ofs"] == results["kernel"]
    assert all(result.startswith("ok") for step in results["ofs"] for result in step[0])


def test_concurrent_opens_for_writing_copy_the_data_once(make_stack, mount_ofs) -> None:
    stack = make_stack(LOWERS, {})
    _with_big_files(stack)
    merged = Path(stack["merged"])
    expected = (Path(stack["lowers"][0]) / "big").read_bytes()
    with mount_ofs(stack, options=METACOPY):
        os.chmod(merged / "big", 0o600)
        errors: list[BaseException] = []

        def open_and_write(offset: int) -> None:
            try:
                with open(merged / "big", "r+b") as f:
                    f.seek(offset)
                    f.write(b"!")
            except BaseException as e:     # reported below
                errors.append(e)
        threads = [threading.Thread(target=open_and_write, args=(n * 1000,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        data = (merged / "big").read_bytes()
    assert _stubs(stack) == []
    assert data == b"".join(b"!" if n % 1000 == 0 and n < 8000 else expected[n:n + 1]
                            for n in range(len(expected)))


def test_a_reader_open_across_the_data_copy_sees_the_writes(make_stack, mount_ofs) -> None:
    stack = make_stack(LOWERS, {})
    _with_big_files(stack)
    merged = Path(stack["merged"])
    with mount_ofs(stack, options=METACOPY):
        os.chmod(merged / "big", 0o600)
        with open(merged / "big", "rb", buffering=0) as reader:
            assert reader.read(3) == bytes([0, 1, 2])
            with open(merged / "big", "r+b", buffering=0) as writer:
                writer.write(b"new")
            reader.seek(0)
            assert reader.read(3) == b"new"


def test_a_read_only_stub_is_filled_for_its_owner(make_stack, mount_ofs, tmp_path: Path
                                                  ) -> None:
    """A mode without the owner's write bit does not stop root (who may write anyway) from
    opening the file for writing; the daemon's own open for the data copy must not fail
    either, and the mode is left as it was."""
    stack = make_stack(LOWERS, {})
    _with_big_files(stack)
    merged = Path(stack["merged"])
    with mount_ofs(stack, options=METACOPY):
        os.chmod(merged / "big", 0o444)
        with open(merged / "big", "r+b") as f:
            f.write(b"root")
        assert stat.S_IMODE(os.lstat(merged / "big").st_mode) == 0o444
        assert (merged / "big").read_bytes()[:5] == b"root\x04"
    assert _stubs(stack) == []


def test_reading_a_metacopy_file_moves_its_upper_atime(both_metacopy) -> None:
    """As the kernel: a read (relatime) moves the atime of the upper file, though the data
    read is the lower file's, whose atime stays."""
    moved = {}
    with both_metacopy() as stacks:
        for kind, stack in zip(("kernel", "ofs"), stacks):
            merged, upper = Path(stack["merged"]), Path(stack["upper"])
            lower_atime = os.lstat(Path(stack["lowers"][0]) / "big").st_atime_ns
            os.utime(merged / "big", ns=(10**18, 15 * 10**17))
            time.sleep(0.05)    # a read in the same clock tick would leave atime == ctime
            (merged / "big").read_bytes()
            first = os.lstat(upper / "big").st_atime_ns
            (merged / "big").read_bytes()
            moved[kind] = (first > 15 * 10**17, os.lstat(upper / "big").st_atime_ns == first,
                           os.lstat(merged / "big").st_atime_ns == first,
                           os.lstat(Path(stack["lowers"][0]) / "big").st_atime_ns
                           == lower_atime)
    assert moved["ofs"] == moved["kernel"] == (True, True, True, True)
