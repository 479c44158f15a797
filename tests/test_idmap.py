"""uidmapping=/gidmapping= and squash_to_*: ids stored on disk ("host") against the ids
shown and accepted through the mount ("container"), as fuse-overlayfs defines them."""

from __future__ import annotations

import errno
import os

import pytest

from overlayfuse.idmap import OVERFLOW_ID, IdMap
from overlayfuse.options import IdMapping, parse_args


def test_mapping_both_ways() -> None:
    ids = IdMap((IdMapping(0, 1000, 100), IdMapping(100, 5000, 10)))
    assert [ids.to_view(i) for i in (1000, 1099, 5000, 5009)] == [0, 99, 100, 109]
    assert ids.to_view(999) == OVERFLOW_ID and ids.to_view(0) == OVERFLOW_ID
    assert [ids.to_disk(i) for i in (0, 99, 100, 109)] == [1000, 1099, 5000, 5009]
    with pytest.raises(OSError) as caught:
        ids.to_disk(110)
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


def test_mapped_mount(make_stack, mount_ofs) -> None:
    stack = make_stack([{"mine": "file:m", "roots": "file:r", "d/x": "file:x"}])
    lower = stack["lowers"][0]
    os.chown(lower / "mine", 1005, 1006)
    with mount_ofs(stack, uid_mapping=[(0, 1000, 100)], gid_mapping=[(0, 1000, 100)]):
        merged = stack["merged"]
        st = os.stat(merged / "mine")
        assert (st.st_uid, st.st_gid) == (5, 6)
        st = os.stat(merged / "roots")
        assert (st.st_uid, st.st_gid) == (OVERFLOW_ID, OVERFLOW_ID)
        (merged / "d/new").write_text("n")              # created by root: container id 0
        st = os.stat(stack["upper"] / "d/new")
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert os.stat(merged / "d/new").st_uid == 0
        os.chown(merged / "mine", 7, 8)
        assert os.stat(stack["upper"] / "mine").st_uid == 1007
        assert os.stat(merged / "mine").st_gid == 8
        with pytest.raises(OSError) as caught:
            os.chown(merged / "mine", 500, -1)
        assert caught.value.errno == errno.EINVAL


def test_squash_to_uid(make_stack, mount_ofs) -> None:
    stack = make_stack([{"f": "file:f"}])
    with mount_ofs(stack, options=("squash_to_uid=1234", "squash_to_gid=99")):
        st = os.stat(stack["merged"] / "f")
        assert (st.st_uid, st.st_gid) == (1234, 99)
        (stack["merged"] / "g").write_text("g")
        assert os.stat(stack["upper"] / "g").st_uid == 0
