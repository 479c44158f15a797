"""CPU per request: what the daemon itself spends, not the wall time (which on a shared or
loaded machine says more about the other processes than about the daemon).

Each round mounts the main stack afresh, drops the kernel's caches, runs one workload in
this process and reads the daemon's utime + stime from /proc/PID/stat before and after:

- `stat`: an lstat of every visible file (a LOOKUP each, and one per dir);
- `readdir`: a scandir of every dir (OPENDIR, READDIRPLUS, RELEASEDIR; a LOOKUP per entry);
- `read`: open, read and close of every 5th file (LOOKUP, OPEN, READ, RELEASE);
- `walk`: os.walk of the mount and an lstat of every file found (per dir: READDIRPLUS
  and its LOOKUPs, as `du` does);
- `create`: create, write 1 KiB and close of 3,000 new files in 30 lower dirs (LOOKUP,
  CREATE, WRITE, RELEASE, and a GETATTR of the changed dir);
- `writes`: 20,000 appends of 8 bytes each to one new file (a WRITE each);
- `copyup`: open for appending, write 1 byte and close of 1,000 lower files (LOOKUP, OPEN
  with the copy-up, WRITE, RELEASE);
- `unlink`: unlink of 1,000 lower files (LOOKUP, UNLINK: a whiteout each).

The figure is the daemon's CPU divided by the files (dirs, writes) the workload touched.
Rounds of the implementations alternate, so a change in the machine's load falls on all of
them. The floor serves only `stat`, `readdir`, `read` and `walk` (it has nothing to write
to).

    python -m bench.cpu [--rounds N] [--workloads stat,readdir] NAME=COMMAND ...

COMMAND is the mount command (split on spaces; LOWER/UPPER options are appended as `-o`),
e.g. `new=.venv/bin/overlayfuse old=env PYTHONPATH=/tmp/old .venv/bin/python -m overlayfuse`
or `fuse-overlayfs=fuse-overlayfs`; `floor` names the minimal filesystem (bench/floorfs.py).

`--in-process` instead awaits `Operations.lookup` for every file of a fresh core (no FUSE,
no mount) and reports the CPU per lookup: overlayfuse's own work alone.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import impls
from .stacks import MainSpec, Stack, build_main
from .worker import OPS

TICK = os.sysconf("SC_CLK_TCK")
APPENDS = 20_000
# workload: (the list of names it works on, the worker's op, extra request fields)
WORKLOADS: dict[str, tuple[str | None, str, dict[str, object]]] = {
    "stat": ("files", "stat", {}), "readdir": ("dirs", "readdir", {}),
    "read": ("read", "read", {}), "walk": ("dirs", "walk", {}),
    "create": ("create", "create", {"size": 1024}),
    "writes": (None, "appends", {"writes": APPENDS}), "copyup": ("copyup", "copyup", {}),
    "unlink": ("unlink", "unlink", {}),
}
FLOOR_WORKLOADS = {"stat", "readdir", "read", "walk"}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's user and system CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mount(command: str, stack: Stack, scratch: Path, serial: int) -> impls.Mounted:
    if command == impls.FLOOR:
        return impls.mount_floor([stack.lists["files"]], scratch, serial)
    where = scratch / str(serial)
    upper, work, mnt = where / "upper", where / "work", where / "mnt"
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    argv = command.split() + ["-o", f"lowerdir={':'.join(map(str, stack.lowers))},"
                              f"upperdir={upper},workdir={work}", str(mnt)]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    os.stat(mnt)
    return impls.Mounted(command, mnt, upper, work, impls.find_daemon(mnt))


def one_round(command: str, stack: Stack, workload: str, scratch: Path, serial: int
              ) -> tuple[float, float]:
    """The daemon's CPU (user + system, and system alone) per item of the workload, in µs."""
    names, op, extra = WORKLOADS[workload]
    m = mount(command, stack, scratch, serial)
    try:
        paths = []
        if names is not None:
            with open(stack.lists[names], encoding="utf-8") as f:
                paths = [str(m.mnt / line.strip()) for line in f if line.strip()]
        drop_caches()
        assert m.pid is not None
        user, system = cpu_seconds(m.pid)
        result = OPS[op](paths, {"root": str(m.mnt), **extra})
        user_after, system_after = cpu_seconds(m.pid)
        if result.get("errors"):
            raise RuntimeError(f"{command}: {workload}: {result}")
        system = system_after - system
        items = len(paths) or result["count"]     # (walk: per dir; writes: per write)
        return (user_after - user + system) / items * 1e6, system / items * 1e6
    finally:
        impls.unmount(m)


def in_process(stack: Stack, rounds: int) -> None:
    """CPU per Operations.lookup awaited directly, on a fresh tree each round."""
    import trio

    from overlayfuse import layers
    from overlayfuse.ops import Operations
    from overlayfuse.options import parse_args
    from overlayfuse.tree import Tree

    with open(stack.lists["files"], encoding="utf-8") as f:
        files = [line.strip().encode().split(b"/") for line in f if line.strip()]
    with tempfile.TemporaryDirectory(prefix="ofs-cpu-") as tmp:
        upper, work, mnt = (Path(tmp, d) for d in ("upper", "work", "mnt"))
        for d in (upper, work, mnt):
            d.mkdir()
        given = (f"lowerdir={':'.join(map(str, stack.lowers))},upperdir={upper},"
                 f"workdir={work}")

        async def lookups(ops: Operations) -> None:
            root = ops.tree.root.ino
            dirs: dict[bytes, int] = {}
            for parts in files:
                parent = root
                for part in parts[:-1]:
                    ino = dirs.get(part)
                    if ino is None:
                        ino = dirs[part] = (await ops.lookup(parent, part, None)).st_ino
                    parent = ino
                await ops.lookup(parent, parts[-1], None)

        times = []
        for _ in range(rounds):
            stack_ = layers.open_stack(parse_args(["-o", given, str(mnt)]))
            tree = Tree(stack_)
            ops = Operations(tree)
            gc.collect()        # the last round's tree is garbage now, not in this round
            start = time.process_time()
            trio.run(lookups, ops)
            times.append((time.process_time() - start) / len(files) * 1e6)
            tree.close()
            stack_.close()
        print(f"in-process lookup: median {statistics.median(times):.1f} µs, "
              f"min {min(times):.1f} µs ({rounds} rounds, {len(files)} files)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="stat")
    parser.add_argument("--base", default="/var/tmp/ofs-bench-stacks")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("impls", nargs="*", metavar="NAME=COMMAND")
    args = parser.parse_args()
    stack = build_main(Path(args.base), MainSpec(big_mib=1))
    if args.in_process:
        in_process(stack, args.rounds)
        return 0
    named = [item.split("=", 1) for item in args.impls]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="ofs-cpu-"))
    serial = 0
    try:
        for _ in range(args.rounds):
            for workload in args.workloads.split(","):
                for name, command in named:
                    if command == impls.FLOOR and workload not in FLOOR_WORKLOADS:
                        continue
                    serial += 1
                    results.setdefault((name, workload), []).append(
                        one_round(command, stack, workload, scratch, serial))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"daemon CPU per item (µs), {args.rounds} rounds alternating, load {' '.join(load)}")
    for (name, workload), values in results.items():
        total = [v[0] for v in values]
        print(f"  {workload:8} {name:16} median {statistics.median(total):7.1f}  "
              f"min {min(total):7.1f}  (system {statistics.median(v[1] for v in values):.1f})"
              f"  all {' '.join(f'{v:.0f}' for v in total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
