"""chown of lower files, with and without metadata-only copy-up (metacopy=on).

One lower layer holds a tree of small files and one big file of real data (written in full,
no holes: a sparse file would hide the cost of copying it). Each command gets a fresh mount,
then `sync` and a drop of the page cache, then is timed from start to exit:

- chown_tree: `chown -R 1234:1234 tree`: without metacopy every file's data is copied up;
- chown_big: `chown 1234:1234 big.bin`, then, after another drop of the page cache,
  read_big: `sha256sum big.bin`, checked against the layer's: with metacopy the data is
  still read from the lower file.

Each runs on overlayfuse and kernel overlayfs with and without `metacopy=on`, and on
fuse-overlayfs, which has no metacopy (it copies the data). After each command the upper
dir's allocated size is recorded: what the chown wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import impls
from .phases import Metric
from .stacks import _content, _fresh, _write
from .workloads import _run

OWNER = 1234
BIG_NAME = "big.bin"
METACOPY = ("metacopy=on",)

COMMANDS: dict[str, Metric] = {m.name: m for m in (
    Metric("chown_tree", "chown -R of the small-file tree", "s"),
    Metric("chown_big", "chown of the big file", "s"),
    Metric("read_big", "sha256sum of the big file after its chown", "s"),
)}
UPPER: dict[str, Metric] = {    # what each command run left in the upper dir
    "chown_tree": Metric("upper_tree_mib", "upper dir after chown -R of the tree", "MiB"),
    "chown_big": Metric("upper_big_mib", "upper dir after chown of the big file", "MiB"),
}


@dataclass(frozen=True)
class ChownSpec:
    files: int = 10_000
    per_dir: int = 100
    big_mib: int = 1024


QUICK = ChownSpec(files=100, per_dir=25, big_mib=1)


@dataclass(frozen=True)
class Variant:
    impl: str
    metacopy: bool

    @property
    def options(self) -> tuple[str, ...]:
        return METACOPY if self.metacopy else ()

    def metric(self, name: str) -> str:
        return name + "_metacopy" if self.metacopy else name


def variants(chosen: list[str]) -> list[Variant]:
    """The implementations asked for; fuse-overlayfs only without metacopy (it has none)."""
    return [Variant(impl, metacopy) for impl in chosen
            for metacopy in ((False,) if impl == impls.FUSE_OVERLAYFS else (False, True))]


@dataclass
class Layer:
    lower: Path
    samples: dict[str, bytes]    # a few files of the tree (path in the mount: content)
    big_sha256: str


def _tree_file(spec: ChownSpec, k: int) -> tuple[str, bytes]:
    name = f"tree/d{k // spec.per_dir:03d}/f{k % spec.per_dir:04d}"
    return name, _content(k, 512 + (k * 37) % 3585)


def space_needed(spec: ChownSpec) -> int:
    """Bytes free under --dir for the layer and one mount's full copy of it."""
    return 2 * (spec.big_mib << 20) + 2 * spec.files * 8192 + (256 << 20)


def build(base: Path, spec: ChownSpec) -> Layer:
    root = base / f"chown-{spec.files}-{spec.big_mib}m"
    params = {"kind": "chown", "version": 1, **asdict(spec)}
    lower = root / "lower"
    if not _fresh(root, params):
        for k in range(spec.files):
            name, data = _tree_file(spec, k)
            (lower / name).parent.mkdir(parents=True, exist_ok=True)
            _write(lower / name, data)
        digest = hashlib.sha256()
        chunk = _content(0, 1 << 20)
        with open(lower / BIG_NAME, "wb") as big:
            for m in range(spec.big_mib):
                piece = chunk[m % 4096:] + chunk[:m % 4096]     # no two MiB alike
                big.write(piece)
                digest.update(piece)
        (root / "big.sha256").write_text(digest.hexdigest())
        os.sync()
        (root / ".complete").write_text(json.dumps(params))
    return Layer(lower, dict(_tree_file(spec, k) for k in (0, spec.files // 2, spec.files - 1)),
                 (root / "big.sha256").read_text())


def allocated_mib(upper: Path) -> float:
    """What the upper dir holds on disk: its files' allocated blocks."""
    blocks = 0
    for parent, dirs, files in os.walk(upper):
        for name in dirs + files:
            blocks += os.lstat(os.path.join(parent, name)).st_blocks
    return blocks * 512 / 2**20


class WrongResult(Exception):
    """A command succeeded but the mount shows the wrong owner or data."""


def _check_owner(path: Path) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (OWNER, OWNER):
        raise WrongResult(f"{path.name} is owned by {st.st_uid}:{st.st_gid} after the chown")


def chown_tree(layer: Layer, mnt: Path, drop_caches: Callable[[], None]) -> dict[str, float]:
    seconds = _run(f"chown -R {OWNER}:{OWNER} tree", mnt)
    for name, data in layer.samples.items():
        _check_owner(mnt / name)
        if (mnt / name).read_bytes() != data:
            raise WrongResult(f"{name} reads other data after the chown")
    return {"chown_tree": seconds}


def chown_big(layer: Layer, mnt: Path, drop_caches: Callable[[], None]) -> dict[str, float]:
    seconds = _run(f"chown {OWNER}:{OWNER} {BIG_NAME}", mnt)
    _check_owner(mnt / BIG_NAME)
    drop_caches()
    start = time.perf_counter()
    done = subprocess.run(["sha256sum", BIG_NAME], cwd=mnt, check=True, capture_output=True,
                          stdin=subprocess.DEVNULL)
    read = time.perf_counter() - start
    digest = done.stdout.split()[0].decode()
    if digest != layer.big_sha256:
        raise WrongResult(f"sha256sum of {BIG_NAME} is {digest}, the layer's is "
                          f"{layer.big_sha256}")
    return {"chown_big": seconds, "read_big": read}


Timed = Callable[[Layer, Path, Callable[[], None]], dict[str, float]]
COMMAND_RUNS: tuple[tuple[str, Timed], ...] = (("chown_tree", chown_tree),
                                               ("chown_big", chown_big))
