"""The read path, rule by rule from behaviour.md: "Layers and lookup", "readdir",
"Attributes", "xattrs" and "Read-only mounts".

Wherever kernel overlayfs knows the rule, the same stack is built twice and mounted once by the
kernel and once by overlayfuse, and what real syscalls see through both mounts is compared.
Forms the kernel does not know (OCI `.wh.NAME` whiteouts, `.wh..wh..opq`, user.overlay.opaque
in trusted mode) are translated into the kernel's own form for the kernel's copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerspec import build_layer, raw_snapshot, snapshot
from overlayfuse import KernelOverlay, Overlay, capabilities, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

try:
    from overlayfuse.ops import Operations as _Operations
    # The write path has landed once the handlers exist (pyfuse3's defaults answer ENOSYS).
    WRITE_PATH = all(name in vars(_Operations) for name in ("create", "unlink", "mkdir"))
except ImportError:  # pragma: no cover - no FUSE runtime
    WRITE_PATH = False

needs_write_path = pytest.mark.skipif(not WRITE_PATH, reason="the write path has not landed yet")


# ---- helpers ---------------------------------------------------------------------------------

KERNEL_FORM = {"oci-whiteout": "whiteout", "oci-opaque": "opaque", "user-opaque": "opaque"}


def kernel_spec(spec: dict[str, str] | None) -> dict[str, str] | None:
    """The same layer in the only forms kernel overlayfs (trusted mode) understands."""
    if spec is None:
        return None
    return {rel: KERNEL_FORM.get(what, what) for rel, what in spec.items()}


@pytest.fixture
def pair(make_stack: Callable[..., dict], mount_kernel: Callable[..., object],
         mount_ofs: Callable[..., object]) -> Callable[..., contextlib.AbstractContextManager]:
    """pair(lowers, upper=None, read_only=False, prepare=None) builds the stack twice, the
    kernel's copy translated to kernel forms, runs prepare(stack) on both, mounts both and
    yields (kernel_stack, ofs_stack)."""
    @contextlib.contextmanager
    def run(lowers: list[dict[str, str]], upper: dict[str, str] | None = None,
            read_only: bool = False, prepare: Callable[[dict], None] | None = None
            ) -> Iterator[tuple[dict, dict]]:
        kernel = make_stack([kernel_spec(s) for s in lowers], kernel_spec(upper), name="kernel")
        ofs = make_stack(lowers, upper, name="ofs")
        if prepare is not None:
            prepare(kernel)
            prepare(ofs)
        with mount_kernel(kernel, read_only=read_only), mount_ofs(ofs, read_only=read_only):
            yield kernel, ofs
    return run


def read(path: Path) -> str:
    return path.read_text()


def errno_of(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as e:
        return e.errno
    return 0


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_uint16), ("d_type", ctypes.c_uint8),
                ("d_name", ctypes.c_char * 256)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.opendir.restype = ctypes.c_void_p
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent)
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.seekdir.restype = None
_libc.closedir.argtypes = [ctypes.c_void_p]
_libc.closedir.restype = ctypes.c_int


class DirStream:
    """opendir/readdir/telldir/seekdir from libc: the raw entries, `.` and `..` included."""

    def __init__(self, path: Path) -> None:
        self._dirp = _libc.opendir(os.fsencode(path))
        if not self._dirp:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))

    def __enter__(self) -> DirStream:
        return self

    def __exit__(self, *exc: object) -> None:
        _libc.closedir(self._dirp)

    def read(self) -> tuple[str, int, int] | None:
        """(name, d_ino, d_type) of the next entry, None at the end."""
        ctypes.set_errno(0)
        entry = _libc.readdir64(self._dirp)
        if not entry:
            err = ctypes.get_errno()
            if err:
                raise OSError(err, os.strerror(err))
            return None
        d = entry.contents
        return os.fsdecode(d.d_name), d.d_ino, d.d_type

    def read_all(self) -> list[tuple[str, int, int]]:
        entries = []
        while (entry := self.read()) is not None:
            entries.append(entry)
        return entries

    def tell(self) -> int:
        return _libc.telldir(self._dirp)

    def seek(self, pos: int) -> None:
        _libc.seekdir(self._dirp, pos)


def raw_names(path: Path) -> list[str]:
    with DirStream(path) as stream:
        return [name for name, _, _ in stream.read_all()]


def typed_listing(path: Path) -> list[tuple[str, int]]:
    """Sorted (name, d_type) of every entry, `.` and `..` included."""
    with DirStream(path) as stream:
        return sorted((name, d_type) for name, _, d_type in stream.read_all())


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        mounts.unmount(path)


# ---- layers and lookup -----------------------------------------------------------------------

THREE_LOWERS = [
    {"a": "file:L0", "b/x": "file:L0x", "e": "file:L0e"},
    {"a": "file:L1", "c": "file:L1", "b/y": "file:L1y", "b/x": "file:L1x"},
    {"a": "file:L2", "c": "file:L2", "d": "file:L2", "b/z": "file:L2z", "b/x": "file:L2x",
     "b/y": "file:L2y", "e": "file:L2e"},
]


@pytest.mark.parametrize("with_upper", [False, True], ids=["no-upper-entries", "upper"])
def test_layer_precedence_over_three_lowers(pair, with_upper: bool) -> None:
    upper = {"a": "file:U", "b/x": "file:Ux"} if with_upper else None
    with pair(THREE_LOWERS, upper) as (kernel, ofs):
        merged = ofs["merged"]
        assert read(merged / "a") == ("U" if with_upper else "L0")
        assert read(merged / "b/x") == ("Ux" if with_upper else "L0x")
        assert read(merged / "b/y") == "L1y"
        assert read(merged / "b/z") == "L2z"
        assert read(merged / "c") == "L1"
        assert read(merged / "d") == "L2"
        assert read(merged / "e") == "L0e"
        assert sorted(os.listdir(merged / "b")) == ["x", "y", "z"]
        assert snapshot(merged) == snapshot(kernel["merged"])


WHITEOUT_CASES = {
    "top-lower-hides": (
        [{"a": "{w}", "d": "{w}", "keep": "file:k"},
         {"a": "file:a", "d/f": "file:f", "keep2": "file:k2"}], None),
    "middle-lower-hides-only-below": (
        [{"a": "file:top"}, {"a": "{w}", "b": "{w}"}, {"a": "file:bottom", "b": "file:b"}],
        None),
    "upper-hides-all-lowers": (
        [{"e": "file:e0", "d/x": "file:x"}, {"e": "file:e1", "f": "file:f1"}],
        {"e": "{w}", "d": "{w}", "nothing-below": "{w}", "u": "file:u"}),
    "inside-merged-dir": (
        [{"d/x": "{w}", "d/sub/y": "{w}", "d/keep": "file:k"},
         {"d/x": "file:x", "d/sub/y": "file:y", "d/sub/z": "file:z", "d/other": "file:o"}],
        {"d/other": "{w}"}),
}


def _whiteouts(spec: dict[str, str] | None, form: str) -> dict[str, str] | None:
    if spec is None:
        return None
    return {rel: form if what == "{w}" else what for rel, what in spec.items()}


@pytest.mark.parametrize("form", ["whiteout", "oci-whiteout"])
@pytest.mark.parametrize("case", sorted(WHITEOUT_CASES))
def test_whiteouts_hide_lower_names(pair, case: str, form: str) -> None:
    lowers, upper = WHITEOUT_CASES[case]
    lowers = [_whiteouts(spec, form) for spec in lowers]
    upper = _whiteouts(upper, form)
    with pair(lowers, upper) as (kernel, ofs):
        merged = ofs["merged"]
        expected = snapshot(kernel["merged"])
        assert snapshot(merged) == expected
        # Whited-out names are gone for lookups too, and no marker shows anywhere.
        hidden = {rel for spec in [*lowers, upper or {}] for rel, what in spec.items()
                  if what == form}
        for rel in hidden:
            if rel not in expected:
                assert errno_of(lambda: os.lstat(merged / rel)) == errno.ENOENT, rel
        assert not any(Path(rel).name.startswith(".wh.") for rel in snapshot(merged))


XWHITEOUT_LOWERS = [
    {"d": "xwhiteouts-dir", "d/a": "xwhiteout", "d/keep": "file:k",
     "d/sub": "xwhiteouts-dir", "d/sub/b": "xwhiteout",
     "full": "xwhiteouts-dir", "full/c": "file:data"},  # not empty: a file (xattr below)
    {"d/a": "file:a", "d/x": "file:x", "d/sub/b": "file:b", "d/sub/y": "file:y",
     "full/c": "file:c"}]


def test_xattr_whiteouts_in_lower_layers(pair) -> None:
    """Linux >= 6.7: in a lower dir marked opaque=x, an empty file with overlay.whiteout is
    a whiteout (how overlays nest); a file that is not empty is not."""
    def mark_full_file(stack: dict) -> None:
        os.setxattr(stack["lowers"][0] / "full/c", "trusted.overlay.whiteout", b"")
    with pair(XWHITEOUT_LOWERS, prepare=mark_full_file) as (kernel, ofs):
        merged = ofs["merged"]
        expected = snapshot(kernel["merged"])
        assert snapshot(merged) == expected
        assert sorted(os.listdir(merged / "d")) == ["keep", "sub", "x"]
        for rel in ("d/a", "d/sub/b"):
            assert errno_of(lambda: os.lstat(merged / rel)) == errno.ENOENT, rel
        assert read(merged / "full/c") == "data"
        assert sorted(os.listxattr(merged / "d")) == sorted(os.listxattr(kernel["merged"] / "d"))


@needs_write_path
@pytest.mark.parametrize("below", ["hides-a-file", "hides-nothing", "chardev"])
def test_rmdir_of_a_dir_holding_xattr_whiteouts(pair, below: str) -> None:
    """The kernel's rmdir counts a lower xattr whiteout as an entry (ENOTEMPTY) although the
    dir lists empty; a chardev whiteout in the same place does not count."""
    form = "whiteout" if below == "chardev" else "xwhiteout"
    marked = "dir" if below == "chardev" else "xwhiteouts-dir"
    bottom = {"d/a": "file:a"} if below != "hides-nothing" else {"d": "dir"}
    with pair([{"d": marked, "d/a": form}, bottom]) as (kernel, ofs):
        outcomes = [errno_of(lambda: os.rmdir(stack["merged"] / "d")) for stack in (kernel, ofs)]
        assert outcomes[1] == outcomes[0]
        assert outcomes[0] == (0 if below == "chardev" else errno.ENOTEMPTY)


def test_an_xattr_whiteout_outside_a_marked_dir_is_a_file(ofs_only) -> None:
    """The kernel lists such a file but, once it has met a marked dir in that layer, fails
    its lookup with ENOENT; overlayfuse shows it as the empty file it is (docs/behaviour.md)."""
    with ofs_only([{"plain/a": "xwhiteout", "marked": "xwhiteouts-dir"},
                   {"plain/a": "file:pa"}]) as merged:
        assert os.listdir(merged / "plain") == ["a"]
        assert read(merged / "plain/a") == ""


@pytest.fixture
def ofs_only(make_stack: Callable[..., dict], mount_ofs: Callable[..., object]
             ) -> Callable[..., contextlib.AbstractContextManager]:
    """ofs_only(lowers, upper=None) mounts overlayfuse alone; yields the merged path."""
    @contextlib.contextmanager
    def run(lowers: list[dict[str, str]], upper: dict[str, str] | None = None
            ) -> Iterator[Path]:
        stack = make_stack(lowers, upper, name="ofs-only")
        with mount_ofs(stack):
            yield stack["merged"]
    return run


def test_oci_whiteout_beside_the_real_name_in_the_same_layer(ofs_only) -> None:
    """OCI: a `.wh.NAME` only hides NAME in the layers below; a NAME in its own layer wins.
    The kernel has no such form: asserted directly."""
    lowers = [{"a": "file:same-layer", ".wh.a": "file:", "b": "oci-whiteout"},
              {"a": "file:below", "b": "file:b", "c": "file:c"}]
    with ofs_only(lowers) as merged:
        assert read(merged / "a") == "same-layer"
        assert sorted(os.listdir(merged)) == ["a", "c"]
        assert errno_of(lambda: os.lstat(merged / ".wh.a")) == errno.ENOENT
        assert errno_of(lambda: os.lstat(merged / "b")) == errno.ENOENT


MARKERS = {   # form: (the layer that holds it, the marker's own path)
    "oci-opaque": ({"op": "oci-opaque", "op/keep": "file:k"}, "op/.wh..wh..opq"),
    "oci-whiteout": ({"gone": "oci-whiteout"}, ".wh.gone"),
    "whiteout": ({"chr": "whiteout"}, "chr"),
    "xwhiteout": ({"xw": "xwhiteouts-dir", "xw/x": "xwhiteout", "xw/keep": "file:k"}, "xw/x"),
}


@pytest.mark.parametrize("layer", ["upper", "top-lower", "bottom-lower"])
@pytest.mark.parametrize("form", sorted(MARKERS))
def test_no_marker_is_reachable_by_name(ofs_only, layer: str, form: str) -> None:
    """Markers are hidden from lookup as from readdir, in every layer: a marker's own name
    says ENOENT to every call, as a name that does not exist does."""
    if form == "xwhiteout" and layer == "upper":
        pytest.skip("an upper xattr whiteout is a file (docs/behaviour.md)")
    marked, rel = MARKERS[form]
    filler = {"other": "file:o"}
    lowers, upper = {"upper": ([filler], marked),
                     "top-lower": ([marked, filler], None),
                     "bottom-lower": ([filler, marked], None)}[layer]
    with ofs_only(lowers, upper) as merged:
        path = merged / rel
        calls = {"lstat": lambda: os.lstat(path), "stat": lambda: os.stat(path),
                 "open": lambda: os.close(os.open(path, os.O_RDONLY)),
                 "listxattr": lambda: os.listxattr(path, follow_symlinks=False),
                 "readlink": lambda: os.readlink(path),
                 "chmod": lambda: os.chmod(path, 0o644)}
        for call, act in calls.items():
            assert errno_of(act) == errno.ENOENT, (call, path)
        assert not any(Path(r).name.startswith(".wh.") for r in snapshot(merged))


OPAQUE_CASES = {
    "top-lower": ([{"d": "{o}", "d/new": "file:n"},
                   {"d/old": "file:o", "d/sub/x": "file:x"}], None),
    "upper": ([{"d/l0": "file:0"}, {"d/l1": "file:1"}], {"d": "{o}", "d/u": "file:u"}),
    "middle-of-three": ([{"d/a": "file:a"}, {"d": "{o}", "d/b": "file:b"},
                         {"d/c": "file:c", "d/b": "file:old-b"}], None),
    "nested": ([{"d/e": "{o}", "d/e/n": "file:n", "d/top": "file:t"},
                {"d/e/o": "file:o", "d/bottom": "file:b"}], None),
    "lowest-layer-has-no-effect": ([{"d/a": "file:a"}, {"d": "{o}", "d/b": "file:b"}],
                                   {"d/u": "file:u"}),
    "only-layer": ([{"d": "{o}", "d/b": "file:b"}], None),
}


@pytest.mark.parametrize("form", ["opaque", "user-opaque", "oci-opaque"])
@pytest.mark.parametrize("case", sorted(OPAQUE_CASES))
def test_opaque_directories(pair, case: str, form: str) -> None:
    lowers, upper = OPAQUE_CASES[case]
    lowers = [{rel: form if what == "{o}" else what for rel, what in s.items()} for s in lowers]
    if upper is not None:
        upper = {rel: form if what == "{o}" else what for rel, what in upper.items()}
    with pair(lowers, upper) as (kernel, ofs):
        merged = ofs["merged"]
        assert snapshot(merged) == snapshot(kernel["merged"])
        assert ".wh..wh..opq" not in raw_names(merged / "d")
        listing = set(os.listdir(merged / "d"))
        if case == "top-lower":
            assert listing == {"new"}
        elif case == "middle-of-three":
            assert listing == {"a", "b"} and read(merged / "d/b") == "b"
        elif case == "lowest-layer-has-no-effect":
            assert listing == {"a", "b", "u"}
        elif case == "upper":
            assert listing == {"u"}


def test_non_directory_above_directory_hides_it(pair) -> None:
    lowers = [{"d": "file:f", "s": "symlink:somewhere", "p": "fifo"},
              {"d/x": "file:x", "s/y": "file:y", "p/z": "file:z", "u/x": "file:x"}]
    with pair(lowers, {"u": "file:u"}) as (kernel, ofs):
        merged = ofs["merged"]
        assert snapshot(merged) == snapshot(kernel["merged"])
        assert read(merged / "d") == "f"
        assert read(merged / "u") == "u"
        assert os.readlink(merged / "s") == "somewhere"
        assert stat.S_ISFIFO(os.lstat(merged / "p").st_mode)
        for rel in ("d/x", "u/x", "p/z"):
            assert errno_of(lambda: os.lstat(merged / rel)) == errno.ENOTDIR


def test_directory_above_non_directory_ignores_it(pair) -> None:
    lowers = [{"d/x": "file:x", "s/a": "file:a"},
              {"d": "file:f", "s": "symlink:elsewhere"},
              {"d/y": "file:y", "s/b": "file:b"}]
    with pair(lowers, {"e/u": "file:u"}) as (kernel, ofs):
        merged = ofs["merged"]
        assert snapshot(merged) == snapshot(kernel["merged"])
        assert os.listdir(merged / "d") == ["x"]
        assert os.listdir(merged / "s") == ["a"]
        assert stat.S_ISDIR(os.lstat(merged / "d").st_mode)


def test_upper_directory_above_lower_file(pair) -> None:
    with pair([{"e": "file:lower", "f": "symlink:x"}], {"e/u": "file:u", "f/v": "file:v"}
              ) as (kernel, ofs):
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert os.listdir(ofs["merged"] / "e") == ["u"]
        assert os.stat(ofs["merged"] / "e").st_nlink == os.stat(ofs["upper"] / "e").st_nlink


# ---- symlinks are never followed out of a layer ---------------------------------------------

@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A directory outside every layer that a symlink in a layer points at."""
    host = tmp_path / "host"
    build_layer(host, {"secret": "file:host secret", "sub/evil": "file:evil", "x/y": "file:y"})
    return host


def test_lower_symlink_above_lower_dir_is_a_symlink(pair, host_dir: Path) -> None:
    lowers = [{"d": f"symlink:{host_dir}"}, {"d/x": "file:layer x"}]
    with pair(lowers) as (kernel, ofs):
        merged = ofs["merged"]
        assert stat.S_ISLNK(os.lstat(merged / "d").st_mode)
        assert os.readlink(merged / "d") == str(host_dir)
        # Lookups through the symlink resolve on the host, not inside the layers.
        assert sorted(os.listdir(merged / "d")) == ["secret", "sub", "x"]
        assert read(merged / "d/secret") == "host secret"
        assert snapshot(merged) == snapshot(kernel["merged"])


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_symlink_in_one_layer_where_another_has_a_dir(pair, host_dir: Path,
                                                      relative: bool) -> None:
    # Upper dir d/sub above a lower symlink d -> host: the daemon must not collect host/sub
    # (or anything else under the host dir) into the merged d or d/sub.
    target = "../../host" if relative else str(host_dir)
    lowers = [{"d": f"symlink:{target}", "x": f"symlink:{target}"}, {"d/low": "file:low"}]
    upper = {"d/sub/mine": "file:mine", "x/y/z": "file:z"}
    with pair(lowers, upper) as (kernel, ofs):
        merged = ofs["merged"]
        assert stat.S_ISDIR(os.lstat(merged / "d").st_mode)
        assert sorted(os.listdir(merged / "d")) == ["sub"]   # lower d ends at the symlink
        assert os.listdir(merged / "d/sub") == ["mine"]
        assert os.listdir(merged / "x/y") == ["z"]
        assert errno_of(lambda: os.lstat(merged / "d/secret")) == errno.ENOENT
        assert errno_of(lambda: os.lstat(merged / "x/y/y")) == errno.ENOENT
        assert snapshot(merged) == snapshot(kernel["merged"])


def test_symlinked_directory_inside_a_merged_dir(pair, host_dir: Path) -> None:
    # Both layers have dir m; the top lower's m/s is a symlink to the host, the bottom's m/s a
    # dir: m/s is the symlink, never a merge with the host dir.
    lowers = [{"m/s": f"symlink:{host_dir}"}, {"m/s/x/own": "file:own"}]
    with pair(lowers, {"m/u": "file:u"}) as (kernel, ofs):
        merged = ofs["merged"]
        assert stat.S_ISLNK(os.lstat(merged / "m/s").st_mode)
        assert sorted(os.listdir(merged / "m/s/x")) == ["y"]   # the host's x, via the host
        assert snapshot(merged) == snapshot(kernel["merged"])


# ---- a layer root inside a lower layer: ELOOP ------------------------------------------------

def _eloop_views(tmp_path: Path, nested: bool) -> dict[str, dict[str, object]]:
    """Kernel and overlayfuse over a lower holding the upperdir and the workdir."""
    results = {}
    inner = "a/u" if nested else "u"
    for who in ("kernel", "ofs"):
        base = tmp_path / who
        build_layer(base / "lower", {f"{inner}/f": "file:f", "plain/x": "file:x", "f": "file:f",
                                     "w/junk": "file:j"})
        merged = base / "merged"
        merged.mkdir()
        upper, work = base / "lower" / inner, base / "lower" / "w"
        context = (KernelOverlay([base / "lower"], upper, work, merged) if who == "kernel"
                   else Overlay([base / "lower"], upper, work, merged))
        with context:
            results[who] = {
                "upper-path": errno_of(lambda: os.lstat(merged / inner)),
                "upper-listing": errno_of(lambda: os.listdir(merged / inner)),
                "upper-file": errno_of(lambda: os.lstat(merged / inner / "f")),
                "work-path": errno_of(lambda: os.lstat(merged / "w")),
                "plain": sorted(os.listdir(merged / "plain")),
                "f": read(merged / "f"),
                "root-listing": sorted(os.listdir(merged)),
                "parent-listing": sorted(os.listdir(merged / "a")) if nested else None,
            }
    return results


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_upperdir_inside_lowerdir_is_eloop(tmp_path: Path, kernel_available: None,
                                           nested: bool) -> None:
    results = _eloop_views(tmp_path, nested)
    for who in results.values():
        del who["root-listing"], who["parent-listing"]   # see the test below
    assert results["ofs"]["upper-path"] == errno.ELOOP
    assert results["ofs"]["work-path"] == errno.ELOOP
    assert results["ofs"] == results["kernel"]


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_eloop_names_are_still_listed(tmp_path: Path, kernel_available: None,
                                      nested: bool) -> None:
    results = _eloop_views(tmp_path, nested)
    assert "w" in results["kernel"]["root-listing"]
    assert results["ofs"]["root-listing"] == results["kernel"]["root-listing"]
    assert results["ofs"]["parent-listing"] == results["kernel"]["parent-listing"]


# ---- readdir ---------------------------------------------------------------------------------

def test_merged_readdir_dedups_and_hides_markers(pair) -> None:
    lowers = [{"d/a": "file:a", "d/b": "file:b0", "d/gone": "oci-whiteout", "d/o": "oci-opaque",
               "d/o/in": "file:i", "d/sub/s": "file:s", "top": "file:t"},
              {"d/b": "file:b1", "d/c": "file:c", "d/gone": "file:g", "d/wo": "file:w",
               "d/o/hidden": "file:h", "d/sub/t": "file:t", "top": "file:bottom"}]
    upper = {"d/a": "file:ua", "d/u": "file:u", "d/wo": "whiteout", "d/sub/s": "file:us",
             "d/uo": "user-opaque"}
    with pair(lowers, upper) as (kernel, ofs):
        for rel in ("", "d", "d/sub", "d/o", "d/uo"):
            names = raw_names(ofs["merged"] / rel)
            assert len(names) == len(set(names)), f"duplicates in {rel!r}: {names}"
            assert "." in names and ".." in names
            assert not any(n.startswith(".wh.") for n in names)
            assert typed_listing(ofs["merged"] / rel) == typed_listing(kernel["merged"] / rel)
        assert sorted(raw_names(ofs["merged"] / "d")) == [".", "..", "a", "b", "c", "o", "sub",
                                                           "u", "uo"]


def _big_dir_layers() -> tuple[list[dict[str, str]], dict[str, str], set[str]]:
    upper = {f"d/u{i:04d}": "file:u" for i in range(500)}
    upper.update({f"d/n{i:04d}": "whiteout" for i in range(100)})
    upper.update({f"d/n{i:04d}": "file:upper-n" for i in range(100, 200)})
    lower0 = {f"d/n{i:04d}": f"file:{i}" for i in range(1000)}
    lower1 = {f"d/m{i:04d}": "file:m" for i in range(600)}
    lower1.update({f"d/n{i:04d}": "file:dup" for i in range(500, 600)})
    lower1.update({f"d/u{i:04d}": "file:dup" for i in range(0, 500, 7)})
    expected = ({f"u{i:04d}" for i in range(500)} | {f"n{i:04d}" for i in range(100, 1000)}
                | {f"m{i:04d}" for i in range(600)})
    return [lower0, lower1], upper, expected


def test_large_merged_dir_lists_every_name_once(pair) -> None:
    lowers, upper, expected = _big_dir_layers()
    assert len(expected) == 2000
    with pair(lowers, upper) as (kernel, ofs):
        for merged in (kernel["merged"], ofs["merged"]):
            names = os.listdir(merged / "d")
            assert len(names) == len(set(names)) == 2000
            assert set(names) == expected
            with os.scandir(merged / "d") as scan:
                assert sorted(e.name for e in scan) == sorted(expected)
        assert read(ofs["merged"] / "d/n0150") == "upper-n"
        assert read(ofs["merged"] / "d/n0550") == "550"


def test_telldir_seekdir_offsets_are_stable(pair) -> None:
    lowers, upper, expected = _big_dir_layers()
    with pair(lowers, upper) as (kernel, ofs):
        for merged in (ofs["merged"], kernel["merged"]):
            with DirStream(merged / "d") as stream:
                names: list[str] = []
                positions: list[int] = []
                while (entry := stream.read()) is not None:
                    names.append(entry[0])
                    positions.append(stream.tell())
                assert len(names) == len(set(names)) == 2002
                assert set(names) == expected | {".", ".."}
                for index in (0, 1, 2, 30, 31, 500, 1001, 1998, 2000, 2001):
                    stream.seek(positions[index])
                    rest = [name for name, _, _ in stream.read_all()]
                    assert rest == names[index + 1:], f"seek after entry {index} in {merged}"
            # A second stream reading in small steps, interleaved with the first, agrees.
            with DirStream(merged / "d") as one, DirStream(merged / "d") as two:
                first = [one.read()[0] for _ in range(700)]
                second = [entry[0] for entry in two.read_all()]
                first += [entry[0] for entry in one.read_all()]
                assert first == second


@needs_write_path
def test_readdir_offsets_survive_changes_during_listing(pair) -> None:
    lowers, upper, expected = _big_dir_layers()
    with pair(lowers, upper) as (kernel, ofs):
        for merged in (kernel["merged"], ofs["merged"]):
            d = merged / "d"
            changed: set[str] = set()
            with DirStream(d) as stream:
                seen = [stream.read()[0] for _ in range(600)]
                for i in range(0, 1000, 9):      # remove early and late upper and lower names
                    for name in (f"n{i:04d}", f"m{i % 600:04d}", f"u{i % 500:04d}"):
                        if name in expected and name not in changed:
                            os.unlink(d / name)
                            changed.add(name)
                for i in range(150):
                    (d / f"new{i:03d}").write_text("new")
                    changed.add(f"new{i:03d}")
                seen += [entry[0] for entry in stream.read_all()]
            assert len(seen) == len(set(seen)), f"repeated names in {merged}"
            stable = expected - changed
            assert stable <= set(seen), f"skipped {sorted(stable - set(seen))[:5]} in {merged}"


def test_readdir_d_ino_and_d_type_match_stat(pair) -> None:
    lowers = [{"d/f": "file:f", "d/s": "symlink:t", "d/p": "fifo", "d/sub/x": "file:x"},
              {"d/g": "file:g", "d/sub/y": "file:y", "d/low/z": "file:z"}]
    with pair(lowers, {"d/u": "file:u", "d/sub/w": "file:w"}) as (kernel, ofs):
        listings = {}
        for merged in (kernel["merged"], ofs["merged"]):
            with DirStream(merged / "d") as stream:
                entries = {name: (ino, dtype) for name, ino, dtype in stream.read_all()}
            listings[merged] = sorted((name, dtype) for name, (_, dtype) in entries.items())
            for name, (ino, dtype) in entries.items():
                if name in (".", ".."):
                    continue
                st = os.lstat(merged / "d" / name)
                assert dtype == {stat.S_IFREG: 8, stat.S_IFDIR: 4, stat.S_IFLNK: 10,
                                 stat.S_IFIFO: 1}[stat.S_IFMT(st.st_mode)], (merged, name)
                # The kernel's first readdir of a merged dir gives a merged subdir's upper
                # inode number and stat the origin's; overlayfuse is consistent.
                if merged == ofs["merged"]:
                    assert ino == st.st_ino, name
        assert listings[kernel["merged"]] == listings[ofs["merged"]]


# ---- attributes ------------------------------------------------------------------------------

INO_LOWERS = [{"lf0": "file:0", "m/l0": "file:0", "ld/y": "file:y", "fifo": "fifo",
               "m/shared": "file:l0", "lm/a": "file:a", "op/a": "file:a"},
              {"lf1": "file:1", "m/l1": "file:1", "m/sub/z": "file:z", "ld1/w": "file:w",
               "m/shared": "file:l1", "lsl": "symlink:/x", "lm/b": "file:b", "op/b": "file:b",
               "ud": "file:not a dir"}]
INO_UPPER = {"uf": "file:u", "m/uf": "file:u", "ud/x": "file:x", "sl": "symlink:t",
             "op": "opaque", "op/u": "file:u"}
# path -> the layer whose real object is visible (and gives st_ino)
INO_TOP = {"uf": "upper", "m/uf": "upper", "ud": "upper", "ud/x": "upper", "op": "upper",
           "sl": "upper", "lf0": 0, "m/l0": 0, "m/shared": 0, "ld": 0, "ld/y": 0, "fifo": 0,
           "lm": 0, "lf1": 1, "m/l1": 1, "m/sub": 1, "m/sub/z": 1, "ld1": 1, "ld1/w": 1,
           "lsl": 1}


def _layer(stack: dict, where: str | int) -> Path:
    return stack["upper"] if where == "upper" else stack["lowers"][where]


def test_st_ino_is_the_real_inode_number(pair) -> None:
    with pair(INO_LOWERS, INO_UPPER) as (kernel, ofs):
        for stack in (kernel, ofs):
            for rel, where in INO_TOP.items():
                real = os.lstat(_layer(stack, where) / rel).st_ino
                assert os.lstat(stack["merged"] / rel).st_ino == real, (stack["base"].name, rel)
                # And it stays the same on a second look (a re-used or re-made node).
                assert os.stat(stack["merged"] / rel, follow_symlinks=False).st_ino == real


def test_st_ino_of_a_merged_dir_with_an_upper_part(pair) -> None:
    with pair(INO_LOWERS, INO_UPPER) as (kernel, ofs):
        for stack in (kernel, ofs):
            real = os.lstat(stack["lowers"][0] / "m").st_ino
            assert os.lstat(stack["merged"] / "m").st_ino == real, stack["base"].name


@pytest.mark.xfail(not capabilities.ATTR_INO,
                   reason="stock pyfuse3 ties st_ino to the FUSE node id, and the root's is "
                          "always 1; the kernel shows the upper root's inode number", strict=True)
def test_st_ino_of_the_root(pair) -> None:
    with pair(INO_LOWERS, INO_UPPER) as (kernel, ofs):
        for stack in (kernel, ofs):
            assert os.stat(stack["merged"]).st_ino == os.stat(stack["upper"]).st_ino, \
                stack["base"].name


COPY_UP_LOWERS = [{"f": "file:f", "d/x": "file:x", "s": "symlink:t"},
                  {"g": "file:g", "d/y": "file:y"}]


def _copy_up(merged: Path) -> None:
    os.chmod(merged / "f", 0o600)
    os.chmod(merged / "g", 0o600)
    os.chmod(merged / "d/x", 0o600)      # copies up d first
    os.chown(merged / "s", 0, 0, follow_symlinks=False)


@needs_write_path
def test_st_ino_does_not_change_on_copy_up(pair) -> None:
    with pair(COPY_UP_LOWERS) as (kernel, ofs):
        for stack in (kernel, ofs):
            merged = stack["merged"]
            rels = ("f", "g", "d", "d/x", "s")
            before = {rel: os.lstat(merged / rel).st_ino for rel in rels}
            _copy_up(merged)
            for rel in rels:
                assert os.path.lexists(stack["upper"] / rel), (stack["base"].name, rel)
            assert {rel: os.lstat(merged / rel).st_ino for rel in rels} == before, \
                stack["base"].name
            assert before["f"] == os.lstat(stack["lowers"][0] / "f").st_ino


@needs_write_path
def test_st_ino_of_a_copied_up_object_survives_a_remount_under_either(make_stack, mount_kernel,
                                                                      mount_ofs) -> None:
    """The copy-up origin is written in the kernel's format: whichever of the two copied an
    object up, both number it after its lower origin at the next mount."""
    rels = ("f", "g", "d/x", "s")
    mounts_by_name = {"kernel": mount_kernel, "ofs": mount_ofs}
    for writer in mounts_by_name:
        stack = make_stack(COPY_UP_LOWERS, name=writer)
        with mounts_by_name[writer](stack):
            before = {rel: os.lstat(stack["merged"] / rel).st_ino for rel in rels}
            _copy_up(stack["merged"])
        for rel in rels:
            assert os.path.lexists(stack["upper"] / rel), (writer, rel)
        for reader, mount in mounts_by_name.items():
            with mount(stack):
                after = {rel: os.lstat(stack["merged"] / rel).st_ino for rel in rels}
            assert after == before, f"copied up by {writer}, mounted by {reader}"


def test_st_dev_is_the_mounts(pair) -> None:
    with pair(INO_LOWERS, INO_UPPER) as (_, ofs):
        merged = ofs["merged"]
        dev = os.stat(merged).st_dev
        assert dev != os.stat(ofs["upper"]).st_dev
        for rel in INO_TOP:
            assert os.lstat(merged / rel).st_dev == dev, rel


@pytest.mark.parametrize("read_only", [
    pytest.param(False, id="writable", marks=pytest.mark.xfail(
        not capabilities.ATTR_INO,
        reason="stock pyfuse3: inodes.NodeTable.identity gives each name of a lower hard link "
               "its own node, and NodeTable.choose_ino then a synthetic st_ino to all but the "
               "first; the kernel shows the real one for every name until a copy-up",
        strict=True)),
    pytest.param(True, id="read-only")])
def test_hard_links_in_a_lower_layer_share_st_ino(pair, read_only: bool) -> None:
    lowers = [{"a": "file:x", "b": "link:a", "d/c": "link:a"}]
    with pair(lowers, read_only=read_only) as (kernel, ofs):
        for stack in (kernel, ofs):
            real = os.lstat(stack["lowers"][0] / "a").st_ino
            seen = [os.lstat(stack["merged"] / rel) for rel in ("a", "b", "d/c")]
            assert [st.st_nlink for st in seen] == [3, 3, 3]
            assert [st.st_ino for st in seen] == [real] * 3, stack["base"].name


@pytest.mark.skipif(not capabilities.ATTR_INO, reason="stock pyfuse3: st_ino is the node id")
def test_lower_hard_links_part_on_copy_up_with_their_own_page_caches(pair) -> None:
    """Writing one name of a lower hard link copies that name up alone: it shows the upper
    inode number and the new data, while the other names keep the lower number and the old
    data, also in a page cache filled before the copy-up."""
    lowers = [{"a": "file:old", "b": "link:a", "d/c": "link:a"}]
    with pair(lowers) as (kernel, ofs):
        seen = {}
        for stack in (kernel, ofs):
            merged = stack["merged"]
            real = os.lstat(stack["lowers"][0] / "a").st_ino
            assert [(merged / rel).read_bytes() for rel in ("a", "b", "d/c")] == [b"old"] * 3
            with open(merged / "b", "r+b") as f:
                f.write(b"new")
            upper_b = os.lstat(stack["upper"] / "b").st_ino
            seen[stack["base"].name] = (
                [(merged / rel).read_bytes() for rel in ("a", "b", "d/c")],
                [os.lstat(merged / rel).st_ino == ino
                 for rel, ino in (("a", real), ("b", upper_b), ("d/c", real))],
                sorted(os.lstat(merged / rel).st_nlink for rel in ("a", "b", "d/c")))
        assert seen["kernel"] == ([b"old", b"new", b"old"], [True] * 3, [1, 3, 3])
        assert seen["ofs"] == seen["kernel"]


def test_directory_nlink(pair) -> None:
    lowers = [{"merged/a/x": "file:x", "lonely/a": "dir", "lonely/b": "dir", "lonely/c": "dir",
               "op": "opaque", "op/k": "dir"},
              {"merged/b": "dir", "merged/c": "dir", "op/old": "dir"}]
    upper = {"merged/u": "dir", "up/k1": "dir", "up/k2": "dir"}
    with pair(lowers, upper) as (kernel, ofs):
        for stack in (kernel, ofs):
            merged = stack["merged"]
            assert os.stat(merged / "merged").st_nlink == 1
            assert os.stat(merged).st_nlink == 1
            assert os.stat(merged / "lonely").st_nlink == 5
            assert os.stat(merged / "up").st_nlink == 4
            assert os.stat(merged / "op").st_nlink == 3
            assert os.stat(merged / "merged/a").st_nlink == 2


def test_file_attributes_come_from_the_visible_object(pair) -> None:
    def prepare(stack: dict) -> None:
        os.chmod(stack["lowers"][0] / "f", 0o640)
        os.chown(stack["lowers"][0] / "f", 1234, 5678)
        os.utime(stack["lowers"][0] / "f", ns=(1_000_000_123, 2_000_000_456))
        os.chmod(stack["upper"] / "d", 0o711)
        os.chown(stack["upper"] / "d", 42, 43)
        os.chmod(stack["lowers"][0] / "d", 0o755)
        os.setxattr(stack["upper"] / "d", "user.who", b"upper")
        os.setxattr(stack["lowers"][0] / "d", "user.who", b"lower")
        os.setxattr(stack["lowers"][0] / "d", "user.lower-only", b"x")
        os.utime(stack["upper"] / "d", ns=(3_000_000_000, 4_000_000_789))
        with open(stack["lowers"][1] / "sparse", "wb") as f:
            f.truncate(3 << 20)
            f.write(b"x")

    lowers = [{"f": "file:some text", "d/l": "file:l"}, {"f": "file:bottom"}]
    with pair(lowers, {"d/u": "file:u"}, prepare=prepare) as (kernel, ofs):
        for stack in (kernel, ofs):
            merged = stack["merged"]
            for rel, layer in (("f", stack["lowers"][0]), ("d", stack["upper"]),
                               ("sparse", stack["lowers"][1])):
                seen, real = os.lstat(merged / rel), os.lstat(layer / rel)
                for field in ("st_mode", "st_uid", "st_gid", "st_mtime_ns", "st_ctime_ns"):
                    assert getattr(seen, field) == getattr(real, field), (rel, field)
                if not stat.S_ISDIR(real.st_mode):
                    assert (seen.st_size, seen.st_blocks) == (real.st_size, real.st_blocks)
            assert os.getxattr(merged / "d", "user.who") == b"upper"
            assert "user.lower-only" not in os.listxattr(merged / "d")
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])


def test_readlink(pair) -> None:
    lowers = [{"abs": "symlink:/etc/passwd", "rel": "symlink:../x/y", "dangling": "symlink:nope",
               "d/in": "symlink:.."},
              {"abs": "file:hidden", "long": "symlink:" + "a/" * 1000 + "end"}]
    with pair(lowers, {"up": "symlink:upper target", "d/in2": "symlink:/"}) as (kernel, ofs):
        merged = ofs["merged"]
        expect = {"abs": "/etc/passwd", "rel": "../x/y", "dangling": "nope", "d/in": "..",
                  "long": "a/" * 1000 + "end", "up": "upper target", "d/in2": "/"}
        for rel, target in expect.items():
            assert os.readlink(merged / rel) == target
            assert os.readlink(kernel["merged"] / rel) == target
            assert os.lstat(merged / rel).st_size == len(target)
        assert errno_of(lambda: os.readlink(merged / "d")) == errno.EINVAL
        assert errno_of(lambda: os.lstat(merged / "dangling/x")) == errno.ENOENT


def test_file_contents(pair, tmp_path: Path) -> None:
    big = os.urandom(5 << 20) + b"tail"
    binary = bytes(range(256)) * 17

    def prepare(stack: dict) -> None:
        (stack["lowers"][1] / "big").write_bytes(big)
        (stack["lowers"][0] / "bin").write_bytes(binary)

    lowers = [{"empty": "file:", "t": "file:top text"}, {"t": "file:bottom", "deep/x/y": "file:y"}]
    with pair(lowers, {"u": "file:upper"}, prepare=prepare) as (kernel, ofs):
        merged = ofs["merged"]
        assert (merged / "empty").read_bytes() == b""
        assert read(merged / "t") == "top text"
        assert read(merged / "u") == "upper"
        assert read(merged / "deep/x/y") == "y"
        assert (merged / "bin").read_bytes() == binary
        assert hashlib.sha256((merged / "big").read_bytes()).digest() == \
            hashlib.sha256(big).digest()
        with open(merged / "big", "rb", buffering=0) as f:
            chunks = []
            while chunk := f.read(100_000):
                chunks.append(chunk)
            assert b"".join(chunks) == big
            fd = f.fileno()
            for off in (0, 1, 4095, 4096, 131071, 131072, (5 << 20) - 1, 5 << 20,
                        (5 << 20) + 3, (5 << 20) + 4, 10 << 20):
                assert os.pread(fd, 9000, off) == big[off:off + 9000], off
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                assert m[:4096] == big[:4096]
                assert m[(3 << 20) + 5:(3 << 20) + 70000] == big[(3 << 20) + 5:(3 << 20) + 70000]
                assert m[-4:] == b"tail"
        # Two readers at once, one of them through the kernel page cache already.
        with open(merged / "big", "rb") as one, open(merged / "big", "rb") as two:
            one.seek(2 << 20)
            assert two.read(1 << 20) == big[:1 << 20]
            assert one.read(1 << 20) == big[2 << 20:3 << 20]
        assert snapshot(merged) == snapshot(kernel["merged"])
        assert os.stat(merged / "big").st_size == len(big)


def _statvfs_view(path: Path) -> tuple[int, ...]:
    vfs = os.statvfs(path)
    return (vfs.f_blocks * vfs.f_frsize, vfs.f_bfree * vfs.f_frsize,
            vfs.f_bavail * vfs.f_frsize, vfs.f_files, vfs.f_ffree)


@pytest.mark.parametrize("read_only", [False, True], ids=["upper", "read-only-top-lower"])
def test_statfs_comes_from_the_upper_fs(tmp_path: Path, kernel_available: None,
                                        read_only: bool) -> None:
    views = {}
    for who, size in (("kernel", "5m"), ("ofs", "7m")):
        base = tmp_path / who
        with tmpfs(base / "fs", f"size={size},nr_inodes=321"):
            top = base / "fs" / "top"
            build_layer(top, {"t": "file:t", "d/x": "file:x"})
            (base / "fs" / "work").mkdir()
            lower = base / "lower"
            build_layer(lower, {"l": "file:l", "d/y": "file:y"})
            merged = base / "merged"
            merged.mkdir()
            if read_only:
                lowers, upper, work = [top, lower], None, None
            else:
                lowers, upper, work = [lower], top, base / "fs" / "work"
            context = (KernelOverlay(lowers, upper, work, merged) if who == "kernel"
                       else Overlay(lowers, upper, work, merged))
            with context:
                assert sorted(os.listdir(merged / "d")) == ["x", "y"]
                views[who] = (_statvfs_view(merged), _statvfs_view(top), _statvfs_view(lower))
    for who, (seen, top_fs, lower_fs) in views.items():
        assert seen == top_fs, who
        assert seen != lower_fs
    assert views["ofs"][0][0] == 7 << 20
    assert views["ofs"][0][3] == 321


# ---- xattrs ----------------------------------------------------------------------------------

def test_private_xattrs_are_hidden_and_user_xattrs_visible(pair) -> None:
    def prepare(stack: dict) -> None:
        lower = stack["lowers"][0]
        os.setxattr(lower / "f", "user.colour", b"blue")
        os.setxattr(lower / "f", "trusted.overlay.origin", b"\0\1junk")
        os.setxattr(lower / "f", "trusted.overlay.overlay.escaped", b"shown")
        os.setxattr(lower / "f", "trusted.other", b"root only")
        os.setxattr(lower / "op", "user.op", b"1")
        os.setxattr(stack["upper"] / "m", "trusted.overlay.impure", b"y")
        os.setxattr(stack["upper"] / "m", "user.m", b"upper")
        os.setxattr(stack["lowers"][1] / "m", "user.m", b"lower")

    lowers = [{"f": "file:f", "op": "opaque", "op/x": "file:x", "m/a": "file:a"},
              {"op/y": "file:y", "m/b": "file:b"}]
    with pair(lowers, {"m/u": "file:u"}, prepare=prepare) as (kernel, ofs):
        for merged in (kernel["merged"], ofs["merged"]):
            names = set(os.listxattr(merged / "f"))
            assert {"user.colour", "trusted.other"} <= names
            assert not any(n.startswith("trusted.overlay.") and n != "trusted.overlay.escaped"
                           for n in names)
            assert os.getxattr(merged / "f", "user.colour") == b"blue"
            assert errno_of(lambda: os.getxattr(merged / "f", "trusted.overlay.origin")) \
                == errno.ENODATA
            assert errno_of(lambda: os.getxattr(merged / "op", "trusted.overlay.opaque")) \
                == errno.ENODATA
            assert errno_of(lambda: os.getxattr(merged / "f", "user.none")) == errno.ENODATA
            assert not any(n.startswith("trusted.overlay.") for n in os.listxattr(merged / "op"))
            assert not any(n.startswith("trusted.overlay.") for n in os.listxattr(merged / "m"))
            assert os.getxattr(merged / "m", "user.m") == b"upper"
            assert os.getxattr(merged / "op", "user.op") == b"1"
        for rel in ("f", "op", "m", "m/a"):
            assert sorted(os.listxattr(ofs["merged"] / rel)) == \
                sorted(os.listxattr(kernel["merged"] / rel)), rel
        assert os.getxattr(ofs["merged"] / "f", "trusted.overlay.escaped") == \
            os.getxattr(kernel["merged"] / "f", "trusted.overlay.escaped") == b"shown"


# ---- read-only mounts ------------------------------------------------------------------------

RO_LOWER = {"f": "file:f", "d/x": "file:x", "empty": "dir", "s": "symlink:f"}


def _write_attempts(merged: Path) -> dict[str, int]:
    def open_close(rel: str, flags: int) -> None:
        os.close(os.open(merged / rel, flags, 0o644))

    attempts: dict[str, Callable[[], object]] = {
        "open-wronly": lambda: open_close("f", os.O_WRONLY),
        "open-rdwr": lambda: open_close("f", os.O_RDWR),
        "open-append": lambda: open_close("f", os.O_WRONLY | os.O_APPEND),
        "open-trunc": lambda: open_close("f", os.O_RDONLY | os.O_TRUNC),
        "create": lambda: open_close("new", os.O_WRONLY | os.O_CREAT),
        "create-excl": lambda: open_close("d/new", os.O_RDWR | os.O_CREAT | os.O_EXCL),
        "mkdir": lambda: os.mkdir(merged / "newdir"),
        "mknod": lambda: os.mkfifo(merged / "newfifo"),
        "unlink": lambda: os.unlink(merged / "f"),
        "rmdir": lambda: os.rmdir(merged / "empty"),
        "rename": lambda: os.rename(merged / "f", merged / "g"),
        "rename-dir": lambda: os.rename(merged / "d", merged / "e"),
        "chmod": lambda: os.chmod(merged / "f", 0o600),
        "chown": lambda: os.chown(merged / "f", 1, 1),
        "utime": lambda: os.utime(merged / "f", (1, 1)),
        "setxattr": lambda: os.setxattr(merged / "f", "user.x", b"1"),
        "removexattr": lambda: os.removexattr(merged / "d", "user.keep"),
        "symlink": lambda: os.symlink("f", merged / "newlink"),
        "link": lambda: os.link(merged / "f", merged / "hardlink"),
        "truncate": lambda: os.truncate(merged / "f", 0),
    }
    return {what: errno_of(call) for what, call in attempts.items()}


def _set_keep(stack: dict) -> None:
    os.setxattr(stack["lowers"][0] / "d", "user.keep", b"1")


def test_read_only_mount_refuses_every_write(pair) -> None:
    with pair([RO_LOWER], read_only=True, prepare=_set_keep) as (kernel, ofs):
        before = raw_snapshot(ofs["lowers"][0])
        seen = _write_attempts(ofs["merged"])
        assert seen == dict.fromkeys(seen, errno.EROFS)
        assert _write_attempts(kernel["merged"]) == seen
        assert not os.access(ofs["merged"] / "f", os.W_OK)
        # Reads still work.
        assert read(ofs["merged"] / "f") == "f"
        assert sorted(os.listdir(ofs["merged"])) == ["d", "empty", "f", "s"]
        assert raw_snapshot(ofs["lowers"][0]) == before
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
        assert "ro" in _mount_options(ofs["merged"])


def _mount_options(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == str(path):
                return fields[5].split(",")
    raise AssertionError(f"{path} is not mounted")


def test_ro_option_with_an_upper_is_read_only(make_stack, mount_ofs) -> None:
    stack = make_stack([RO_LOWER], {"u": "file:upper"})
    _set_keep(stack)
    before = {name: raw_snapshot(stack[name]) for name in ("upper", "work")}
    before_lower = raw_snapshot(stack["lowers"][0])
    with mount_ofs(stack, options=("ro",)):
        merged = stack["merged"]
        seen = _write_attempts(merged)
        assert seen == dict.fromkeys(seen, errno.EROFS)
        assert read(merged / "u") == "upper"
        assert sorted(os.listdir(merged)) == ["d", "empty", "f", "s", "u"]
    assert {name: raw_snapshot(stack[name]) for name in ("upper", "work")} == before
    assert raw_snapshot(stack["lowers"][0]) == before_lower


def test_both_overlay_xattr_namespaces_are_private() -> None:
    """trusted.overlay.* and user.overlay.* are private in either mode (user.overlay.opaque is
    honoured even as root): hidden, and escaped when set through the mount."""
    from overlayfuse.xattrs import XattrNames
    for names in (XattrNames(b"trusted.overlay."), XattrNames(b"user.overlay.")):
        for prefix in (b"trusted.overlay.", b"user.overlay."):
            assert names.to_visible(prefix + b"opaque") is None
            assert names.to_visible(prefix + b"overlay.x") == prefix + b"x"
            assert names.to_real(prefix + b"x") == prefix + b"overlay.x"
        assert names.to_visible(b"user.colour") == b"user.colour"
        assert names.to_real(b"user.colour") == b"user.colour"
