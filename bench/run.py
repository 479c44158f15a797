"""Run the benchmark: overlayfuse against kernel overlayfs and fuse-overlayfs over the same
layers. `scripts/bench` runs this (`python -m bench`); `--help` lists the options.

Each phase gets a fresh mount of each implementation (its own upper and work dir, the same
read-only lower layers), then `sync` and `echo 3 > /proc/sys/vm/drop_caches`, so that cold
means cold for the kernel's caches and for the daemon. The order of the implementations
rotates from phase to phase and round to round; the report gives the median of the rounds.
The timed operations run in a worker process of their own (bench/worker.py).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from overlayfuse import mounts

from . import chown, concurrency, impls, install, podman, report, workloads
from .phases import PHASES, REPEAT_WALKS, Phase, Step
from .stacks import MainSpec, ScaleSpec, Stack, build_main, build_scale

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path("/var/tmp/overlayfuse-bench")

FULL = {
    "main": MainSpec(),
    "workloads": workloads.WorkloadSpec(),
    "chown": chown.ChownSpec(),
    "rounds": 3,
    "scale_layers": (1, 8, 32, 64),
    "scale_files": (10_000, 100_000),
    "scale_rounds": 3,
    "scale_rounds_large": 1,    # the 100k-file stacks: one round (they take minutes each)
    "small_writes": 20_000,     # a cost per write: 100,000 took 53 s a round
    "conc_rounds": 3,
    "podman": podman.PodmanSpec(),
}
QUICK = {
    "main": MainSpec(dirs=20, files=25, big_mib=16, missing_per_dir=10, copyup=100, unlink=100,
                     create=300, create_dirs=3),
    "workloads": workloads.QUICK,
    "chown": chown.QUICK,
    "rounds": 1,
    "scale_layers": (1, 4),
    "scale_files": (1_000, 4_000),
    "scale_rounds": 1,
    "scale_rounds_large": 1,
    "scale_dirs": 20,
    "small_writes": 5_000,
    "conc_rounds": 1,
    "podman": podman.QUICK,
}


class Bench:
    def __init__(self, args: argparse.Namespace, config: dict[str, Any], out: Path) -> None:
        self.args = args
        self.out = out
        self.config = config
        self.base: Path = args.dir
        self.scratch = self.base / "run"
        self.serial = 0
        self.started = time.monotonic()
        self.load: list[float] = []
        self.results: dict[str, Any] = {
            "samples": {},        # metric -> impl -> [value per round]
            "status": {},         # metric -> impl -> [{rss_mb, fds} per round]
            "counts": {},         # metric -> operations per sample
            "outputs": {},        # metric -> impl -> [worker result per round]
            "problems": [],       # failed checks: wrong counts, errors, failed mounts
            "scaling": [],        # one row per (files, layers, impl, metric, round)
            "repeat_walks": {},   # impl -> [{rss_mb, fds, seconds} per walk]
        }

    # ---- helpers -------------------------------------------------------------------------

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed) // 60:3d}:{int(elapsed) % 60:02d}] {message}", flush=True)

    def problem(self, impl: str, what: str, detail: str) -> None:
        self.results["problems"].append({"impl": impl, "what": what, "detail": detail})
        self.log(f"  PROBLEM {impl} {what}: {detail}")

    def sample_load(self) -> None:
        with open("/proc/loadavg") as f:
            self.load.append(float(f.read().split()[0]))

    def drop_caches(self) -> None:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            self.problem("-", "drop_caches", str(e))

    def worker(self, op: str, mnt: Path, stack: Stack, names: str | None, passes: int = 1,
               **extra: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"op": op, "root": str(mnt), "passes": passes, **extra}
        if names is not None:
            request["list"] = str(stack.lists[names])
        done = subprocess.run([sys.executable, "-m", "bench.worker"], input=json.dumps(request),
                              cwd=REPO, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            return {"fatal": done.stderr.strip()[-2000:] or f"exit {done.returncode}"}
        return json.loads(done.stdout)

    def order(self, shift: int, with_floor: bool = False) -> list[str]:
        chosen = self.args.impls + ([impls.FLOOR] if with_floor and not self.args.no_floor
                                    else [])
        shift %= len(chosen)
        return chosen[shift:] + chosen[:shift]

    def mount(self, impl: str, stack: Stack | Path, extra: tuple[str, ...] = ()) -> impls.Mounted:
        """A fresh mount of a stack, or of one lower layer, with `extra` mount options; the
        floor shows a stack's names."""
        self.serial += 1
        if impl == impls.FLOOR:
            assert isinstance(stack, Stack)
            return impls.mount_floor([stack.lists["files"], stack.lists["big"]], self.scratch,
                                     self.serial)
        lowers = [stack] if isinstance(stack, Path) else stack.lowers
        return impls.mount(impl, lowers, self.scratch, self.serial, extra)

    # ---- checks ----------------------------------------------------------------------------

    def check(self, impl: str, step: Step, stack: Stack, out: dict[str, Any]) -> None:
        what = step.metric or f"{step.op} (warm-up)"
        if "fatal" in out:
            self.problem(impl, what, out["fatal"])
            return
        if out.get("errors"):
            self.problem(impl, what, f"{out['errors']} of {out.get('count')} operations failed")
        if step.op == "stat" and step.names == "files" and out["found"] != out["count"]:
            self.problem(impl, what, f"{out['count'] - out['found']} visible files not found")
        if step.op == "stat" and step.names == "missing" and out["missing"] != out["count"]:
            self.problem(impl, what, f"{out['count'] - out['missing']} missing names found")
        if step.op == "walk" and (out["files"], out["dirs"]) != (stack.expected_files,
                                                                 stack.expected_dirs):
            self.problem(impl, what, f"walk found {out['files']} files in {out['dirs']} dirs, "
                         f"expected {stack.expected_files} in {stack.expected_dirs}")

    # ---- the main run --------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write the results so far: an interrupted run keeps them (render with
        --report-only)."""
        self.sample_load()
        self.results["machine"] = machine_info(self.base, self.load)
        self.results["duration_s"] = round(time.monotonic() - self.started, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))

    def run_phase(self, impl: str, phase: Phase, stack: Stack, round_no: int) -> None:
        self.sample_load()
        try:
            m = self.mount(impl, stack)
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
            self.problem(impl, f"mount for {phase.name}", str(e))
            return
        try:
            self.drop_caches()
            for step in phase.steps:
                if step.drop_before:
                    self.drop_caches()
                extra = {"writes": self.config["small_writes"]} if step.op == "appends" else {}
                out = self.worker(step.op, m.mnt, stack, step.names, step.passes, **extra)
                self.check(impl, step, stack, out)
                if step.metric is None or "fatal" in out:
                    continue
                status = m.status()
                value = out["seconds"]
                if step.op == "seqread":
                    value = out["bytes"] / out["seconds"] / 1e6
                res = self.results
                res["samples"].setdefault(step.metric, {}).setdefault(impl, []).append(value)
                res["status"].setdefault(step.metric, {}).setdefault(impl, []).append(status)
                res["outputs"].setdefault(step.metric, {}).setdefault(impl, []).append(
                    {k: v for k, v in out.items() if k != "passes"})
                res["counts"][step.metric] = out.get("count")
                unit = "MB/s" if step.op == "seqread" else "s"
                rss = f", rss {status['rss_mb']:.0f} MB, {status['fds']} fds" \
                    if status["rss_mb"] is not None else ""
                self.log(f"  r{round_no + 1} {step.metric:16s} {impl:15s} {value:9.3f} {unit}"
                         f"{rss}")
        finally:
            impls.unmount(m)

    def repeat_walks(self, impl: str, stack: Stack) -> None:
        m = self.mount(impl, stack)
        rows = []
        try:
            for n in range(REPEAT_WALKS):
                self.drop_caches()
                out = self.worker("walk", m.mnt, stack, None)
                self.check(impl, Step("walk", None, f"repeat walk {n + 1}"), stack, out)
                rows.append({**m.status(), "seconds": out.get("seconds")})
                self.log(f"  walk {n + 1}/{REPEAT_WALKS} {impl:15s} rss {rows[-1]['rss_mb']:.1f}"
                         f" MB, {rows[-1]['fds']} fds")
        finally:
            impls.unmount(m)
        self.results["repeat_walks"][impl] = rows

    def record(self, metric: str, impl: str, value: float) -> None:
        self.results["samples"].setdefault(metric, {}).setdefault(impl, []).append(value)
        self.results["counts"][metric] = None
        self.log(f"  {metric:16s} {impl:15s} {value:9.3f} s")

    def run_workloads(self, layers: workloads.Layers, spec: workloads.WorkloadSpec,
                      rounds: int) -> None:
        for r in range(rounds):
            for impl in self.order(r):
                for _ in range(spec.mount_repeats):
                    self.sample_load()
                    try:
                        m = self.mount(impl, layers.empty_lower)
                    except Exception as e:  # noqa: BLE001
                        self.problem(impl, "mount latency", str(e))
                        break
                    impls.unmount(m)
                    self.record("mount_return", impl, m.command_seconds)
                    self.record("mount_first_stat", impl, m.first_stat_seconds)
            for wi, (name, lower, timed) in enumerate(workloads.workloads(layers)):
                for impl in self.order(r + wi + 1):
                    self.sample_load()
                    try:
                        m = self.mount(impl, lower)
                    except Exception as e:  # noqa: BLE001
                        self.problem(impl, f"mount for {name}", str(e))
                        continue
                    try:
                        self.drop_caches()
                        values = timed(m.mnt)
                    except subprocess.CalledProcessError as e:
                        self.problem(impl, name, f"{e.cmd}: exit {e.returncode}: "
                                     f"{(e.stderr or b'').decode(errors='replace')[-500:]}")
                        continue
                    finally:
                        impls.unmount(m)
                    for metric, value in values.items():
                        self.record(metric, impl, value)

    def run_chown(self, layer: chown.Layer, rounds: int) -> None:
        chosen = chown.variants(self.args.impls)
        for r in range(rounds):
            for ci, (name, timed) in enumerate(chown.COMMAND_RUNS):
                shift = (r + ci) % len(chosen)
                for variant in chosen[shift:] + chosen[:shift]:
                    what = variant.metric(name)
                    self.sample_load()
                    try:
                        m = self.mount(variant.impl, layer.lower, variant.options)
                    except Exception as e:  # noqa: BLE001
                        self.problem(variant.impl, f"mount for {what}", str(e))
                        continue
                    try:
                        self.drop_caches()
                        values = timed(layer, m.mnt, self.drop_caches)
                        upper = chown.allocated_mib(m.upper)
                    except subprocess.CalledProcessError as e:
                        self.problem(variant.impl, what, f"{e.cmd}: exit {e.returncode}: "
                                     f"{(e.stderr or b'').decode(errors='replace')[-500:]}")
                        continue
                    except chown.WrongResult as e:
                        self.problem(variant.impl, what, str(e))
                        continue
                    finally:
                        impls.unmount(m)
                    for metric, value in values.items():
                        self.record(variant.metric(metric), variant.impl, value)
                    upper_metric = variant.metric(chown.UPPER[name].name)
                    self.results["samples"].setdefault(upper_metric, {}).setdefault(
                        variant.impl, []).append(upper)

    def run_concurrency(self, stack: Stack, rounds: int) -> None:
        for r in range(rounds):
            for oi, (op, names, _) in enumerate(concurrency.OPS):
                for ci, clients in enumerate(concurrency.CLIENTS):
                    metric = concurrency.metric_name(op, clients)
                    for impl in self.order(r + oi + ci):
                        self.sample_load()
                        try:
                            m = self.mount(impl, stack)
                        except Exception as e:  # noqa: BLE001
                            self.problem(impl, f"mount for {metric}", str(e))
                            continue
                        try:
                            self.drop_caches()
                            out = concurrency.run_clients(op, m.mnt, stack.lists[names],
                                                          clients, REPO)
                            status = m.status()
                        finally:
                            impls.unmount(m)
                        self.check(impl, Step(op, names, metric), stack, out)
                        if "fatal" in out:
                            continue
                        res = self.results
                        res["samples"].setdefault(metric, {}).setdefault(impl, []).append(
                            out["ops_per_s"])
                        res["status"].setdefault(metric, {}).setdefault(impl, []).append(status)
                        res["outputs"].setdefault(metric, {}).setdefault(impl, []).append(out)
                        res["counts"][metric] = out["count"]
                        self.log(f"  r{r + 1} {metric:16s} {impl:15s} {out['ops_per_s']:9.0f} "
                                 f"ops/s")

    def run_scaling(self, stacks: list[tuple[ScaleSpec, Stack]], rounds: int,
                    rounds_large: int) -> None:
        smallest = min(spec.files for spec, _ in stacks)
        for r in range(max(rounds, rounds_large)):
            for si, (spec, stack) in enumerate(stacks):
                if r >= (rounds if spec.files == smallest else rounds_large):
                    continue
                for impl in self.order(r + si):
                    for op, metric in (("stat", "stat_cold"), ("walk", "walk_cold")):
                        self.sample_load()
                        try:
                            m = self.mount(impl, stack)
                        except Exception as e:  # noqa: BLE001
                            self.problem(impl, f"mount {spec}", str(e))
                            continue
                        try:
                            self.drop_caches()
                            step = Step(op, "files" if op == "stat" else None, metric)
                            out = self.worker(op, m.mnt, stack, step.names)
                            self.check(impl, step, stack, out)
                            status = m.status()
                        finally:
                            impls.unmount(m)
                        if "fatal" in out:
                            continue
                        self.results["scaling"].append({
                            "files": spec.files, "layers": spec.layers, "impl": impl,
                            "metric": metric, "round": r, "seconds": out["seconds"], **status})
                        rss = f", rss {status['rss_mb']:.0f} MB" if status["rss_mb"] else ""
                        self.log(f"  r{r + 1} {spec.files:>7d} files {spec.layers:>2d} lowers "
                                 f"{metric:10s} {impl:15s} {out['seconds']:8.3f} s{rss}")

    def run(self) -> dict[str, Any]:
        cfg = self.config
        self.scratch.mkdir(parents=True, exist_ok=True)
        for leftover in self.scratch.iterdir():     # an earlier run that was interrupted
            if mounts.is_mounted(leftover / "mnt"):
                mounts.unmount(leftover / "mnt")
            if not mounts.is_mounted(leftover / "mnt"):
                shutil.rmtree(leftover, ignore_errors=True)
        self.log(f"building the layer stacks in {self.base} (reused when unchanged)")
        main = build_main(self.base, cfg["main"])
        scale_specs = [ScaleSpec(files=f, layers=n, dirs=cfg.get("scale_dirs", 200))
                       for f in cfg["scale_files"] for n in cfg["scale_layers"]]
        scale_stacks = [] if self.args.no_scaling else \
            [(spec, build_scale(self.base, spec)) for spec in scale_specs]
        self.log(f"main stack: {main.count('files')} visible files, {len(main.lowers)} lowers; "
                 f"implementations: {', '.join(self.args.impls)}")
        self.results["counts"]["walk_cold"] = self.results["counts"]["walk_warm"] = \
            main.expected_files
        self.results["config"] = {
            "quick": self.args.quick, "rounds": cfg["rounds"], "scale_rounds": cfg["scale_rounds"],
            "conc_rounds": cfg["conc_rounds"], "floor": not self.args.no_floor,
            "scale_rounds_large": cfg["scale_rounds_large"],
            "main": asdict(cfg["main"]), "workloads": asdict(cfg["workloads"]),
            "chown": asdict(cfg["chown"]),
            "podman": asdict(cfg["podman"]),
            "scale": [asdict(s) for s in scale_specs] if scale_stacks else [],
            "impls": self.args.impls, "dir": str(self.base),
            "overlayfuse_command": impls.command,
            "overlayfuse_python": None if impls.command is None
            else install.python_version(Path(impls.command)),
            "editable": self.args.editable,
            "visible_files": main.count("files"), "dirs": main.count("dirs"),
            "missing_names": main.count("missing"),
        }
        phases = [p for p in PHASES if not self.args.phases or p.name in self.args.phases]
        for r in range(cfg["rounds"]):
            self.log(f"round {r + 1}/{cfg['rounds']}")
            for pi, phase in enumerate(phases):
                for impl in self.order(r + pi, phase.floor):
                    self.run_phase(impl, phase, main, r)
            self.checkpoint()
        if not self.args.no_concurrency and (not self.args.phases or
                                              "concurrency" in self.args.phases):
            self.log(f"concurrency: {', '.join(map(str, concurrency.CLIENTS))} clients at once")
            self.run_concurrency(main, cfg["conc_rounds"])
            self.checkpoint()
        if not self.args.no_podman and (not self.args.phases or "podman" in self.args.phases):
            why = podman.unavailable()
            if why is None:
                self.log("rootless podman: run and build")
                self.sample_load()
                self.results["podman_mount_program"] = podman.run(
                    cfg["podman"], list(self.args.impls), self.log, self.record,
                    self.problem)
                self.sample_load()
            else:
                self.log(f"rootless podman skipped: {why}")
            self.checkpoint()
        if not self.args.no_workloads and (not self.args.phases or
                                            "workloads" in self.args.phases):
            self.log("real workloads: mount latency, tar, git, make, python imports")
            layers = workloads.build(self.base, cfg["workloads"])
            self.run_workloads(layers, cfg["workloads"], cfg["rounds"])
            self.checkpoint()
        if not self.args.no_chown and (not self.args.phases or "chown" in self.args.phases):
            spec = cfg["chown"]
            free, needed = shutil.disk_usage(self.base).free, chown.space_needed(spec)
            if free < needed:
                self.problem("-", "chown", f"{free >> 20} MiB free in {self.base}, "
                             f"{needed >> 20} MiB needed: skipped")
            else:
                self.log(f"chown: -R of {spec.files:,} files and of a {spec.big_mib} MiB file, "
                         "with and without metacopy")
                self.run_chown(chown.build(self.base, spec), cfg["rounds"])
            self.checkpoint()
        if not self.args.phases or "repeat_walks" in self.args.phases:
            self.log(f"daemon memory over {REPEAT_WALKS} cold walks of one mount")
            for impl in self.args.impls:
                if impl != impls.KERNEL:
                    self.repeat_walks(impl, main)
            self.checkpoint()
        if scale_stacks:
            self.log("scaling: cold stat and cold walk by number of lowers and files")
            self.run_scaling(scale_stacks, cfg["scale_rounds"], cfg["scale_rounds_large"])
        self.checkpoint()
        return self.results


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def machine_info(base: Path, load: list[float]) -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    import pyfuse3
    import trio
    fs = _first_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(base)])
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--",
                            "overlayfuse"], capture_output=True).returncode != 0
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "pyfuse3": pyfuse3.__version__, "trio": trio.__version__,
        "libfuse": _first_line(["fusermount3", "--version"]).split()[-1],
        "fuse_overlayfs": impls.version_of(impls.FUSE_OVERLAYFS)
        if shutil.which("fuse-overlayfs") else "not installed",
        "overlayfuse": f"{impls.version_of(impls.OVERLAYFUSE)} (git {commit}"
                       f"{', overlayfuse/ modified' if dirty else ''})",
        "filesystem": " ".join(fs.split()), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_1min": {"min": min(load, default=0), "median": sorted(load)[len(load) // 2]
                      if load else 0, "max": max(load, default=0)},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a small stack and one round: a smoke test of the suite (under a minute)")
    p.add_argument("--rounds", type=int, help="rounds of the main phases (default 3)")
    p.add_argument("--scale-rounds", type=int,
                   help="rounds of the scaling runs on the 10k-file stacks (default 3)")
    p.add_argument("--scale-rounds-large", type=int,
                   help="rounds of the scaling runs on the 100k-file stacks (default 1)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    p.add_argument("--scale-files", type=int, nargs="+", metavar="N",
                   help="the sizes of the scaling stacks (default 10000 100000)")
    p.add_argument("--no-workloads", action="store_true", help="skip the real workloads")
    p.add_argument("--no-chown", action="store_true",
                   help="skip chown -R of a lower tree and chown of a 1 GiB lower file, with "
                   "and without metacopy (they need 2.4 GiB free under --dir)")
    p.add_argument("--no-concurrency", action="store_true",
                   help="skip the concurrent clients")
    p.add_argument("--no-podman", action="store_true", help="skip the rootless podman runs")
    p.add_argument("--no-floor", action="store_true",
                   help="do not time the metadata phases on the minimal pyfuse3 filesystem")
    names = [phase.name for phase in PHASES] + ["repeat_walks", "concurrency", "workloads",
                                                "podman", "chown"]
    p.add_argument("--phase", dest="phases", action="append", metavar="NAME", choices=names,
                   help="run only this phase (repeatable): " + ", ".join(names))
    p.add_argument("--impl", dest="impls", action="append", choices=impls.ALL,
                   help="benchmark only this implementation (repeatable)")
    p.add_argument("--editable", action="store_true",
                   help="time the .venv's editable overlayfuse command instead of installing "
                        "this checkout as users do (bench/install.py)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help=f"where the layers and mounts live (default {DEFAULT_DIR}); on a real "
                   "disk filesystem, not tmpfs, so that dropping caches means something")
    p.add_argument("--out", type=Path, help="results directory (default bench/results/DATE)")
    p.add_argument("--docs", dest="docs", action="store_true", default=None,
                   help="write docs/benchmarks.md (the default for a full run)")
    p.add_argument("--no-docs", dest="docs", action="store_false",
                   help="do not write docs/benchmarks.md")
    p.add_argument("--report-only", type=Path, metavar="JSON",
                   help="only render the report from an earlier results.json")
    args = p.parse_args(argv)
    if args.docs is None:
        args.docs = not args.quick and not args.phases and not args.impls
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or REPO / "bench" / "results" / (
        time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else ""))
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        report.render(results, args.report_only.parent, REPO / "docs" if args.docs else None)
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (kernel overlayfs mounts and dropping the page cache)",
              file=sys.stderr)
        return 1
    reasons = impls.available()
    wanted = args.impls or list(impls.ALL)
    for impl in wanted:
        if reasons[impl] is not None:
            print(f"bench: skipping {impl}: {reasons[impl]}", file=sys.stderr)
    args.impls = [i for i in wanted if reasons[i] is None]
    config = dict(QUICK if args.quick else FULL)
    if args.rounds:
        config["rounds"] = args.rounds
    if args.scale_rounds:
        config["scale_rounds"] = args.scale_rounds
    if args.scale_rounds_large:
        config["scale_rounds_large"] = args.scale_rounds_large
    if args.scale_files:
        config["scale_files"] = tuple(args.scale_files)
    # With --editable the daemon imports the package from this checkout: without bytecode
    # there (PYTHONDONTWRITEBYTECODE, or a fresh clone) every mount would compile it.
    compileall.compile_dir(REPO / "overlayfuse", quiet=1)
    if impls.OVERLAYFUSE in args.impls and not args.editable:
        try:
            impls.command = str(install.installed_command(
                lambda message: print(f"bench: {message}", file=sys.stderr, flush=True)))
        except (install.InstallError, OSError) as e:
            print(f"bench: cannot install this checkout: {e}", file=sys.stderr)
            return 1
    bench = Bench(args, config, out)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        print(f"bench: interrupted; the results so far are in {out / 'results.json'}",
              file=sys.stderr)
        return 130
    report.render(results, out, REPO / "docs" if args.docs else None)
    bench.log(f"results in {out}" + (" and docs/benchmarks.md" if args.docs else ""))
    return 0
