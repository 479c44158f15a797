"""The pytest plugin, registered through the `pytest11` entry point (docs/api.md).

- `overlay`: a factory fixture, `overlay(lowers, upper=None, workdir=None, merged=None,
  **options)`; it mounts and returns a `BaseOverlay`, and unmounts every overlay it made
  when the test ends, however it ends.
- `@pytest.mark.overlayfuse_and_kernel`: run the test twice, with `overlay` mounting
  overlayfuse and then kernel overlayfs; the kernel run is skipped, with the reason, where
  this process cannot mount kernel overlayfs.
- `overlay_kind`: "overlayfuse" or "kernel", the one `overlay` mounts in this run.
- `@pytest.mark.overlayfuse_log_allows(*patterns)`: log records of the daemons `overlay`
  mounted that the test provokes on purpose (any other failure they log fails the test in
  its teardown, see logcheck.py).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from . import logcheck
from .overlay import BaseOverlay, KernelOverlay, Overlay, StrPath

MARKER = "overlayfuse_and_kernel"
KINDS: dict[str, type[BaseOverlay]] = {"overlayfuse": Overlay, "kernel": KernelOverlay}

OverlayFactory = Callable[..., BaseOverlay]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: run the test once on overlayfuse and once on kernel overlayfs "
        "(the `overlay` fixture mounts each in turn; the kernel run is skipped where it "
        "cannot be mounted)")
    config.addinivalue_line(
        "markers", f"{logcheck.MARKER}(*patterns): the overlayfuse daemon may log records "
        "that these regular expressions match (failures the test provokes on purpose)")


def allowed_log_records(node: pytest.Item) -> tuple[str, ...]:
    """The patterns of the test's `overlayfuse_log_allows` markers."""
    return tuple(pattern for marker in node.iter_markers(logcheck.MARKER)
                 for pattern in marker.args)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker(MARKER) is None:
        return
    if "overlay_kind" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.{MARKER} needs "
                                "the `overlay` or `overlay_kind` fixture")
    metafunc.parametrize("overlay_kind", list(KINDS), indirect=True)


@pytest.fixture
def overlay_kind(request: pytest.FixtureRequest) -> str:
    """Which overlay `overlay` mounts: "overlayfuse", or "kernel" in the kernel run of a
    test marked `overlayfuse_and_kernel`."""
    kind: str = getattr(request, "param", "overlayfuse")
    if kind == "kernel":
        reason = KernelOverlay.unavailable()
        if reason is not None:
            pytest.skip(reason)
    return kind


@pytest.fixture
def overlay(overlay_kind: str, request: pytest.FixtureRequest) -> Iterator[OverlayFactory]:
    """overlay(lowers, upper=None, workdir=None, merged=None, **options) mounts an overlay
    and returns it, mounted; `options` are those of `Overlay`. With an upper dir and no
    workdir, a fresh workdir is made beside the upper dir (the kernel wants it on the same
    filesystem) and removed afterwards. Everything is unmounted when the test ends; then a
    failure an overlayfuse daemon logged fails the test, unless the test allows it."""
    log_check = logcheck.LogCheck(allowed_log_records(request.node))
    with contextlib.ExitStack() as cleanup:
        def mount(lowers: Sequence[StrPath], upper: StrPath | None = None,
                  workdir: StrPath | None = None, merged: StrPath | None = None,
                  **options: Any) -> BaseOverlay:
            if upper is not None and workdir is None:
                upper_path = Path(upper)
                workdir = tempfile.mkdtemp(dir=upper_path.parent,
                                           prefix=f".{upper_path.name}.work-")
                cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
            made = KINDS[overlay_kind](lowers, upper, workdir, merged, **options)
            cleanup.enter_context(made)
            log_check.mounted(made)
            return made
        yield mount
    failure = log_check.failure()
    if failure is not None:
        pytest.fail(failure, pytrace=False)
