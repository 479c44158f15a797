"""Real workloads: what users run on a container's overlay, timed as whole commands for each
implementation over the same lower layers.

Each workload gets a fresh mount (its own upper and work dir), then `sync` and a drop of the
page cache, so that it starts cold, then its commands, each timed from start to exit:

- mount: the mount command from start to return (`mount_return`), and to the first `stat` of
  the merged root answered (`mount_first_stat`: a FUSE daemon's own start-up included);
  repeated, warm, on fresh mount points;
- untar, rm_rf: extract a tarball of small files into the mount (the tarball is outside it),
  then `rm -rf` what was extracted;
- git_status, git_log_p: `git status` and `git log -p | wc -c` in a repository whose `.git`
  and work tree are in a lower layer;
- make: `make -j2` of a generated C project in a lower layer (the objects land in the upper);
- py_import: importing a generated package tree, with its .pyc files, from a lower layer.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import impls
from .phases import Metric
from .stacks import _fresh

WORKLOAD_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("mount_return", "mount command, start to return", "s"),
    Metric("mount_first_stat", "mount command + first stat of the root", "s"),
    Metric("untar", "tar -x of small files into the mount", "s"),
    Metric("rm_rf", "rm -rf of what tar extracted", "s"),
    Metric("git_status", "git status (repository in a lower)", "s"),
    Metric("git_log_p", "git log -p | wc -c (repository in a lower)", "s"),
    Metric("make", "make -j2 of a C project in a lower", "s"),
    Metric("py_import", "import of a package tree in a lower", "s"),
)}


@dataclass(frozen=True)
class WorkloadSpec:
    tar_files: int = 10_000
    git_files: int = 300
    git_commits: int = 150
    c_files: int = 48
    py_packages: int = 20
    py_modules: int = 25        # per package
    mount_repeats: int = 10


QUICK = WorkloadSpec(tar_files=1_000, git_files=40, git_commits=20, c_files=12, py_packages=4,
                     py_modules=10, mount_repeats=3)


@dataclass
class Layers:
    """The built inputs: one lower layer per workload, an empty one, and the tarball."""

    tarball: Path
    empty_lower: Path
    git: Path
    c_project: Path
    py_tree: Path


def build(base: Path, spec: WorkloadSpec) -> Layers:
    root = base / f"workloads-{spec.tar_files}"
    layers = Layers(root / "files.tar", root / "empty", root / "git", root / "cproj",
                    root / "pytree")
    params = {"kind": "workloads", "version": 1, **asdict(spec)}
    if _fresh(root, params):
        return layers
    layers.empty_lower.mkdir()
    _build_tarball(root / "tar-src", layers.tarball, spec.tar_files)
    _build_git(layers.git, spec.git_files, spec.git_commits)
    _build_c_project(layers.c_project, spec.c_files)
    _build_py_tree(layers.py_tree, spec.py_packages, spec.py_modules)
    (root / ".complete").write_text(json.dumps(params))
    return layers


def _build_tarball(src: Path, tarball: Path, files: int) -> None:
    per_dir = 100
    for k in range(files):
        path = src / f"d{k // per_dir:03d}" / f"f{k % per_dir:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes((k * 7 + i) % 251 for i in range(512 + k % 3584)))
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="extracted")


def _git(repo: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.org",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.org",
               GIT_AUTHOR_DATE="2026-01-01T00:00:00Z", GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def _build_git(repo: Path, files: int, commits: int) -> None:
    """A repository whose history touches a few files per commit, loose objects packed."""
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    for n in range(commits):
        for k in range(n % 7, files, max(1, files // 8)):
            path = repo / f"src/m{k % 10}/file{k:04d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(f"commit {n} line for file {k}\n" * 3)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"change {n}")
    _git(repo, "gc", "-q")


def _build_c_project(root: Path, files: int) -> None:
    root.mkdir(parents=True)
    for k in range(files):
        body = "\n".join(f"int f{k}_{j}(int x) {{ return x * {j + 1} + {k}; }}"
                         for j in range(40))
        (root / f"unit{k:03d}.c").write_text(f'#include "common.h"\n{body}\n')
    calls = " + ".join(f"f{k}_0(1)" for k in range(files))
    decls = "\n".join(f"int f{k}_0(int x);" for k in range(files))
    (root / "common.h").write_text("#include <stdio.h>\n")
    (root / "main.c").write_text(f'#include "common.h"\n{decls}\n'
                                 f'int main(void) {{ printf("%d\\n", {calls}); return 0; }}\n')
    (root / "Makefile").write_text(
        "SRCS := $(wildcard *.c)\nOBJS := $(SRCS:.c=.o)\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n"
        "%.o: %.c common.h\n\t$(CC) -O1 -c -o $@ $<\n")


def _build_py_tree(root: Path, packages: int, modules: int) -> None:
    top = root / "benchpkg"
    top.mkdir(parents=True)
    (top / "__init__.py").write_text("".join(f"from . import p{p:02d}\n"
                                             for p in range(packages)))
    for p in range(packages):
        pkg = top / f"p{p:02d}"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("".join(f"from . import m{m:02d}\n"
                                                 for m in range(modules)))
        for m in range(modules):
            funcs = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(30))
            (pkg / f"m{m:02d}.py").write_text(f'"""Module {p}.{m}."""\nimport os\n{funcs}\n'
                                               f"CONSTANT = {p * 1000 + m}\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(top)], check=True)


# ---- running ---------------------------------------------------------------------------------

Timed = Callable[[Path], dict[str, float]]


def _run(command: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", command], cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def tar_workload(layers: Layers) -> Timed:
    def timed(mnt: Path) -> dict[str, float]:
        untar = _run(f"tar -xf {shlex.quote(str(layers.tarball))}", mnt)
        return {"untar": untar, "rm_rf": _run("rm -rf extracted", mnt)}
    return timed


def git_workload(layers: Layers) -> Timed:
    def timed(mnt: Path) -> dict[str, float]:
        return {"git_status": _run("git status --porcelain > /dev/null", mnt),
                "git_log_p": _run("git log -p | wc -c > /dev/null", mnt)}
    return timed


def make_workload(layers: Layers) -> Timed:
    def timed(mnt: Path) -> dict[str, float]:
        return {"make": _run("make -s -j2", mnt)}
    return timed


def py_import_workload(layers: Layers) -> Timed:
    def timed(mnt: Path) -> dict[str, float]:
        # -B: the .pyc files come from the layer, nothing is written back
        command = f"{shlex.quote(sys.executable)} -I -B -c 'import sys; " \
                  "sys.path.insert(0, \".\"); import benchpkg'"
        return {"py_import": _run(command, mnt)}
    return timed


def workloads(layers: Layers) -> list[tuple[str, Path, Timed]]:
    """(name, the lower layer it mounts, the timed commands)."""
    return [("untar", layers.empty_lower, tar_workload(layers)),
            ("git", layers.git, git_workload(layers)),
            ("make", layers.c_project, make_workload(layers)),
            ("py_import", layers.py_tree, py_import_workload(layers))]
