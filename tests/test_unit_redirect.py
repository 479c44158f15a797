"""The redirect format (overlayfuse.redirect) without a mount."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from overlayfuse import redirect


@pytest.mark.parametrize("value", [b"d1", b"/a/d1", b"/x", b"/a/b/c/d"])
def test_redirects_the_kernel_accepts(value: bytes) -> None:
    assert redirect.check(value) == value


@pytest.mark.parametrize("value", [b"", b"a/b", b"/", b"/a//b", b"/a/", b"//a", b"a\0b"])
def test_redirects_the_kernel_refuses(value: bytes) -> None:
    with pytest.raises(OSError) as info:
        redirect.check(value)
    assert info.value.errno == errno.EINVAL


def test_absolute_redirect_from_the_ancestors() -> None:
    # (name, redirect) from the dir up to the root's child
    assert redirect.absolute([(b"d3", None), (b"b", None)]) == b"/b/d3"
    assert redirect.absolute([(b"d2", b"d1"), (b"a", None)]) == b"/a/d1"
    assert redirect.absolute([(b"y", None), (b"sub", None), (b"d3", b"/a/d1"),
                              (b"b", b"zz")]) == b"/a/d1/sub/y"
    assert redirect.absolute([(b"b2", b"b")]) == b"/b"


def test_a_redirect_longer_than_redirect_max_is_exdev() -> None:
    chain = [(b"n" * 100, None)] * 3
    with pytest.raises(OSError) as info:
        redirect.absolute(chain)
    assert info.value.errno == errno.EXDEV
    assert len(redirect.absolute([(b"n" * 100, None)] * 2)) == 202


def test_relative_redirect_keeps_the_one_it_has() -> None:
    assert redirect.relative(b"d2", None) == b"d2"
    assert redirect.relative(b"d2", b"d1") == b"d1"


def test_read_and_write_on_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    fd = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        assert redirect.read(fd) is None
        prefix = b"trusted.overlay." if os.geteuid() == 0 else b"user.overlay."
        redirect.write((fd, None), prefix, b"/a/d1")
        assert redirect.read(fd) == b"/a/d1"
        parent = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
        try:
            assert redirect.read(parent, b"d") == b"/a/d1"
        finally:
            os.close(parent)
        os.setxattr(tmp_path / "d", prefix + b"redirect", b"a/b")
        with pytest.raises(OSError) as info:
            redirect.read(fd)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
