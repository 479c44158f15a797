"""Copy-up origins (overlayfuse/origin.py): the kernel's trusted.overlay.origin format, and
what a mount does with an origin it cannot follow."""

from __future__ import annotations

import os

import pytest

from overlayfuse import origin
from overlayfuse.syscalls import filesystem_uuid, name_to_handle_at

# What kernel overlayfs 6.18 wrote on this machine's ext4 (null UUID) when it copied up a
# file whose handle is type 1 (FILEID_INO32_GEN), inode 2203748, generation 0x94d70ada.
KERNEL_ORIGIN = bytes.fromhex("00fb1d0001" + "00" * 16 + "64a02100da0ad794")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="trusted xattrs need root")


def test_decode_reads_what_the_kernel_writes() -> None:
    uuid, handle_type, handle = origin.decode(KERNEL_ORIGIN)
    assert (uuid, handle_type) == (bytes(16), 1)
    assert int.from_bytes(handle[:4], "little") == 2203748


def test_encode_writes_what_the_kernel_writes() -> None:
    assert origin.encode(1, bytes.fromhex("64a02100da0ad794"), bytes(16)) == KERNEL_ORIGIN


@pytest.mark.parametrize("bad", [
    KERNEL_ORIGIN[:10],                                     # shorter than the header
    bytes([1]) + KERNEL_ORIGIN[1:],                         # another version
    KERNEL_ORIGIN[:1] + b"\xfa" + KERNEL_ORIGIN[2:],        # wrong magic
    KERNEL_ORIGIN + b"\0",                                  # length disagrees
    KERNEL_ORIGIN[:3] + bytes([origin.FLAG_PATH_UPPER]) + KERNEL_ORIGIN[4:],   # upper origin
    KERNEL_ORIGIN[:3] + bytes([0x80]) + KERNEL_ORIGIN[4:],  # unknown flag
], ids=["short", "version", "magic", "length", "upper", "flag"])
def test_decode_refuses_what_the_kernel_would_not_follow(bad: bytes) -> None:
    assert origin.decode(bad) is None


@needs_root
def test_copy_up_records_the_lower_handle(make_stack, mount_ofs) -> None:
    stack = make_stack([{"f": "file:x", "d/y": "file:y", "s": "symlink:f"}])
    with mount_ofs(stack):
        os.chmod(stack["merged"] / "f", 0o600)
        os.chmod(stack["merged"] / "d/y", 0o600)
        os.chown(stack["merged"] / "s", 0, 0, follow_symlinks=False)
    lower = os.open(stack["lowers"][0], os.O_PATH)
    try:
        for rel in ("f", "d", "d/y", "s"):
            parent, _, name = rel.rpartition("/")
            dir_fd = os.open(stack["lowers"][0] / parent, os.O_PATH) if parent else lower
            try:
                expected = name_to_handle_at(dir_fd, name.encode())
            finally:
                if parent:
                    os.close(dir_fd)
            stored = os.getxattr(stack["upper"] / rel, origin.TRUSTED_ORIGIN,
                                 follow_symlinks=False)
            decoded = origin.decode(stored)
            assert decoded is not None and decoded[1:] == expected, rel
    finally:
        os.close(lower)


@needs_root
@pytest.mark.parametrize("damage", ["lower-removed", "garbage", "wrong-type", "hard-linked"])
def test_an_origin_that_cannot_be_followed_gives_the_upper_inode_number(
        make_stack, mount_ofs, mount_kernel, damage: str) -> None:
    """Lower layers may be replaced between mounts (an origin gone stale) and an xattr may be
    anything: the object is then numbered after its upper inode, as the kernel numbers it,
    and nothing fails."""
    results = {}
    for name, mount in (("kernel", mount_kernel), ("ofs", mount_ofs)):
        stack = make_stack([{"f": "file:x", "other": "dir"}], name=name)
        with mount(stack):
            os.chmod(stack["merged"] / "f", 0o600)
        upper_f, lower_f = stack["upper"] / "f", stack["lowers"][0] / "f"
        if damage == "lower-removed":
            lower_f.unlink()
        elif damage == "garbage":
            os.setxattr(upper_f, origin.TRUSTED_ORIGIN, b"\0\xfb\x03")
        elif damage == "wrong-type":
            lower = os.open(stack["lowers"][0], os.O_PATH)
            try:
                handle_type, handle = name_to_handle_at(lower, b"other")
                uuid = filesystem_uuid(lower)
            finally:
                os.close(lower)
            os.setxattr(upper_f, origin.TRUSTED_ORIGIN, origin.encode(handle_type, handle, uuid))
        else:
            os.link(lower_f, stack["lowers"][0] / "f-link")
        with mount(stack):
            seen = os.lstat(stack["merged"] / "f")
            assert (stack["merged"] / "f").read_bytes() == b"x"
        results[name] = seen.st_ino == os.lstat(upper_f).st_ino
    assert results == {"kernel": True, "ofs": True}
