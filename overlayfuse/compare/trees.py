"""Build layer directories from a compact description, and snapshot a tree for comparison.

A layer spec maps a relative path to what it holds:
    "file:TEXT"            regular file with TEXT
    "dir"                  directory
    "opaque"               directory marked trusted.overlay.opaque=y
    "user-opaque"          directory marked user.overlay.opaque=y
    "redirect:PATH"        directory with trusted.overlay.redirect=PATH (a renamed dir)
    "xwhiteouts-dir"       directory marked trusted.overlay.opaque=x: it holds xwhiteouts
    "xwhiteout"            empty file with trusted.overlay.whiteout: a whiteout (Linux >= 6.7)
                           in an xwhiteouts-dir of a lower layer, a plain empty file elsewhere
    "oci-opaque"           directory holding a `.wh..wh..opq` file
    "symlink:TARGET"       symbolic link
    "whiteout"             chardev 0/0
    "oci-whiteout"         a `.wh.NAME` regular file beside NAME's place (path names NAME)
    "fifo"                 named pipe
    "link:OTHER"           hard link to OTHER (an earlier path in the same layer)
Parents are created as plain directories as needed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def build_layer(root: Path, spec: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        kind, _, arg = what.partition(":")
        if kind == "file":
            path.write_text(arg)
        elif kind == "dir":
            path.mkdir(exist_ok=True)
        elif kind in ("opaque", "user-opaque"):
            path.mkdir(exist_ok=True)
            prefix = "trusted" if kind == "opaque" else "user"
            os.setxattr(path, f"{prefix}.overlay.opaque", b"y")
        elif kind == "redirect":
            path.mkdir(exist_ok=True)
            os.setxattr(path, "trusted.overlay.redirect", arg.encode())
        elif kind == "xwhiteouts-dir":
            path.mkdir(exist_ok=True)
            os.setxattr(path, "trusted.overlay.opaque", b"x")
        elif kind == "xwhiteout":
            path.write_bytes(b"")
            os.setxattr(path, "trusted.overlay.whiteout", b"")
        elif kind == "oci-opaque":
            path.mkdir(exist_ok=True)
            (path / ".wh..wh..opq").write_bytes(b"")
        elif kind == "symlink":
            os.symlink(arg, path)
        elif kind == "whiteout":
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif kind == "oci-whiteout":
            (path.parent / f".wh.{path.name}").write_bytes(b"")
            os.chmod(path.parent / f".wh.{path.name}", 0)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "link":
            os.link(root / arg, path)
        else:
            raise ValueError(f"unknown layer entry kind {what!r}")


def build_stack(base: Path, lowers: list[dict[str, str]], upper: dict[str, str] | None = None
                ) -> dict[str, Path]:
    """Lay out base/lower0 (top) .. lowerN, base/upper, base/work, base/merged."""
    paths = {"lowers": [], "base": base}
    for index, spec in enumerate(lowers):
        layer = base / f"lower{index}"
        build_layer(layer, spec)
        paths["lowers"].append(layer)
    paths["upper"] = base / "upper"
    build_layer(paths["upper"], upper or {})
    paths["work"] = base / "work"
    paths["work"].mkdir(exist_ok=True)
    paths["merged"] = base / "merged"
    paths["merged"].mkdir(exist_ok=True)
    return paths  # type: ignore[return-value]


def describe(path: Path, with_xattrs: bool = True) -> dict[str, object]:
    """What a user sees of one object (no inode numbers or times)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return {"error": e.errno}
    info: dict[str, object] = {
        "type": stat.S_IFMT(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    if stat.S_ISREG(st.st_mode):
        info["size"] = st.st_size
        info["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()
        info["nlink"] = st.st_nlink
    elif stat.S_ISLNK(st.st_mode):
        info["target"] = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info["rdev"] = st.st_rdev
    if with_xattrs:
        try:
            names = sorted(n for n in os.listxattr(path, follow_symlinks=False)
                           if n.startswith("user."))
            info["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False) for n in names}
        except OSError:
            info["xattrs"] = None
    return info


def snapshot(root: Path, with_xattrs: bool = True) -> dict[str, dict[str, object]]:
    """Every object under root, by relative path, with what `describe` reports."""
    result: dict[str, dict[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            result[str(full.relative_to(root))] = describe(full, with_xattrs)
    return result


def raw_snapshot(root: Path) -> dict[str, dict[str, object]]:
    """Like snapshot, but for a layer on disk: also the private overlay xattrs."""
    result: dict[str, dict[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            info = describe(full, with_xattrs=False)
            try:
                names = sorted(n for n in os.listxattr(full, follow_symlinks=False)
                               if ".overlay." in n and not n.endswith((".origin", ".impure",
                                                                       ".uuid")))
                info["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False) for n in names}
            except OSError:
                info["xattrs"] = None
            result[str(full.relative_to(root))] = info
    return result
