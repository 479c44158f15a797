"""What is measured: the phases of the main run, their metrics, and the targets.

A phase runs on a fresh mount, after `sync` and `echo 3 > /proc/sys/vm/drop_caches`, so that
it starts cold for the kernel's caches and for the daemon. Its steps run in order; untimed
steps warm the caches for the timed ones after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    op: str                     # a worker operation (bench/worker.py)
    names: str | None           # the stack list it works on (None: the whole tree)
    metric: str | None = None   # recorded under this name; None: an untimed warm-up
    passes: int = 1             # warm steps: median of several passes
    drop_before: bool = False   # drop the kernel's caches again just before this step


@dataclass(frozen=True)
class Phase:
    name: str
    steps: tuple[Step, ...]
    fuse_only: bool = False
    floor: bool = False         # metadata only: also timed on the floor (bench/floorfs.py)


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    unit: str                   # "s" (lower is better), "MB/s" or "ops/s" (higher is better)
    names: str | None = None    # the list whose length is the operation count

    @property
    def higher_is_better(self) -> bool:
        return self.unit in ("MB/s", "ops/s")


PHASES: tuple[Phase, ...] = (
    Phase("stat_cold", (Step("stat", "files", "stat_cold"),), floor=True),
    Phase("stat_warm", (Step("stat", "files"), Step("stat", "files", "stat_warm", passes=5)),
          floor=True),
    Phase("missing_warm", (Step("stat", "missing"),
                           Step("stat", "missing", "missing_warm", passes=5)), floor=True),
    Phase("readdir_cold", (Step("readdir", "dirs", "readdir_cold"),), floor=True),
    Phase("walk", (Step("walk", None, "walk_cold"), Step("walk", None, "walk_warm", passes=3)),
          floor=True),
    Phase("find_warm", (Step("find", None), Step("find", None, "find_warm", passes=3)),
          floor=True),
    Phase("read_small_cold", (Step("read", "read", "read_small_cold"),)),
    Phase("seqread", (Step("seqread", "big", "seqread_cold"),
                      Step("seqread", "big", "seqread_cached", passes=3))),
    Phase("create", (Step("create", "create", "create"),)),
    Phase("small_writes", (Step("appends", None, "small_writes"),)),
    Phase("copyup_small", (Step("copyup", "copyup", "copyup_small"),)),
    Phase("copyup_big", (Step("copyup", "big", "copyup_big"),)),
    Phase("unlink", (Step("unlink", "unlink", "unlink"),)),
)

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("stat_cold", "cold stat of every file", "s", "files"),
    Metric("stat_warm", "warm stat of every file", "s", "files"),
    Metric("missing_warm", "warm stat of missing names", "s", "missing"),
    Metric("readdir_cold", "cold readdir of every dir", "s", "dirs"),
    Metric("walk_cold", "cold walk (os.walk + lstat)", "s"),
    Metric("walk_warm", "warm walk (os.walk + lstat)", "s"),
    Metric("find_warm", "warm find(1) over the tree", "s"),
    Metric("read_small_cold", "cold read of small files", "s", "read"),
    Metric("seqread_cold", "sequential read of the big file", "MB/s", "big"),
    Metric("seqread_cached", "second read, from the page cache", "MB/s", "big"),
    Metric("create", "create + write 1 KiB + close", "s", "create"),
    Metric("small_writes", "O_APPEND writes of 8 bytes to one file", "s"),
    Metric("copyup_small", "copy-up of small files (append 1 byte)", "s", "copyup"),
    Metric("copyup_big", "copy-up of the big file (append 1 byte)", "s", "big"),
    Metric("unlink", "unlink of lower files (whiteouts)", "s", "unlink"),
)}

# The metrics of the phases also timed on the floor.
FLOOR_METRICS = tuple(step.metric for phase in PHASES if phase.floor for step in phase.steps
                      if step.metric is not None)

# Repeated cold walks on one mount, caches dropped before each: is the daemon's memory flat
# and its fd count bounded? FUSE implementations only; its own, single, round.
REPEAT_WALKS = 5


@dataclass(frozen=True)
class Target:
    key: str            # a metric, or a derived figure (see report.derived)
    against: str        # "fuse-overlayfs", "kernel", "floor", or "abs" (an absolute bound)
    op: str             # "<=" or ">="
    bound: float
    text: str
    extra: dict = field(default_factory=dict)


TARGETS: tuple[Target, ...] = (
    Target("stat_cold", "fuse-overlayfs", "<=", 1.0, "cold stat ≤ 1.0 × fuse-overlayfs"),
    Target("readdir_cold", "fuse-overlayfs", "<=", 1.0, "cold readdir ≤ 1.0 × fuse-overlayfs"),
    Target("walk_cold", "fuse-overlayfs", "<=", 1.0, "cold walk ≤ 1.0 × fuse-overlayfs"),
    Target("read_small_cold", "fuse-overlayfs", "<=", 1.0,
           "cold small-file reads ≤ 1.0 × fuse-overlayfs"),
    Target("stat_warm", "kernel", "<=", 1.2, "warm stat ≤ 1.2 × kernel"),
    Target("missing_warm", "kernel", "<=", 1.2, "warm missing-name lookups ≤ 1.2 × kernel"),
    Target("walk_warm", "fuse-overlayfs", "<=", 1.2, "warm walk ≤ 1.2 × fuse-overlayfs"),
    Target("find_warm", "fuse-overlayfs", "<=", 1.2, "warm find ≤ 1.2 × fuse-overlayfs"),
    Target("seqread_cold", "fuse-overlayfs", ">=", 1.0,
           "sequential read throughput ≥ 1.0 × fuse-overlayfs"),
    Target("seqread_cached", "kernel", ">=", 0.9,
           "second read (page cache) throughput ≥ 0.9 × kernel"),
    Target("create", "fuse-overlayfs", "<=", 1.5, "create 3,000 files ≤ 1.5 × fuse-overlayfs"),
    Target("small_writes", "fuse-overlayfs", "<=", 1.0,
           "small O_APPEND writes ≤ 1.0 × fuse-overlayfs"),
    Target("copyup_big", "fuse-overlayfs", "<=", 1.2,
           "copy-up of the big file ≤ 1.2 × fuse-overlayfs"),
    Target("layers_64_vs_1", "abs", "<=", 2.0,
           "cold stat, 64 lowers vs 1 lower (overlayfuse's own ratio) ≤ 2×"),
    Target("rss_max_stat", "abs", "<=", 150.0,
           "daemon RSS after cold stat of the largest scaling stack ≤ 150 MB"),
    Target("rss_growth", "abs", "<=", 1.10,
           "daemon RSS flat across repeated walks (last / first ≤ 1.10)"),
    Target("fd_growth", "abs", "<=", 16.0,
           "open fds bounded across repeated walks (last − first ≤ 16)"),
    Target("mount_ms", "abs", "<=", 40.0, "mount command ≤ 40 ms (median)"),
    *(Target(key, "fuse-overlayfs", "<=", 1.0, f"{key} ≤ 1.0 × fuse-overlayfs")
      for key in ("mount_first_stat", "untar", "rm_rf", "git_status", "git_log_p", "make",
                  "py_import")),
    Target("copyup_small", "fuse-overlayfs", "<=", 1.5,
           "copy-up of small files ≤ 1.5 × fuse-overlayfs"),
    *(Target(f"conc_{op}_4", "fuse-overlayfs", ">=", 1.0,
             f"{what}, 4 clients: throughput ≥ 1.0 × fuse-overlayfs")
      for op, what in (("stat", "cold stat"), ("read", "cold small-file reads"))),
    *(Target(metric, "floor", "<=", 1.5, f"{METRICS[metric].title} ≤ 1.5 × the floor")
      for metric in FLOOR_METRICS),
    Target("podman_run", "fuse-overlayfs", "<=", 1.25,
           "podman run --rm IMG true ≤ 1.25 × fuse-overlayfs"),
    Target("podman_build", "fuse-overlayfs", "<=", 1.0,
           "podman build, 4 steps ≤ 1.0 × fuse-overlayfs"),
)
