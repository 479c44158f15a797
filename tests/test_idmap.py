"""uidmapping=/gidmapping= and squash_to_*: in each disk:view:size triple, ids stored on disk
from `disk` show through the mount from `view`, as fuse-overlayfs (and podman, which passes
them) define them."""

from __future__ import annotations

import errno
import os

import pytest

from overlayfuse.idmap import OVERFLOW_ID, IdMap
from overlayfuse.options import IdMapping, parse_args


def test_mapping_both_ways() -> None:
    ids = IdMap((IdMapping(0, 1000, 100), IdMapping(100, 5000, 10)))
    assert [ids.to_view(i) for i in (0, 99, 100, 109)] == [1000, 1099, 5000, 5009]
    assert ids.to_view(110) == OVERFLOW_ID and ids.to_view(1000) == OVERFLOW_ID
    assert [ids.to_disk(i) for i in (1000, 1099, 5000, 5009)] == [0, 99, 100, 109]
    with pytest.raises(OSError) as caught:
        ids.to_disk(999)
    assert caught.value.errno == errno.EINVAL


def test_identity_and_squash() -> None:
    assert IdMap().to_view(1234) == 1234 and IdMap().to_disk(1234) == 1234
    squashed = IdMap(squash_to=0)
    assert squashed.to_view(1234) == 0 and squashed.to_disk(1234) == 1234


def test_podman_keep_id_option_parses() -> None:
    options = parse_args(["-o", "lowerdir=/l,uidmapping=:0:1:1001:1001:0:1:1002:1002:64535,"
                          "gidmapping=0:1:1001,squash_to_gid=7", "/m"])
    assert options.uidmapping == (IdMapping(0, 1, 1001), IdMapping(1001, 0, 1),
                                  IdMapping(1002, 1002, 64535))
    assert options.gidmapping == (IdMapping(0, 1, 1001),)
    assert options.squash_to_gid == 7 and options.squash_to_uid is None
    assert parse_args(["-o", "lowerdir=/l,squash_to_root", "/m"]).squash_to_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown lower files")
def test_mapped_mount(make_stack, mount_ofs) -> None:
    """The issue's own example: with 0:100000:65536 a file stored as 0 shows as 100000, and a
    chown to 100033 through the mount stores 33."""
    stack = make_stack([{"roots": "file:r", "mine": "file:m", "far": "file:f", "d/x": "file:x"}])
    lower = stack["lowers"][0]
    os.chown(lower / "mine", 5, 6)
    os.chown(lower / "far", 70000, 70000)
    mapping = [(0, 100000, 65536)]
    with mount_ofs(stack, uid_mapping=mapping, gid_mapping=mapping):
        merged = stack["merged"]
        assert _owner(merged / "roots") == (100000, 100000)
        assert _owner(merged / "mine") == (100005, 100006)
        assert _owner(merged / "far") == (OVERFLOW_ID, OVERFLOW_ID)
        os.chown(merged / "mine", 100033, 100034)
        assert _owner(stack["upper"] / "mine") == (33, 34)
        assert _owner(merged / "mine") == (100033, 100034)
        with pytest.raises(OSError) as caught:
            os.chown(merged / "mine", 33, -1)       # shown id 33 has no mapping
        assert caught.value.errno == errno.EINVAL
        # Root (shown id 0) has no mapping: what it creates is stored as the overflow id, as
        # fuse-overlayfs does (podman creates /etc/mtab that way, then chowns it).
        (merged / "d/new").write_text("n")
        assert _owner(stack["upper"] / "d/new") == (OVERFLOW_ID, OVERFLOW_ID)
        assert _owner(merged / "d/new") == (100000 + OVERFLOW_ID, 100000 + OVERFLOW_ID)
        os.chown(merged / "d/new", 100000, 100000)
        assert _owner(stack["upper"] / "d/new") == (0, 0)


def _owner(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def test_squash_to_uid(make_stack, mount_ofs) -> None:
    stack = make_stack([{"f": "file:f"}])
    with mount_ofs(stack, options=("squash_to_uid=1234", "squash_to_gid=99")):
        st = os.stat(stack["merged"] / "f")
        assert (st.st_uid, st.st_gid) == (1234, 99)
        (stack["merged"] / "g").write_text("g")
        assert os.stat(stack["upper"] / "g").st_uid == 0
