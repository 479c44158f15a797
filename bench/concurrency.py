"""Concurrent clients: N worker processes (bench/worker.py) doing the same cold operation on
disjoint shares of one list of names, started together; throughput is all their operations
over the wall time from the first one's start to the last one's end.

fuse-overlayfs serves requests from several threads and the kernel from every caller's own
context, while overlayfuse answers them in one trio thread: this shows what that costs when
clients come at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .phases import Metric

CLIENTS = (1, 2, 4)
OPS = (("stat", "files", "cold stat"), ("read", "read", "cold small-file read"))


def metric_name(op: str, clients: int) -> str:
    return f"conc_{op}_{clients}"


CONCURRENCY_METRICS: dict[str, Metric] = {
    metric_name(op, n): Metric(metric_name(op, n), f"{title}, {n} client" + ("s" * (n > 1)),
                               "ops/s", names)
    for op, names, title in OPS for n in CLIENTS}


def run_clients(op: str, mnt: Path, names_list: Path, clients: int, cwd: Path,
                timeout: float = 600) -> dict[str, Any]:
    """Run `clients` workers at once; their summed counts and errors, and the throughput."""
    procs = []
    try:
        for k in range(clients):
            proc = subprocess.Popen([sys.executable, "-m", "bench.worker"], cwd=cwd, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            procs.append(proc)
            request = {"op": op, "root": str(mnt), "list": str(names_list),
                       "share": [k, clients], "barrier": True}
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        for proc in procs:      # every client has read its names
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                return {"fatal": f"a client did not start: {proc.communicate()[1][-2000:]}"}
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                return {"fatal": stderr.strip()[-2000:] or f"exit {proc.returncode}"}
            outs.append(json.loads(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    fatal = [o["fatal"] for o in outs if "fatal" in o]
    if fatal:
        return {"fatal": fatal[0]}
    summed = {key: sum(o[key] for o in outs) for key in outs[0]
              if key in ("count", "errors", "found", "missing", "bytes")}
    seconds = max(o["ended"] for o in outs) - min(o["started"] for o in outs)
    return {**summed, "seconds": seconds, "ops_per_s": summed["count"] / seconds,
            "client_seconds": [o["seconds"] for o in outs]}
