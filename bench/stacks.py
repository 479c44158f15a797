"""The layer stacks the benchmark mounts, built once and then only read.

The main stack has three lower layers (top first: l0, l1, l2):

- l2, the bottom: DIRS directories of FILES small files each (512 B to 4 KiB), and one big
  file at the root;
- l1, the middle: overrides of every 10th file, chardev 0/0 whiteouts of every 20th (offset
  5), a few new files in every 4th directory, and the last directory made opaque
  (`trusted.overlay.opaque=y`) with new contents of its own;
- l0, the top: overrides of every 50th file (offset 1), new files in every 10th directory and
  a directory of its own.

The scaling stacks have N files spread round-robin over L lower layers (each file in exactly
one layer) in the same SCALE_DIRS directories, which exist in every layer.

A stack is rebuilt only when its parameters change: a `.complete` file records them. The
names the phases use (every visible file, every dir, missing names, the files to read, copy
up, unlink and create) are computed from the same parameters, written to `lists/`, and
checked against each implementation's walk.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

OPAQUE_XATTR = "trusted.overlay.opaque"
BIG_NAME = "big.bin"
_BLOCK = bytes((i * 131 + 7) % 251 for i in range(8192))


@dataclass(frozen=True)
class MainSpec:
    dirs: int = 200
    files: int = 50             # per directory, in the bottom layer
    big_mib: int = 256
    missing_per_dir: int = 25   # names that never existed, per directory
    read_every: int = 5         # cold small-file reads: every 5th visible file
    copyup: int = 1000
    unlink: int = 1000
    create: int = 3000
    create_dirs: int = 30       # the creates are spread over this many existing (lower) dirs


@dataclass(frozen=True)
class ScaleSpec:
    files: int
    layers: int
    dirs: int = 200


@dataclass
class Stack:
    """A built stack: its lower dirs (top first) and its lists of names."""

    root: Path
    lowers: list[Path]
    lists: dict[str, Path]
    expected_files: int          # regular files a walk of the merged tree finds
    expected_dirs: int           # directories below the root a walk finds

    def count(self, name: str) -> int:
        with open(self.lists[name], encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())


def _content(k: int, size: int, salt: int = 0) -> bytes:
    start = (k * 61 + salt * 997) % 4096
    data = (_BLOCK[start:] + _BLOCK)[:size]
    return data if len(data) == size else (data * (size // len(data) + 1))[:size]


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _fresh(root: Path, params: dict) -> bool:
    """True if `root` holds a complete build with these parameters; else empties it."""
    marker = root / ".complete"
    try:
        if json.loads(marker.read_text()) == params:
            return True
    except (OSError, ValueError):
        pass
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return False


def _write_list(path: Path, names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return path


# ---- the main stack ------------------------------------------------------------------------

def _main_layout(spec: MainSpec) -> dict:
    """What each layer holds, and what the merged tree shows."""
    dname = [f"d{i:03d}" for i in range(spec.dirs)]
    bottom = {f"{dname[i]}/f{j:03d}": i * spec.files + j
              for i in range(spec.dirs) for j in range(spec.files)}
    opaque_dir = dname[-1]
    mid_over = [n for n, k in bottom.items() if k % 10 == 0 and not n.startswith(opaque_dir)]
    mid_whiteout = [n for n, k in bottom.items() if k % 20 == 5 and not n.startswith(opaque_dir)]
    mid_new = [f"{dname[i]}/m{j:03d}" for i in range(0, spec.dirs - 1, 4) for j in range(5)]
    mid_opaque_new = [f"{opaque_dir}/o{j:03d}" for j in range(10)]
    top_over = [n for n, k in bottom.items() if k % 50 == 1 and not n.startswith(opaque_dir)]
    top_new = [f"{dname[i]}/t{j:03d}" for i in range(3, spec.dirs - 1, 10) for j in range(5)]
    top_dir_new = [f"top/t{j:03d}" for j in range(100)]

    hidden = set(mid_whiteout) | {n for n in bottom if n.startswith(opaque_dir + "/")}
    visible = sorted((set(bottom) - hidden) | set(mid_new) | set(mid_opaque_new)
                     | set(top_new) | set(top_dir_new))
    return {
        "dirs": dname, "bottom": bottom, "opaque_dir": opaque_dir, "mid_over": mid_over,
        "mid_whiteout": mid_whiteout, "mid_new": mid_new + mid_opaque_new, "top_over": top_over,
        "top_new": top_new + top_dir_new, "visible": visible,
    }


def build_main(base: Path, spec: MainSpec) -> Stack:
    root = base / f"main-{spec.dirs}x{spec.files}"     # the quick and full stacks side by side
    params = {"kind": "main", "version": 1, **asdict(spec)}
    layout = _main_layout(spec)
    lowers = [root / "l0", root / "l1", root / "l2"]
    if not _fresh(root, params):
        for layer in lowers:
            layer.mkdir()
        l0, l1, l2 = lowers
        for d in layout["dirs"]:
            (l2 / d).mkdir()
        for name, k in layout["bottom"].items():
            _write(l2 / name, _content(k, 512 + (k * 37) % 3585))
        with open(l2 / BIG_NAME, "wb") as big:
            chunk = _content(0, 1 << 20) * 1
            for m in range(spec.big_mib):
                big.write(chunk[m % 4096:] + chunk[:m % 4096])
        mid_dirs = {n.split("/")[0] for n in layout["mid_over"] + layout["mid_whiteout"]
                    + layout["mid_new"]}
        for d in sorted(mid_dirs):
            (l1 / d).mkdir()
        os.setxattr(l1 / layout["opaque_dir"], OPAQUE_XATTR, b"y")
        for name in layout["mid_over"]:
            _write(l1 / name, _content(layout["bottom"][name], 700, salt=1))
        for name in layout["mid_whiteout"]:
            os.mknod(l1 / name, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        for n, name in enumerate(layout["mid_new"]):
            _write(l1 / name, _content(n, 900, salt=2))
        top_dirs = {n.split("/")[0] for n in layout["top_over"] + layout["top_new"]}
        for d in sorted(top_dirs):
            (l0 / d).mkdir()
        for name in layout["top_over"]:
            _write(l0 / name, _content(layout["bottom"][name], 600, salt=3))
        for n, name in enumerate(layout["top_new"]):
            _write(l0 / name, _content(n, 800, salt=4))
        os.sync()

    visible = layout["visible"]
    all_dirs = sorted({n.split("/")[0] for n in visible})
    missing = list(layout["mid_whiteout"]) + [
        f"{d}/x{j:03d}" for d in layout["dirs"] for j in range(spec.missing_per_dir)]
    copyup = visible[0::10][:spec.copyup]
    unlink = visible[5::10][:spec.unlink]
    per_dir = spec.create // spec.create_dirs
    create = [f"{layout['dirs'][i]}/new{j:04d}" for i in range(spec.create_dirs)
              for j in range(per_dir)]
    lists_dir = root / "lists"
    lists = {
        "files": _write_list(lists_dir / "files.txt", visible),
        "dirs": _write_list(lists_dir / "dirs.txt", ["."] + all_dirs),
        "missing": _write_list(lists_dir / "missing.txt", missing),
        "read": _write_list(lists_dir / "read.txt", visible[0::spec.read_every]),
        "copyup": _write_list(lists_dir / "copyup.txt", copyup),
        "unlink": _write_list(lists_dir / "unlink.txt", unlink),
        "create": _write_list(lists_dir / "create.txt", create),
        "big": _write_list(lists_dir / "big.txt", [BIG_NAME]),
    }
    if not (root / ".complete").exists():
        (root / ".complete").write_text(json.dumps(params))
    return Stack(root, lowers, lists, expected_files=len(visible) + 1,
                 expected_dirs=len(all_dirs))


# ---- the scaling stacks --------------------------------------------------------------------

def build_scale(base: Path, spec: ScaleSpec) -> Stack:
    root = base / f"scale-f{spec.files}-l{spec.layers}"
    params = {"kind": "scale", "version": 1, **asdict(spec)}
    lowers = [root / f"l{n:02d}" for n in range(spec.layers)]
    names = [f"d{k % spec.dirs:03d}/f{k:06d}" for k in range(spec.files)]
    if not _fresh(root, params):
        for layer in lowers:
            layer.mkdir()
            for i in range(spec.dirs):
                (layer / f"d{i:03d}").mkdir()
        for k, name in enumerate(names):
            _write(lowers[k % spec.layers] / name, _content(k, 100))
        os.sync()
    lists_dir = root / "lists"
    lists = {
        "files": _write_list(lists_dir / "files.txt", sorted(names)),
        "dirs": _write_list(lists_dir / "dirs.txt",
                            ["."] + [f"d{i:03d}" for i in range(spec.dirs)]),
    }
    if not (root / ".complete").exists():
        (root / ".complete").write_text(json.dumps(params))
    return Stack(root, lowers, lists, expected_files=spec.files, expected_dirs=spec.dirs)
