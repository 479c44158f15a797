from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from layerspec import build_stack
from overlayfuse import KernelOverlay, Overlay, logcheck, mounts
from overlayfuse.errors import MountError
from overlayfuse.layers import check_environment
from overlayfuse.pytest_plugin import allowed_log_records

pytest_plugins = ["pytester"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@functools.cache
def fuse_unavailable() -> str | None:
    """None if this process can mount overlayfuse, else why not: the command's own check of
    /dev/fuse (and of fusermount3 when not root), made once per session."""
    try:
        check_environment()
    except MountError as e:
        return f"mounts overlayfuse, which cannot be mounted here: {e}"
    return None


@pytest.fixture
def fuse_available() -> None:
    reason = fuse_unavailable()
    if reason is not None:
        pytest.skip(reason)


needs_fuse = pytest.mark.skipif(fuse_unavailable() is not None, reason=fuse_unavailable() or "")
"""For tests that mount overlayfuse other than through `Overlay` (the command, a script, an
inner pytest run): `Overlay.mount` skips by itself (see `every_daemon_log_checked`)."""


@pytest.fixture
def make_stack(tmp_path: Path) -> Callable[..., dict]:
    """make_stack(lowers, upper=None, name="s") lays out a stack under tmp_path/name."""
    def make(lowers: list[dict[str, str]], upper: dict[str, str] | None = None,
             name: str = "s") -> dict:
        return build_stack(tmp_path / name, lowers, upper)
    return make


@pytest.fixture
def mount_ofs(tmp_path: Path, fuse_available: None) -> Callable[..., Overlay]:
    """mount_ofs(stack, read_only=False, **options) gives an Overlay of stack["merged"]
    (without the upper dir when read_only), to use in a `with`; `options` are Overlay's."""
    def mount(stack: dict, read_only: bool = False, **options: Any) -> Overlay:
        upper, work = (None, None) if read_only else (stack["upper"], stack["work"])
        return Overlay(stack["lowers"], upper, work, stack["merged"],
                       log_file=tmp_path / "overlayfuse.log", **options)
    return mount


@pytest.fixture
def kernel_available() -> None:
    reason = KernelOverlay.unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def mount_kernel(kernel_available: None) -> Callable[..., KernelOverlay]:
    def mount(stack: dict, read_only: bool = False, **options: Any) -> KernelOverlay:
        upper, work = (None, None) if read_only else (stack["upper"], stack["work"])
        return KernelOverlay(stack["lowers"], upper, work, stack["merged"], **options)
    return mount


@pytest.fixture
def both(make_stack: Callable[..., dict], mount_ofs: Callable[..., Overlay],
         mount_kernel: Callable[..., KernelOverlay]
         ) -> Callable[..., contextlib.AbstractContextManager]:
    """both(lowers, upper=None, read_only=False, options=()) builds the same stack twice and
    mounts kernel overlayfs on one and overlayfuse on the other, each with the mount
    `options`; yields (kernel_stack, ofs_stack)."""
    @contextlib.contextmanager
    def run(lowers: list[dict[str, str]], upper: dict[str, str] | None = None,
            read_only: bool = False, options: Sequence[str] = ()
            ) -> Iterator[tuple[dict, dict]]:
        kernel_stack = make_stack(lowers, upper, name="kernel")
        ofs_stack = make_stack(lowers, upper, name="ofs")
        with mount_kernel(kernel_stack, read_only=read_only, options=list(options)), \
                mount_ofs(ofs_stack, read_only=read_only, options=list(options)):
            yield kernel_stack, ofs_stack
    return run


@pytest.fixture(autouse=True, scope="session")
def no_leaked_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Only this session's temporary tree: other test sessions may be running on the machine
    # at the same time, and their mounts are theirs.
    base = str(tmp_path_factory.getbasetemp().resolve()) + "/"
    yield
    with open("/proc/self/mountinfo") as mountinfo:
        targets = [mounts._unescape(line.split()[4]) for line in mountinfo]
    leaked = [path for path in targets if path.startswith(base)]
    for path in leaked:
        mounts.unmount(path)
    assert not leaked, f"tests left mounts behind: {leaked}"


# ---- lower layers are never modified (hardening issue, item 7) ------------------------------

def _layer_digest(root: Path, skip: set[tuple[int, int]]) -> str:
    """A digest of everything in a layer but access times: names, types, modes, owners, sizes,
    mtime/ctime, data, symlink targets, device numbers and every xattr (trusted.* included).
    Directories in `skip` (an upper or work dir nested in the layer) and other filesystems
    mounted inside it (not part of the layer, as for kernel overlayfs) are left out; files
    are read without moving their atime."""
    import hashlib
    import stat as stat_module
    digest = hashlib.sha256()
    layer_dev = os.lstat(root).st_dev

    def add(path: Path, rel: str) -> bool:
        st = os.lstat(path)
        if st.st_dev != layer_dev:
            return False
        if stat_module.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in skip:
            return False
        digest.update(repr((rel, st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
                            st.st_mtime_ns, st.st_ctime_ns, st.st_rdev,
                            st.st_size if not stat_module.S_ISDIR(st.st_mode) else 0)).encode())
        try:
            for name in sorted(os.listxattr(path, follow_symlinks=False)):
                digest.update(repr((name, os.getxattr(path, name, follow_symlinks=False))).encode())
        except OSError:
            pass
        if stat_module.S_ISREG(st.st_mode) and st.st_size <= 64 << 20:
            # (A bigger file is covered by its ctime, which any change to it moves.)
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOATIME), "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        elif stat_module.S_ISLNK(st.st_mode):
            digest.update(os.fsencode(os.readlink(path)))
        return stat_module.S_ISDIR(st.st_mode)

    add(root, ".")
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            if add(full, str(full.relative_to(root))) and name in dirnames:
                keep.append(name)
        dirnames[:] = keep
    return digest.hexdigest()


@pytest.fixture(autouse=True)
def lowers_never_modified() -> Iterator[None]:
    """Every Overlay (mount_ofs, both, and direct uses): each lower layer is hashed at mount
    time and again after the unmount; a difference fails the test (in its teardown). Access
    times are the only thing allowed to change."""
    real_mount, real_unmount = Overlay.mount, Overlay.unmount
    digests: dict[int, tuple[set[tuple[int, int]], dict[Path, str]]] = {}
    changed: list[str] = []

    def ids(*paths: Path | None) -> set[tuple[int, int]]:
        found = set()
        for path in paths:
            with contextlib.suppress(OSError, TypeError):
                st = os.stat(path)  # type: ignore[arg-type]
                found.add((st.st_dev, st.st_ino))
        return found

    def mount(overlay: Overlay) -> Overlay:
        skip = ids(overlay.upper, overlay.workdir)
        before = {}
        for lower in overlay.lowers:
            with contextlib.suppress(OSError):
                before[lower] = _layer_digest(lower, skip)
        digests[id(overlay)] = (skip, before)
        try:
            return real_mount(overlay)  # type: ignore[return-value]
        except BaseException:
            compare(overlay)            # a refused mount must not have written either
            raise

    def unmount(overlay: Overlay) -> None:
        try:
            real_unmount(overlay)
        finally:
            compare(overlay)

    def compare(overlay: Overlay) -> None:
        skip, before = digests.pop(id(overlay), (set(), {}))
        for lower, digest in before.items():
            if _layer_digest(lower, skip) != digest:
                changed.append(str(lower))

    # Patched by hand, not with the monkeypatch fixture: that would make the test's own
    # monkeypatch undo its patches only after the test's other fixtures were torn down.
    Overlay.mount, Overlay.unmount = mount, unmount  # type: ignore[method-assign]
    try:
        yield
    finally:
        Overlay.mount, Overlay.unmount = real_mount, real_unmount  # type: ignore[method-assign]
    assert not changed, f"lower layers were modified while mounted: {changed}"


# ---- no unexpected errors in the daemon's log (issue 13, item 4) ---------------------------

@pytest.fixture(autouse=True)
def every_daemon_log_checked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every Overlay (mount_ofs, both, direct uses; the plugin's `overlay` checks its own the
    same way): what its daemon wrote is read after the unmount, or at the end of the test if
    it is still mounted, and a failure it reports (see overlayfuse/logcheck.py) fails the
    test in its teardown, unless the test's `overlayfuse_log_allows` marker lists it. Where
    overlayfuse cannot be mounted, a test that mounts it is skipped with the reason."""
    log_check = logcheck.LogCheck(allowed_log_records(request.node))
    real_mount, real_unmount = Overlay.mount, Overlay.unmount

    def mount(overlay: Overlay) -> Overlay:
        reason = fuse_unavailable()
        if reason is not None:
            pytest.skip(reason)
        mounted: Overlay = real_mount(overlay)  # type: ignore[assignment]
        log_check.mounted(overlay)
        return mounted

    def unmount(overlay: Overlay) -> None:
        try:
            real_unmount(overlay)
        finally:
            log_check.unmounted(overlay)

    Overlay.mount, Overlay.unmount = mount, unmount  # type: ignore[method-assign]
    try:
        yield
    finally:
        Overlay.mount, Overlay.unmount = real_mount, real_unmount  # type: ignore[method-assign]
    failure = log_check.failure()
    assert failure is None, failure
