"""The teardown check of the daemon's log (overlayfuse/logcheck.py), run on inner pytest
sessions: one with this directory's conftest (`every_daemon_log_checked`, every Overlay), one
with the plugin's `overlay` fixture alone. A daemon that logs a traceback fails the test that
mounted it, unless the test allows that record; errnos answered to callers are not errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import needs_fuse

TESTS = Path(__file__).parent

COMMON = '''
import errno
import os
import sys

import pytest

from overlayfuse import Overlay

# The daemon with a bug: every readlink raises, so a readlink request logs a traceback.
BUGGY = """
import os
from overlayfuse.cli import main

def readlink(*args, **kwargs):
    raise RuntimeError("planted readlink bug")

os.readlink = readlink
raise SystemExit(main())
"""


def layers(tmp_path):
    lower = tmp_path / "lower"
    lower.mkdir()
    os.symlink("target", lower / "link")
    (lower / "d").mkdir()
    (lower / "d" / "f").write_text("f")
    (tmp_path / "buggy.py").write_text(BUGGY)
    return lower, [sys.executable, str(tmp_path / "buggy.py")]


def readlink_errno(merged):
    try:
        os.readlink(merged / "link")
    except OSError as e:
        return e.errno
    return 0
'''

INNER = COMMON + '''


def mount(tmp_path, buggy):
    lower, program = layers(tmp_path)
    for name in ("upper", "work", "merged"):
        (tmp_path / name).mkdir()
    return Overlay([lower], tmp_path / "upper", tmp_path / "work", tmp_path / "merged",
                   program=program if buggy else None)


def test_a_traceback_fails_the_test(tmp_path):
    with mount(tmp_path, buggy=True) as overlay:
        assert readlink_errno(overlay.merged) == errno.EIO


@pytest.mark.overlayfuse_log_allows("RuntimeError: planted readlink bug")
def test_an_allowed_traceback_passes(tmp_path):
    with mount(tmp_path, buggy=True) as overlay:
        assert readlink_errno(overlay.merged) == errno.EIO


@pytest.mark.overlayfuse_log_allows("some other bug")
def test_only_the_allowed_records_pass(tmp_path):
    with mount(tmp_path, buggy=True) as overlay:
        assert readlink_errno(overlay.merged) == errno.EIO


@pytest.fixture(scope="module")
def unmounted_later():
    overlays = []
    yield overlays
    for overlay in overlays:
        overlay.unmount()


def test_a_traceback_of_a_daemon_still_mounted_at_the_end_fails_the_test(tmp_path,
                                                                         unmounted_later):
    overlay = mount(tmp_path, buggy=True).mount()
    unmounted_later.append(overlay)
    assert readlink_errno(overlay.merged) == errno.EIO


def test_errnos_answered_are_not_errors(tmp_path):
    with mount(tmp_path, buggy=False) as overlay:
        merged = overlay.merged
        assert readlink_errno(merged) == 0
        for call, expected in ((lambda: os.stat(merged / "missing"), errno.ENOENT),
                               (lambda: os.rmdir(merged / "d"), errno.ENOTEMPTY),
                               (lambda: os.mkdir(merged / "d"), errno.EEXIST),
                               (lambda: os.getxattr(merged / "d", "user.none"), errno.ENODATA)):
            with pytest.raises(OSError) as raised:
                call()
            assert raised.value.errno == expected

'''


@needs_fuse
def test_the_teardown_check_fails_only_unexpected_errors(pytester: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("errors"), outcomes.get("failed")) == \
        (5, 3, None), result.stdout.str()
    errors = {line.split("::")[1].split()[0] for line in result.stdout.lines
              if line.startswith("ERROR ")}
    assert errors == {"test_a_traceback_fails_the_test", "test_only_the_allowed_records_pass",
                      "test_a_traceback_of_a_daemon_still_mounted_at_the_end_fails_the_test"}
    text = result.stdout.str()
    assert "RuntimeError: planted readlink bug" in text
    assert "@pytest.mark.overlayfuse_log_allows" in text


PLUGIN_INNER = COMMON + '''

def test_a_traceback_fails_the_test(overlay, tmp_path):
    lower, program = layers(tmp_path)
    assert readlink_errno(overlay([lower], program=program).merged) == errno.EIO


@pytest.mark.overlayfuse_log_allows("RuntimeError: planted readlink bug")
def test_an_allowed_traceback_passes(overlay, tmp_path):
    lower, program = layers(tmp_path)
    assert readlink_errno(overlay([lower], program=program).merged) == errno.EIO


def test_errnos_answered_are_not_errors(overlay, tmp_path):
    lower, _ = layers(tmp_path)
    merged = overlay([lower]).merged
    assert readlink_errno(merged) == 0
    with pytest.raises(FileNotFoundError):
        os.stat(merged / "missing")
'''


@needs_fuse
def test_the_plugin_fails_only_unexpected_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=PLUGIN_INNER)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("errors"), outcomes.get("failed")) == \
        (3, 1, None), result.stdout.str()
    result.stdout.fnmatch_lines(["ERROR test_inner.py::test_a_traceback_fails_the_test*"])
    assert "RuntimeError: planted readlink bug" in result.stdout.str()
