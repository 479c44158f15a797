"""Crash safety (hardening item 2): SIGKILL of the daemon at random points.

A seeded random sequence of copy-ups (writes into large lower files, chmod, truncate,
setxattr), creates, mkdirs, symlinks, links, renames, unlinks and rmdirs is first run on kernel
overlayfs over a copy of the same upper dir, with a snapshot of the view after every
operation: states[0..K]. The same sequence then runs through overlayfuse (the daemon in the
foreground, as a child of the test) while the test SIGKILLs the daemon at a random moment
inside a randomly chosen operation. After the dead mount is cleaned up (`fusermount3 -u`),
overlayfuse is mounted again, and:

- the view is states[k] or states[k+1], where k operations had completed (the (k+1)th was in
  flight): never half an operation;
- the workdir's staging area is empty, and no staging name reached the upper dir;
- the lower layers are byte-identical (also checked by conftest.lowers_never_modified);
- kernel overlayfs reads the crashed upper dir as the same tree (the next twin run starts
  from it).

Iterations are chained: the remount after a crash is where the next sequence runs, and every
few iterations the upper dir starts afresh. 26 kills in CI (two aimed at each kind of operation); OVERLAYFUSE_SOAK=1 runs 300.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import _layer_digest
from hardening import ENOTCONN_LIKE, SOAK
from layerspec import raw_snapshot, snapshot
from overlayfuse import KernelOverlay, Overlay, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

KILLS = 300 if SOAK else 26
CHAIN = 5                       # crashes before the upper dir starts afresh
OPS = 10                        # operations per sequence
SEED = int(os.environ.get("OVERLAYFUSE_CRASH_SEED", "20240611"))

FILES = ([f"d{i}/f{j}" for i in range(3) for j in range(5)] + ["d0/big0", "d1/big1"]
         + [f"d{i}/s{j}/g" for i in range(3) for j in range(2)])
DIRS = [f"d{i}/s{j}" for i in range(3) for j in range(3)]
LINKS = [f"d{i}/l{j}" for i in range(3) for j in range(2)]

LOWER0 = {**{f"d0/f{j}": f"file:lower0 d0/f{j}" for j in range(4)},
          **{f"d1/f{j}": f"file:lower0 d1/f{j}" for j in range(3)},
          "d2/f0": "file:lower0 d2/f0", "d0/s0/g": "file:lower0 g", "d1/s1": "dir",
          "d2/f1": "whiteout"}
LOWER1 = {"d0/f4": "file:lower1 d0/f4", "d1/f3": "file:lower1 d1/f3",
          "d2/f1": "file:hidden by a whiteout", "d2/s2/g": "file:lower1 g",
          "d0/s0/h": "file:lower1 h", "d1/s0/g": "file:lower1 d1/s0/g"}
BIG = {"d0/big0": 4 << 20, "d1/big1": 2 << 20}


KINDS = ["write", "write-big", "chmod", "truncate", "setxattr", "create", "mkdir", "symlink",
         "link", "rename", "rename-dir", "unlink", "rmdir"]
WEIGHTS = [3, 3, 1, 1, 1, 2, 2, 1, 1, 3, 1, 2, 2]
# The operation the kill is aimed at, in turn: every kind gets its share of kills.
TARGETS = ["write-big", "create", "rename", "unlink", "rmdir", "write", "mkdir", "rename-dir",
           "link", "chmod", "symlink", "truncate", "setxattr"]


def random_op(rng: random.Random, state: dict, kind: str | None = None) -> tuple:
    """An operation chosen from the names the view `state` holds, so that most succeed."""
    kind = kind or rng.choices(KINDS, weights=WEIGHTS)[0]
    files = [p for p in FILES + LINKS if state.get(p, {}).get("type") == stat.S_IFREG]
    dirs = [p for p in DIRS if state.get(p, {}).get("type") == stat.S_IFDIR]
    empty = [d for d in dirs if not any(p.startswith(d + "/") for p in state)]
    free_files = [p for p in FILES if p not in state and os.path.dirname(p) in state]
    free_links = [p for p in LINKS if p not in state]
    free_dirs = [p for p in DIRS if p not in state]

    def pick(candidates: list[str], fallback: list[str]) -> str:
        return rng.choice(candidates) if candidates and rng.random() < 0.9 else \
            rng.choice(fallback)
    if kind == "write":
        return ("write", pick(files, FILES), rng.randrange(0, 64), rng.randbytes(48))
    if kind == "write-big":
        name = rng.choice(list(BIG))
        return ("write", name, rng.randrange(0, BIG[name]), rng.randbytes(100))
    if kind == "chmod":
        return ("chmod", pick(files, FILES), rng.choice([0o600, 0o640, 0o755, 0o4711]))
    if kind == "truncate":
        return ("truncate", pick(files, FILES), rng.randrange(0, 20))
    if kind == "setxattr":
        return ("setxattr", pick(files, FILES), rng.randbytes(8))
    if kind == "create":
        return ("create", pick(free_files, FILES))
    if kind == "mkdir":
        return ("mkdir", pick(free_dirs, DIRS))
    if kind == "symlink":
        return ("symlink", rng.choice(["f0", "../d1/f1", "s0/g"]), pick(free_links, LINKS))
    if kind == "link":
        return ("link", pick(files, FILES), pick(free_links, LINKS))
    if kind == "rename":
        return ("rename", pick(files, FILES), rng.choice(FILES))
    if kind == "rename-dir":
        return ("rename", pick(dirs, DIRS), rng.choice(DIRS))
    if kind == "unlink":
        return ("unlink", pick(files, FILES + LINKS))
    return ("rmdir", pick(empty if rng.random() < 0.8 else dirs, DIRS))


def apply(merged: Path, op: tuple) -> int:
    """Run one operation through the mount: 0 or the errno it failed with."""
    kind, *args = op
    try:
        if kind == "write":
            fd = os.open(merged / args[0], os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, args[2], args[1])
            finally:
                os.close(fd)
        elif kind == "chmod":
            os.chmod(merged / args[0], args[1], follow_symlinks=False)
        elif kind == "truncate":
            os.truncate(merged / args[0], args[1])
        elif kind == "setxattr":
            os.setxattr(merged / args[0], "user.crash", args[1], follow_symlinks=False)
        elif kind == "create":
            os.close(os.open(merged / args[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        elif kind == "mkdir":
            os.mkdir(merged / args[0], 0o750)
        elif kind == "symlink":
            os.symlink(args[0], merged / args[1])
        elif kind == "link":
            os.link(merged / args[0], merged / args[1], follow_symlinks=False)
        elif kind == "rename":
            os.rename(merged / args[0], merged / args[1])
        elif kind == "unlink":
            os.unlink(merged / args[0])
        elif kind == "rmdir":
            os.rmdir(merged / args[0])
        else:
            raise AssertionError(kind)
    except OSError as e:
        return e.errno or -1
    return 0


def view(merged: Path) -> dict:
    return snapshot(merged)


def build(base: Path) -> dict:
    from layerspec import build_stack
    stack = build_stack(base, [LOWER0, LOWER1])
    for name, size in BIG.items():
        block = hashlib.sha256(name.encode()).digest() * (size // 32)
        (stack["lowers"][0] / name).write_bytes(block)
    return stack


def fresh_upper(stack: dict) -> None:
    for name in ("upper", "work"):
        shutil.rmtree(stack[name])
        stack[name].mkdir()


def twin_run(stack: dict, rng: random.Random, target: int, target_kind: str
             ) -> tuple[list[tuple], list[dict], list[int], list[float]]:
    """A sequence made up as it runs on kernel overlayfs, over a copy of the current upper
    dir: the operations, the view before and after each, their results and durations."""
    base = stack["base"]
    twin_upper, twin_work, twin_merged = base / "twin-upper", base / "twin-work", \
        base / "twin-merged"
    for path in (twin_upper, twin_work):
        if path.exists():
            shutil.rmtree(path)
    subprocess.run(["cp", "-a", str(stack["upper"]), str(twin_upper)], check=True)
    assert _without_nlink(raw_snapshot(twin_upper)) == _without_nlink(raw_snapshot(stack["upper"]))
    twin_work.mkdir()
    twin_merged.mkdir(exist_ok=True)
    ops, states, results, durations = [], [], [], []
    with KernelOverlay(stack["lowers"], twin_upper, twin_work, twin_merged):
        states.append(view(twin_merged))
        for index in range(OPS):
            op = random_op(rng, states[-1], target_kind if index == target else None)
            ops.append(op)
            start = time.perf_counter()
            results.append(apply(twin_merged, op))
            durations.append(time.perf_counter() - start)
            states.append(view(twin_merged))
    shutil.rmtree(twin_upper)
    shutil.rmtree(twin_work)
    return ops, states, results, durations


def _without_nlink(snapshot: dict) -> dict:
    """A crash may leave a hard link of an upper file in the workdir (killed between the
    exchange that moves it there and its unlink), which the next mount removes; the copy of
    the upper dir alone cannot count it."""
    return {path: {k: v for k, v in info.items() if k != "nlink"}
            for path, info in snapshot.items()}


def staging_names(upper: Path) -> list[str]:
    return [os.path.join(d, n) for d, dirs, files in os.walk(upper) for n in dirs + files
            if n.startswith("#ofs")]


def test_sigkill_at_random_points_leaves_before_or_after(make_stack, kernel_available,
                                                         tmp_path: Path) -> None:
    rng = random.Random(SEED)
    stack = build(tmp_path / "s")
    lower_digests = [_layer_digest(p, set()) for p in stack["lowers"]]
    in_flight: Counter[str] = Counter()
    landed: Counter[str] = Counter()
    failures: list[str] = []
    expected: list[dict] | None = None      # acceptable views after the previous crash
    last = ""
    kills = 0
    while kills < KILLS or expected is not None:
        if kills % CHAIN == 0 and expected is None:
            fresh_upper(stack)
        target = rng.randrange(OPS)
        ops, states, twin_results, durations = twin_run(stack, rng, target,
                                                        TARGETS[kills % len(TARGETS)])
        done = kills >= KILLS
        with Overlay(stack["lowers"], stack["upper"], stack["work"],
                     stack["merged"]) as overlay:
            process = overlay.process
            assert process is not None
            current = view(stack["merged"])
            where = f"after kill {kills} ({last})"
            if expected is not None and current not in expected:
                failures.append(f"{where}: the view is neither before nor after the operation "
                                f"in flight: {_diff(current, expected)}")
            if current != states[0]:
                failures.append(f"{where}: kernel overlayfs reads the upper dir differently: "
                                f"{_diff(current, [states[0]])}")
            if os.listdir(stack["work"] / "work"):
                failures.append(f"{where}: workdir not cleaned at mount: "
                                f"{os.listdir(stack['work'] / 'work')}")
            if staging_names(stack["upper"]):
                failures.append(f"{where}: staging names in the upper dir: "
                                f"{staging_names(stack['upper'])}")
            if failures:
                break
            if done:
                break
            # Run the sequence and kill the daemon inside operation `target`.
            window = max(0.004, 4 * durations[target])
            started = [threading.Event() for _ in ops]
            results: list[int] = []

            def client() -> None:
                for index, op in enumerate(ops):
                    started[index].set()
                    results.append(apply(stack["merged"], op))
                    if results[-1] in ENOTCONN_LIKE:
                        return
            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            started[target].wait(timeout=30)
            time.sleep(rng.uniform(0, window))
            process.kill()
            process.wait()
            thread.join(timeout=30)
            assert not thread.is_alive(), "a request hung after the daemon was killed"
            kills += 1
        # The dead mount has been cleaned by the context manager (fusermount3 -u).
        assert not mounts.is_mounted(stack["merged"])
        completed = [r for r in results if r not in ENOTCONN_LIKE]
        k = len(completed)
        if completed != twin_results[:k]:
            failures.append(f"kill {kills}: results differ from the kernel's: "
                            f"{list(zip(ops, completed, twin_results))}")
            break
        if k < len(ops):
            in_flight[ops[k][0] + ("-big" if ops[k][1] in BIG else "")] += 1
            last = f"{ops[k]} in flight, {k} done"
        else:
            last = "all done"
        landed[TARGETS[(kills - 1) % len(TARGETS)]] += 1
        expected = states[k:k + 2]
        for path, digest in zip(stack["lowers"], lower_digests):
            if _layer_digest(path, set()) != digest:
                failures.append(f"kill {kills}: lower layer {path} changed")
        if kills % CHAIN == 0 and kills < KILLS:
            # Check this chain's last crash with a plain remount, then start afresh.
            with Overlay(stack["lowers"], stack["upper"], stack["work"],
                         stack["merged"]):
                current = view(stack["merged"])
                if current not in expected:
                    failures.append(f"after kill {kills} ({last}): the view is neither before "
                                    f"nor after: {_diff(current, expected)}")
                if os.listdir(stack["work"] / "work"):
                    failures.append(f"after kill {kills}: workdir not cleaned")
            expected = None
        if failures:
            break
    assert not failures, "\n".join(failures)
    assert sum(in_flight.values()) > 0, "no kill landed inside an operation"
    print(f"kills: {kills}; operation in flight at the kill: {dict(in_flight)}; "
          f"targeted: {dict(landed)}")


def _diff(current: dict, candidates: list[dict]) -> str:
    parts = []
    for candidate in candidates:
        keys = set(current) | set(candidate)
        parts.append({key: (current.get(key), candidate.get(key)) for key in sorted(keys)
                      if current.get(key) != candidate.get(key)})
    return repr(parts)[:3000]


def write_big_lower(stack: dict) -> Path:
    """A 48 MiB file `big` in the top lower layer, each MiB numbered (a copy out of order
    shows)."""
    lower = stack["lowers"][0] / "big"
    block = os.urandom(1 << 20)
    with open(lower, "wb") as f:
        for index in range(48):
            f.write(index.to_bytes(8, "little") + block[8:])
    return lower


def kill_during(overlay: Overlay, action: Callable[[], None], delay: float) -> None:
    """Run `action` in a thread and SIGKILL the daemon `delay` seconds after it started; the
    action must end then (its calls fail once the connection is gone)."""
    process = overlay.process
    assert process is not None
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    time.sleep(delay)
    process.kill()
    process.wait()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_sigkill_during_a_large_copy_up_at_many_offsets(make_stack, tmp_path: Path) -> None:
    """Kills spread over the whole of one big copy-up (data, xattrs, fsync, rename): the
    lower version or the complete copy, and an empty staging area after the remount."""
    stack = make_stack([{"small": "file:s"}])
    lower = write_big_lower(stack)
    os.setxattr(lower, "user.keep", b"1")
    lower_sha = hashlib.sha256(lower.read_bytes()).hexdigest()
    rng = random.Random(SEED)
    # How long the copy-up takes, to spread the kills over it.
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"]):
        start = time.perf_counter()
        os.close(os.open(stack["merged"] / "big", os.O_WRONLY))
        duration = time.perf_counter() - start
    fresh_upper(stack)
    outcomes: Counter[str] = Counter()
    for attempt in range(12 if SOAK else 4):
        with Overlay(stack["lowers"], stack["upper"], stack["work"],
                     stack["merged"]) as overlay:
            errors: list[int] = []

            def writer() -> None:
                try:
                    fd = os.open(stack["merged"] / "big", os.O_WRONLY)
                    os.pwrite(fd, b"WRITTEN", 0)
                    os.close(fd)
                except OSError as e:
                    errors.append(e.errno or -1)
            kill_during(overlay, writer, rng.uniform(0.1, 1.6) * duration)
        assert not errors or errors[0] in ENOTCONN_LIKE, errors
        with Overlay(stack["lowers"], stack["upper"], stack["work"],
                     stack["merged"]):
            assert os.listdir(stack["work"] / "work") == []
            data = (stack["merged"] / "big").read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if sha == lower_sha:
                outcomes["lower version"] += 1
            else:
                # The copy-up completed: the whole file, then (maybe) the write.
                assert data[7:] == lower.read_bytes()[7:]
                assert data[:7] in (b"WRITTEN", lower.read_bytes()[:7])
                assert os.getxattr(stack["merged"] / "big", "user.keep") == b"1"
                outcomes["copied up"] += 1
        fresh_upper(stack)
    assert hashlib.sha256(lower.read_bytes()).hexdigest() == lower_sha
    print(f"copy-up kills: {dict(outcomes)}")


def test_sigkill_during_metadata_only_copy_ups_and_their_data_copy(make_stack) -> None:
    """metacopy=on: kills during a chmod of many lower files (each a metadata-only copy-up),
    then during the data copy of a big one at its first open for writing. After the remount
    every file has its lower data, under its old mode or its new one, and the big one its
    lower data or the complete copy (maybe with the write); kernel overlayfs reads the
    crashed upper dir the same way."""
    names = [f"f{index:03}" for index in range(300)]
    stack = make_stack([{name: f"file:{name} " * 50 for name in names}])
    lower = write_big_lower(stack)
    lower_data = lower.read_bytes()
    rng = random.Random(SEED)
    options = ["metacopy=on"]
    outcomes: Counter[str] = Counter()
    for attempt in range(6 if SOAK else 3):
        with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                     options=options) as overlay:

            def chmod_all() -> None:
                with contextlib.suppress(OSError):
                    for name in names:
                        os.chmod(stack["merged"] / name, 0o600)
            kill_during(overlay, chmod_all, rng.uniform(0.01, 0.3))
        with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                     options=options) as overlay:
            assert os.listdir(stack["work"] / "work") == []
            modes = Counter(stat.S_IMODE(os.lstat(stack["merged"] / name).st_mode)
                            for name in names)
            assert set(modes) <= {0o600, 0o644}, modes
            for name in names:
                assert (stack["merged"] / name).read_bytes() == (
                    stack["lowers"][0] / name).read_bytes()
            outcomes["metadata copied"] += modes[0o600]
            os.chmod(stack["merged"] / "big", 0o600)

            def write_big() -> None:
                with contextlib.suppress(OSError):
                    fd = os.open(stack["merged"] / "big", os.O_WRONLY)
                    os.pwrite(fd, b"WRITTEN", 0)
                    os.close(fd)
            kill_during(overlay, write_big, rng.uniform(0.0, 0.5))
        views = []
        for mount in (Overlay, KernelOverlay):
            with mount(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                       options=options):
                data = (stack["merged"] / "big").read_bytes()
                assert data[7:] == lower_data[7:]
                assert data[:7] in (b"WRITTEN", lower_data[:7])
                views.append((data[:7], snapshot(stack["merged"])))
        assert views[0] == views[1]
        outcomes["written" if views[0][0] == b"WRITTEN" else "lower data"] += 1
        fresh_upper(stack)
    print(f"metacopy kills: {dict(outcomes)}")


KILLED_AFTER_STAND_IN = r'''
# overlayfuse that dies (SIGKILL) right after a rename over a directory has swapped its
# empty stand-in in, before the source is moved: the narrowest window of that rename.
import os, signal
from overlayfuse.cli import main
from overlayfuse.namespace import Namespace

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

Namespace._delete_in_work = die
raise SystemExit(main())
'''


def test_a_crash_inside_a_rename_over_a_merged_dir_shows_the_dir_as_it_was(
        make_stack, tmp_path: Path) -> None:
    """The target dir is merged and empty in the view: its upper part holds a whiteout over
    a lower file. Its stand-in must look the same (mode, owner, xattrs) and be opaque, or a
    crash at that point shows a dir that never existed, with the lower file back."""
    stack = make_stack([{"t/x": "file:lower x"}], {"t/x": "whiteout", "s/f": "file:f"})
    os.chmod(stack["upper"] / "t", 0o751)
    os.chown(stack["upper"] / "t", 123, 456)
    os.setxattr(stack["upper"] / "t", "user.k", b"v")
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"]):
        before = snapshot(stack["merged"])
    script = tmp_path / "killed_after_stand_in.py"
    script.write_text(KILLED_AFTER_STAND_IN)
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"],
                 program=[sys.executable, str(script)]) as overlay:
        with pytest.raises(OSError) as raised:
            os.rename(stack["merged"] / "s", stack["merged"] / "t")
        assert raised.value.errno in ENOTCONN_LIKE
        assert overlay.process is not None
        assert overlay.process.wait(timeout=10) == -signal.SIGKILL
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"]):
        assert snapshot(stack["merged"]) == before
        assert os.listdir(stack["work"] / "work") == []
