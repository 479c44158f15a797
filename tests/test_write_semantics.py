"""The write path, each operation checked against kernel overlayfs on an identical stack:
the outcome of every call, the merged view afterwards, and what landed in the upper dir
(whiteouts, opaque markers, copied-up files). Targets: lower-only, merged, pure upper and
whited-out names."""

from __future__ import annotations

import os

import pytest

from overlayfuse.compare.trees import raw_snapshot, snapshot
from overlayfuse.compare.fsops import apply_all
from overlayfuse.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE

LOWERS = [
    {   # top lower
        "d/a": "file:a-top", "d/sub/s": "file:s", "over": "file:over-top", "wh": "whiteout",
        "lonly": "dir", "lonly/f": "file:f", "lonly/g": "file:g", "emptyl": "dir",
        "xa": "file:x", "opq": "opaque", "opq/in": "file:in",
    },
    {   # bottom lower
        "d/b": "file:b", "over": "file:over-bottom", "wh": "file:hidden", "bottom": "file:bottom",
        "hl1": "file:hardlinked", "hl2": "link:hl1", "sym": "symlink:bottom", "fifo": "fifo",
        "opq/hidden": "file:hidden", "deep/er/est": "file:deep", "ldir": "dir", "ldir/k": "file:k",
    },
]
UPPER = {"pure": "dir", "pure/p": "file:p", "pure/q": "dir", "u": "file:u", "d/up": "file:up",
         "emptyu": "dir"}

TARGETS = {"lower": "bottom", "merged-file": "over", "upper": "u", "whiteout": "wh",
           "in-merged-dir": "d/a", "deep": "deep/er/est", "symlink": "sym"}

SCENARIOS: dict[str, list[tuple]] = {
    # copy-up triggers
    "open-wronly": [("open", "{t}", os.O_WRONLY)],
    "open-rdwr": [("open", "{t}", os.O_RDWR)],
    "open-append": [("open", "{t}", os.O_WRONLY | os.O_APPEND)],
    "open-trunc": [("open", "{t}", os.O_WRONLY | os.O_TRUNC), ("read", "{t}")],
    "write": [("write", "{t}", 2, "XY"), ("read", "{t}")],
    "append": [("append", "{t}", "+more"), ("read", "{t}")],
    "truncate": [("truncate", "{t}", 3), ("read", "{t}"), ("truncate", "{t}", 10)],
    "chmod": [("chmod", "{t}", 0o600), ("stat", "{t}")],
    "chmod-same": [("chmod", "{t}", 0o644)],
    "chown": [("chown", "{t}", 1000, 1000), ("stat", "{t}")],
    "utime": [("utime", "{t}", 10**9, 2 * 10**9)],
    "setxattr": [("setxattr", "{t}", "user.k", "v"), ("getxattr", "{t}", "user.k"),
                 ("listxattr", "{t}")],
    "removexattr-missing": [("removexattr", "{t}", "user.none")],
    "link": [("link", "{t}", "newlink"), ("stat", "newlink"), ("stat", "{t}")],
    "rename": [("rename", "{t}", "renamed"), ("stat", "renamed"), ("stat", "{t}")],
    "rename-into-dir": [("rename", "{t}", "d/moved"), ("listdir", "d")],
    "rename-noreplace": [("rename", "{t}", "over", RENAME_NOREPLACE)],
    "rename-exchange": [("rename", "{t}", "u", RENAME_EXCHANGE), ("read", "u")],
    "rename-bad-flag": [("rename", "{t}", "x2", 4)],
    # no copy-up
    "open-rdonly": [("open", "{t}", os.O_RDONLY), ("read", "{t}")],
    "open-rdonly-creat": [("open", "{t}", os.O_RDONLY | os.O_CREAT)],
    "access": [("access", "{t}", os.W_OK)],
    "getxattr": [("getxattr", "{t}", "user.none")],
    "utime-omit": [("utime_omit", "{t}")],
    # removal
    "unlink": [("unlink", "{t}"), ("stat", "{t}"), ("listdir", ".")],
    "unlink-recreate": [("unlink", "{t}"), ("create", "{t}", 0o640), ("stat", "{t}"),
                        ("read", "{t}")],
    "unlink-mkdir": [("unlink", "{t}"), ("mkdir", "{t}", 0o700), ("listdir", "{t}")],
    "unlink-symlink": [("unlink", "{t}"), ("symlink", "target", "{t}"), ("readlink", "{t}")],
    "create-existing": [("create", "{t}", 0o600)],
    "mkdir-existing": [("mkdir", "{t}")],
}

DIR_SCENARIOS: dict[str, list[tuple]] = {
    "rmdir-nonempty": [("rmdir", "d")],
    "rmdir-emptied": [("unlink", "d/a"), ("unlink", "d/b"), ("unlink", "d/up"),
                      ("unlink", "d/sub/s"), ("rmdir", "d/sub"), ("rmdir", "d"),
                      ("listdir", "."), ("mkdir", "d"), ("listdir", "d")],
    "rmdir-lower-only": [("unlink", "lonly/f"), ("unlink", "lonly/g"), ("rmdir", "lonly"),
                         ("stat", "lonly"), ("mkdir", "lonly"), ("listdir", "lonly")],
    "rmdir-empty-lower": [("rmdir", "emptyl"), ("stat", "emptyl")],
    "rmdir-pure-upper": [("rmdir", "emptyu"), ("rmdir", "pure/q"), ("listdir", "pure")],
    "rename-merged-dir": [("rename", "d", "d2"), ("listdir", ".")],
    "rename-lower-dir": [("rename", "lonly", "lonly2")],
    "rename-pure-dir": [("rename", "pure", "pure2"), ("listdir", "pure2"),
                        ("listdir", "pure2/q")],
    "rename-pure-into-merged": [("rename", "pure/q", "d/q"), ("listdir", "d"),
                                ("listdir", "d/q")],
    "rename-pure-over-empty-lower": [("rename", "pure/q", "emptyl"), ("listdir", "emptyl")],
    "rename-pure-over-nonempty": [("rename", "pure", "d")],
    "rename-pure-over-nonempty-pure": [("mkdir", "pure/q/z"), ("rename", "emptyu", "pure")],
    "rename-dir-over-file": [("rename", "pure", "u")],
    "rename-file-over-dir": [("rename", "u", "emptyu")],
    "rename-exchange-dirs": [("rename", "pure", "emptyu", RENAME_EXCHANGE),
                             ("listdir", "emptyu")],
    "rename-exchange-merged": [("rename", "pure", "d", RENAME_EXCHANGE)],
    "create-in-lower-dir": [("create", "lonly/new", 0o600), ("mkdir", "deep/er/nd"),
                            ("symlink", "t", "ldir/sl"), ("mknod", "d/sub/ff", "fifo"),
                            ("link", "bottom", "lonly/hl"), ("listdir", "lonly")],
    "rename-dir-onto-whiteout": [("mkdir", "nd"), ("create", "nd/f", 0o644),
                                 ("rename", "nd", "wh"), ("listdir", "wh"),
                                 ("rename", "pure", "bottom2"), ("unlink", "bottom"),
                                 ("rename", "bottom2", "bottom"), ("listdir", "bottom")],
    "modes-and-setgid": [("chmod", "pure", 0o2775), ("mkdir", "pure/sg", 0o755),
                         ("create", "pure/sg/f", 0o644), ("stat", "pure/sg"),
                         ("stat", "pure/sg/f"), ("mkdir", "m1", 0o777), ("stat", "m1"),
                         ("create", "c1", 0o4755), ("stat", "c1"), ("mkdir", "m2", 0o1777),
                         ("stat", "m2"), ("chown", "pure", 1000, 1000),
                         ("create", "pure/owned", 0o2755), ("stat", "pure/owned")],
    "rename-refused-copies-nothing": [("rename", "sym", "lonly", RENAME_EXCHANGE),
                                      ("rename", "pure/q", "ldir"), ("rename", "u", "d"),
                                      ("rename", "bottom", "u", RENAME_NOREPLACE)],
    "mkdir-new": [("mkdir", "newdir", 0o750), ("stat", "newdir"), ("create", "newdir/f", 0o600),
                  ("listdir", "newdir")],
    "mkdir-over-whiteout": [("mkdir", "wh"), ("listdir", "wh")],
    "opaque-dir": [("listdir", "opq"), ("unlink", "opq/in"), ("rmdir", "opq"), ("stat", "opq")],
    "copy-up-deep-parents": [("chmod", "deep/er/est", 0o600), ("stat", "deep"),
                             ("stat", "deep/er")],
    "chmod-dir": [("chmod", "d", 0o700), ("stat", "d"), ("chmod", "lonly", 0o711)],
    "setxattr-dir": [("setxattr", "lonly", "user.dx", "1"), ("listxattr", "lonly")],
    "private-xattr": [("setxattr", "u", "trusted.overlay.opaque", "y"),
                      ("getxattr", "u", "trusted.overlay.opaque"), ("listxattr", "u")],
    "fifo-copy-up": [("chmod", "fifo", 0o600), ("stat", "fifo"), ("rename", "fifo", "fifo2"),
                     ("unlink", "fifo2")],
    "mknod-whiteout": [("mknod", "newdev", "chr", 0, 0)],
    "mknod-kinds": [("mknod", "nf", "fifo"), ("mknod", "ns", "sock"), ("mknod", "nc", "chr", 1, 3),
                    ("stat", "nc"), ("mknod", "nr", "reg")],
    "hardlink-break": [("write", "hl1", 0, "CHANGED"), ("read", "hl1"), ("read", "hl2"),
                       ("stat", "hl1"), ("stat", "hl2")],
    "hardlink-upper": [("create", "h1", 0o644), ("link", "h1", "h2"), ("write", "h2", 0, "w"),
                       ("read", "h1"), ("unlink", "h1"), ("stat", "h2")],
    "symlink-over-whiteout": [("symlink", "x", "wh"), ("readlink", "wh")],
    "link-dir": [("link", "d", "dlink")],
    "rmdir-file": [("rmdir", "u")],
    "unlink-dir": [("unlink", "d")],
    "rename-to-self": [("rename", "bottom", "bottom"), ("stat", "bottom")],
    "rename-hardlinks-same-inode": [("create", "h1", 0o644), ("link", "h1", "h2"),
                                    ("rename", "h1", "h2"), ("listdir", ".")],
    "rename-over-lower": [("rename", "u", "bottom"), ("read", "bottom"), ("stat", "u")],
    "rename-lower-over-lower": [("rename", "xa", "bottom"), ("read", "bottom"), ("stat", "xa")],
    "rename-back": [("rename", "bottom", "tmpname"), ("rename", "tmpname", "bottom"),
                    ("read", "bottom")],
}


def _expand(ops: list[tuple], target: str) -> list[tuple]:
    return [tuple(arg.replace("{t}", target) if isinstance(arg, str) else arg for arg in op)
            for op in ops]


def _run(both, ops: list[tuple]) -> None:
    with both(LOWERS, UPPER) as (kernel, ofs):
        kernel_results = apply_all(kernel["merged"], ops)
        ofs_results = apply_all(ofs["merged"], ops)
        assert ofs_results == kernel_results, list(zip(ops, kernel_results, ofs_results))
        assert snapshot(ofs["merged"]) == snapshot(kernel["merged"])
    assert raw_snapshot(ofs["upper"]) == raw_snapshot(kernel["upper"])
    for index, lower in enumerate(ofs["lowers"]):
        assert raw_snapshot(lower) == raw_snapshot(kernel["lowers"][index])


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_file_operation_matches_kernel(both, scenario: str, target: str) -> None:
    _run(both, _expand(SCENARIOS[scenario], target))


@pytest.mark.parametrize("scenario", list(DIR_SCENARIOS))
def test_namespace_operation_matches_kernel(both, scenario: str) -> None:
    _run(both, DIR_SCENARIOS[scenario])
