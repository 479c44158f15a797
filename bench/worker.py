"""The timed side of the benchmark: one filesystem operation over a mount, in a process of its
own (never the daemon's), timed with time.perf_counter.

Run as `python -m bench.worker` with one JSON request on stdin; prints one JSON result on
stdout. Only the loop itself is timed: interpreter start-up, imports and reading the list
of names are not. Errors are counted, not raised, so that a broken implementation shows up
as a failed check in the report rather than as a crash of the suite.

Concurrent clients (bench/concurrency.py) each take a share of the names (`"share": [k, n]`:
every n-th from the k-th) and start together: with `"barrier": true` the worker prints
`ready` once its names are loaded and starts at the next line on stdin; its result then has
the start and end of its loop on the machine's monotonic clock.
"""

from __future__ import annotations

import errno
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

READ_CHUNK = 1 << 20        # the buffer for sequential reads
SMALL_READ = 64 << 10       # enough for any of the small files in one read()


def _names(request: dict[str, Any]) -> list[str]:
    with open(request["list"], encoding="utf-8") as f:
        return [os.path.join(request["root"], line.rstrip("\n")) for line in f if line.strip()]


def op_stat(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    found = missing = errors = 0
    lstat = os.lstat
    for path in paths:
        try:
            lstat(path)
            found += 1
        except FileNotFoundError:
            missing += 1
        except OSError:
            errors += 1
    return {"count": len(paths), "found": found, "missing": missing, "errors": errors}


def op_readdir(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    entries = dirs = errors = 0
    for path in paths:
        try:
            with os.scandir(path) as scan:
                for entry in scan:
                    entries += 1
                    if entry.is_dir(follow_symlinks=False):   # d_type: no stat
                        dirs += 1
        except OSError:
            errors += 1
    return {"count": len(paths), "entries": entries, "subdirs": dirs, "errors": errors}


def op_walk(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """`du`-like: os.walk (readdir of every dir) and an lstat of every file found."""
    files = dirs = errors = 0
    lstat = os.lstat

    def onerror(_: OSError) -> None:
        nonlocal errors
        errors += 1

    for top, dirnames, filenames in os.walk(request["root"], onerror=onerror):
        dirs += len(dirnames)
        for name in filenames:
            try:
                lstat(os.path.join(top, name))
                files += 1
            except OSError:
                errors += 1
    return {"count": files, "files": files, "dirs": dirs, "errors": errors}


def op_find(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """find(1) over the whole tree: a readdir of every dir, names printed (to a pipe)."""
    done = subprocess.run(["find", request["root"]], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, check=False)
    found = done.stdout.count(b"\n")
    return {"count": found, "found": found, "errors": int(done.returncode != 0)}


def op_read(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    total = errors = 0
    flags = os.O_RDONLY | os.O_CLOEXEC
    for path in paths:
        try:
            fd = os.open(path, flags)
        except OSError:
            errors += 1
            continue
        try:
            while chunk := os.read(fd, SMALL_READ):
                total += len(chunk)
        except OSError:
            errors += 1
        finally:
            os.close(fd)
    return {"count": len(paths), "bytes": total, "errors": errors}


def op_seqread(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    total = errors = 0
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    total += n
        except OSError:
            errors += 1
    return {"count": len(paths), "bytes": total, "errors": errors}


def op_create(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    data = b"n" * int(request.get("size", 1024))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    errors = 0
    for path in paths:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:
            errors += 1
            continue
        try:
            os.write(fd, data)
        except OSError:
            errors += 1
        finally:
            os.close(fd)
    return {"count": len(paths), "errors": errors}


def op_appends(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """Many tiny writes to one new file opened O_APPEND, as a logger makes them; then close,
    which is when a writeback cache must have passed every byte on."""
    count = int(request["writes"])
    record = b"%07d\n"
    path = os.path.join(request["root"], "small-writes.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
    errors = 0
    try:
        for i in range(count):
            try:
                os.write(fd, record % (i % 10_000_000))
            except OSError:
                errors += 1
    finally:
        os.close(fd)
    size = os.stat(path).st_size
    return {"count": count, "bytes": size, "errors": errors + (size != 8 * count)}


def op_copyup(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """Append one byte: the open for writing copies the whole file up, as a writer would."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    errors = 0
    for path in paths:
        try:
            fd = os.open(path, flags)
        except OSError:
            errors += 1
            continue
        try:
            os.write(fd, b"+")
        except OSError:
            errors += 1
        finally:
            os.close(fd)
    return {"count": len(paths), "errors": errors}


def op_unlink(paths: list[str], request: dict[str, Any]) -> dict[str, Any]:
    errors = 0
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            errors += 1
    return {"count": len(paths), "errors": errors}


OPS: dict[str, Callable[[list[str], dict[str, Any]], dict[str, Any]]] = {
    "stat": op_stat, "readdir": op_readdir, "walk": op_walk, "find": op_find, "read": op_read,
    "seqread": op_seqread, "create": op_create, "appends": op_appends, "copyup": op_copyup,
    "unlink": op_unlink,
}


def run(request: dict[str, Any]) -> dict[str, Any]:
    op = OPS[request["op"]]
    paths = _names(request) if "list" in request else []
    if "share" in request:
        k, n = request["share"]
        paths = paths[k::n]
    passes = int(request.get("passes", 1))
    if request.get("barrier"):
        print("ready", flush=True)
        sys.stdin.readline()
    times: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(passes):
        start = time.perf_counter()
        result = op(paths, request)
        times.append(time.perf_counter() - start)
    result["started"], result["ended"] = start, start + times[-1]
    # Several passes only for warm operations, which are short and so noisy: their median.
    result["seconds"] = statistics.median(times)
    result["passes"] = times
    return result


def main() -> int:
    request = json.loads(sys.stdin.readline())
    os.chdir("/")
    try:
        result = run(request)
    except OSError as e:
        result = {"fatal": f"{e.__class__.__name__}: {e}", "errno": e.errno or errno.EIO}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
