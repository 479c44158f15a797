"""The public API (`Overlay`, `KernelOverlay`, `OverlayError`) and the pytest plugin: mounts
come up live, failures carry the mounter's own message, and every way out of a `with` block
(normal, exception, Ctrl-C, a failing test) unmounts and reaps the daemon."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import needs_fuse
from hardening import errno_of
from overlayfuse import BaseOverlay, KernelOverlay, Overlay, OverlayError, mounts


def _layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper, work = (tmp_path / name for name in ("lower", "upper", "work"))
    for path in (lower / "d", upper, work):
        path.mkdir(parents=True)
    (lower / "d/f").write_text("lower")
    return lower, upper, work


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_overlay_mounts_until_the_block_ends(tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    with Overlay([lower], upper, work) as overlay:
        merged = overlay.merged
        assert mounts.is_mounted(merged) and overlay.mounted
        assert (merged / "d/f").read_text() == "lower"
        (merged / "d/f").write_text("upper")
        process = overlay.process
        assert process is not None and process.poll() is None
    assert (upper / "d/f").read_text() == "upper"
    assert (lower / "d/f").read_text() == "lower"
    assert not overlay.mounted and not mounts.is_mounted(merged)
    assert process.returncode == 0                 # reaped, after a clean unmount
    assert not merged.exists()                     # the mount point it made is removed


def test_a_refused_mount_raises_with_the_daemons_message(tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    merged.mkdir()
    overlay = Overlay([tmp_path / "missing"], merged=merged)
    with pytest.raises(OverlayError) as raised:
        overlay.mount()
    assert raised.value.status == 1
    assert raised.value.message == (f"overlayfuse: lowerdir does not exist: {tmp_path}/missing "
                                    "(No such file or directory)")
    assert str(merged) in str(raised.value)
    assert overlay.process is not None and overlay.process.returncode == 1
    assert not overlay.mounted and not mounts.is_mounted(merged)


def test_a_bad_option_is_the_daemons_usage_error(tmp_path: Path) -> None:
    lower, _, _ = _layers(tmp_path)
    with pytest.raises(OverlayError) as raised:
        Overlay([lower], options=["timeout=soon"]).mount()
    assert raised.value.status == 2
    assert "timeout" in raised.value.message and "soon" in raised.value.message


def test_an_exception_in_the_block_still_unmounts(tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    (tmp_path / "merged").mkdir()
    overlay = Overlay([lower], upper, work, tmp_path / "merged")
    with pytest.raises(ZeroDivisionError):
        with overlay:
            assert os.listdir(overlay.merged) == ["d"]
            1 / 0
    assert not mounts.is_mounted(overlay.merged)
    assert overlay.merged.is_dir()                 # a mount point it was given stays
    assert overlay.process is not None and overlay.process.returncode == 0


# Python raises KeyboardInterrupt on SIGINT only if SIGINT was not ignored when it started, and
# a shell without job control starts a background job (`pytest ... &`) with SIGINT ignored:
# the script then slept through the signal and left its daemon mounted. Its handler is set as
# in a terminal.
CTRL_C = """
import signal, sys, time
from overlayfuse import Overlay
signal.signal(signal.SIGINT, signal.default_int_handler)
with Overlay([sys.argv[1]]) as overlay:
    print(overlay.merged, overlay.pid, flush=True)
    time.sleep(60)
"""


@needs_fuse
def test_ctrl_c_unmounts_and_reaps_the_daemon(tmp_path: Path) -> None:
    lower, _, _ = _layers(tmp_path)
    script = subprocess.Popen([sys.executable, "-c", CTRL_C, str(lower)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert script.stdout is not None
        merged, pid = script.stdout.readline().split()
        assert mounts.is_mounted(merged)
        os.killpg(script.pid, signal.SIGINT)       # what a terminal sends on Ctrl-C
        _, stderr = script.communicate(timeout=30)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert "KeyboardInterrupt" in stderr
    assert not mounts.is_mounted(merged)
    assert _gone(int(pid)), "the daemon is still running"
    assert not Path(merged).exists()


def test_options_reach_the_daemon(tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    log = tmp_path / "daemon.log"
    with Overlay([lower], upper, work, read_only=True, timeout=0, log_file=log,
                 debug=True) as overlay:
        assert errno_of(lambda: (overlay.merged / "new").write_text("x")) == errno.EROFS
        assert (overlay.merged / "d/f").read_text() == "lower"
    assert os.listdir(upper) == [] and os.listdir(work) == []
    text = log.read_text()
    assert "DEBUG" in text and "lookup" in text


def test_upper_needs_a_workdir(tmp_path: Path) -> None:
    lower, upper, _ = _layers(tmp_path)
    with pytest.raises(ValueError):
        Overlay([lower], upper)


@pytest.mark.parametrize("kind", [Overlay, KernelOverlay])
def test_both_kinds_take_the_same_arguments(kind: type[BaseOverlay], kernel_available: None,
                                            tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    with kind([lower]) as read_only:            # one lower dir is enough for both
        assert os.listdir(read_only.merged / "d") == ["f"]
        assert errno_of(lambda: os.mkdir(read_only.merged / "x")) == errno.EROFS
    with kind([lower], upper, work, volatile=True) as overlay:
        os.rename(overlay.merged / "d/f", overlay.merged / "d/g")
        assert os.listdir(overlay.merged / "d") == ["g"]
    assert (upper / "d/g").read_text() == "lower"
    assert not mounts.is_mounted(overlay.merged)


def test_a_refused_kernel_mount_raises_with_mounts_message(kernel_available: None,
                                                          tmp_path: Path) -> None:
    _, upper, work = _layers(tmp_path)
    with pytest.raises(OverlayError) as raised:
        KernelOverlay([tmp_path / "missing"], upper, work).mount()
    assert raised.value.status not in (None, 0)
    assert raised.value.message.startswith("mount:")


PLUGIN_TESTS = """
import os
import pytest

@pytest.mark.overlayfuse_and_kernel
def test_each(overlay, overlay_kind, tmp_path):
    (tmp_path / "lower").mkdir()
    (tmp_path / "lower/f").write_text(overlay_kind)
    ov = overlay([tmp_path / "lower"])
    assert (ov.merged / "f").read_text() == overlay_kind
    assert type(ov).__name__ == {"overlayfuse": "Overlay", "kernel": "KernelOverlay"}[overlay_kind]

def test_fails_while_mounted(overlay, tmp_path):
    (tmp_path / "lower").mkdir()
    (tmp_path / "upper").mkdir()
    ov = overlay([tmp_path / "lower"], tmp_path / "upper")
    with open(os.environ["MOUNTED_LOG"], "a") as log:
        print(ov.merged, ov.pid, file=log)
    assert False, "failing on purpose"
"""

NO_KERNEL = """
from overlayfuse import KernelOverlay
KernelOverlay.unavailable = staticmethod(lambda: "no kernel overlayfs in this test")
"""


def test_the_plugin_parametrises_and_cleans_up(pytester: pytest.Pytester, kernel_available: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    log = pytester.path / "mounted.log"
    monkeypatch.setenv("MOUNTED_LOG", str(log))
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_each?overlayfuse? PASSED*", "*test_each?kernel? PASSED*"])
    merged, pid = log.read_text().split()
    assert not mounts.is_mounted(merged)
    assert _gone(int(pid))


@needs_fuse
def test_the_kernel_run_is_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=PLUGIN_TESTS.split("def test_fails")[0])
    pytester.makeconftest(NO_KERNEL)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*no kernel overlayfs in this test*"])


def test_the_marker_without_the_fixture_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=textwrap.dedent("""
        import pytest

        @pytest.mark.overlayfuse_and_kernel
        def test_nothing():
            pass
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*overlayfuse_and_kernel needs the `overlay`*"])
