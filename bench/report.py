"""The report: medians and ratios as a table (terminal and Markdown), targets met or missed,
the scaling runs as a table and a plot (PNG, with matplotlib when installed)."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from .chown import COMMANDS as CHOWN_COMMANDS
from .chown import UPPER as CHOWN_UPPER
from .concurrency import CLIENTS, CONCURRENCY_METRICS
from .concurrency import OPS as CONCURRENT_OPS
from .concurrency import metric_name as concurrency_metric
from .impls import ALL, FLOOR, FUSE_OVERLAYFS, KERNEL, OVERLAYFUSE
from .podman import PODMAN_METRICS
from .phases import FLOOR_METRICS, METRICS, REPEAT_WALKS, TARGETS, Target
from .workloads import WORKLOAD_METRICS

SHORT = {OVERLAYFUSE: "overlayfuse", FUSE_OVERLAYFS: "fuse-overlayfs", KERNEL: "kernel",
         FLOOR: "floor"}
PNG = "benchmarks-scaling.png"


def _median(values: list[float] | None) -> float | None:
    values = [v for v in values or [] if v is not None]
    return statistics.median(values) if values else None


def medians(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    return {metric: {impl: _median(per_impl.get(impl)) for impl in (*ALL, FLOOR)}
            for metric, per_impl in results["samples"].items()}


def ratio(results: dict[str, Any], metric: str, against: str) -> float | None:
    med = medians(results).get(metric, {})
    ours, theirs = med.get(OVERLAYFUSE), med.get(against)
    if ours is None or not theirs:
        return None
    return ours / theirs


def scaling_medians(results: dict[str, Any]) -> dict[tuple[int, int, str, str], dict]:
    """(files, layers, impl, metric) -> {seconds, rss_mb, fds}: medians over rounds."""
    grouped: dict[tuple[int, int, str, str], list[dict]] = {}
    for row in results.get("scaling", []):
        key = (row["files"], row["layers"], row["impl"], row["metric"])
        grouped.setdefault(key, []).append(row)
    return {key: {field: _median([r.get(field) for r in rows])
                  for field in ("seconds", "rss_mb", "fds")}
            for key, rows in grouped.items()}


def derived(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures behind the targets that are not a plain ratio of one metric."""
    out: dict[str, dict[str, Any]] = {}
    scale = scaling_medians(results)
    if scale:
        files = sorted({k[0] for k in scale})
        layers = sorted({k[1] for k in scale})
        small, most = files[0], layers[-1]
        for impl in ALL:
            one = scale.get((small, 1, impl, "stat_cold"), {}).get("seconds")
            many = scale.get((small, most, impl, "stat_cold"), {}).get("seconds")
            if one and many:
                out.setdefault("layers_64_vs_1", {"label": f"{most} vs 1 lowers, {small:,} files"}
                               )[impl] = many / one
        for impl in (OVERLAYFUSE, FUSE_OVERLAYFS):
            rss = [v["rss_mb"] for k, v in scale.items()
                   if k[0] == files[-1] and k[2] == impl and k[3] == "stat_cold"
                   and v["rss_mb"] is not None]
            if rss:
                label = f"MB, {files[-1]:,} files, worst of {layers[0]}–{most} lowers"
                out.setdefault("rss_max_stat", {"label": label})[impl] = \
                    max(rss)
    for impl, seconds in medians(results).get("mount_return", {}).items():
        if seconds is not None:
            out.setdefault("mount_ms", {"label": "ms, median"})[impl] = seconds * 1000
    for impl, rows in results.get("repeat_walks", {}).items():
        if len(rows) >= 2 and rows[0]["rss_mb"] and rows[-1]["rss_mb"] is not None:
            out.setdefault("rss_growth", {"label": f"RSS walk {len(rows)} / walk 1"})[impl] = \
                rows[-1]["rss_mb"] / rows[0]["rss_mb"]
            out.setdefault("fd_growth", {"label": f"fds walk {len(rows)} − walk 1"})[impl] = \
                rows[-1]["fds"] - rows[0]["fds"]
    return out


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    extra = derived(results)
    for target in TARGETS:
        if target.against == "abs":
            value = extra.get(target.key, {}).get(OVERLAYFUSE)
            label = extra.get(target.key, {}).get("label", "")
        else:
            value = ratio(results, target.key, target.against)
            label = f"overlayfuse / {target.against}"
        met = None if value is None else (value <= target.bound if target.op == "<="
                                           else value >= target.bound)
        rows.append({"target": _target_text(target, results), "key": target.key,
                     "value": value, "label": label, "op": target.op, "bound": target.bound,
                     "met": met})
    return rows


def _target_text(target: Target, results: dict[str, Any]) -> str:
    layers = sorted({row["layers"] for row in results.get("scaling", [])})
    files = sorted({row["files"] for row in results.get("scaling", [])})
    text = target.text
    if layers and target.key == "layers_64_vs_1":
        text = text.replace("64 lowers", f"{layers[-1]} lowers")
    if files and target.key == "rss_max_stat":
        text = text.replace("the largest scaling stack", f"{files[-1]:,} files")
    return text


# ---- formatting ----------------------------------------------------------------------------

def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "MB/s":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _command_timed(cfg: dict[str, Any]) -> str:
    command = cfg.get("overlayfuse_command")
    if command is None:
        return "the `.venv`'s editable command" + (" (`--editable`)" if cfg.get("editable")
                                                   else "")
    return (f"`{command}`, a non-editable install of this checkout on Python "
            f"{cfg.get('overlayfuse_python', '?')} (bench/install.py)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _int(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _per_op(seconds: float | None, count: int | None) -> str:
    if seconds is None or not count:
        return ""
    return f"{seconds / count * 1e6:,.0f} µs"


def main_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    med = medians(results)
    head = ["phase", "ops", "unit", *[SHORT[i] for i in ALL], "overlayfuse per op",
            "overlayfuse / fuse-overlayfs", "overlayfuse / kernel"]
    rows = []
    for name, metric in METRICS.items():
        if name not in med:
            continue
        count = results["counts"].get(name)
        rows.append([
            metric.title, f"{count:,}" if count else "", metric.unit,
            *[_num(med[name].get(i), metric.unit) for i in ALL],
            "" if metric.unit == "MB/s" else _per_op(med[name].get(OVERLAYFUSE), count),
            _ratio(ratio(results, name, FUSE_OVERLAYFS)), _ratio(ratio(results, name, KERNEL)),
        ])
    return head, rows


def workloads_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    med = medians(results)
    head = ["workload", *[f"{SHORT[i]} (s)" for i in ALL], "overlayfuse / fuse-overlayfs",
            "overlayfuse / kernel"]
    rows = [[metric.title, *[_num(med[name].get(i)) for i in ALL],
             _ratio(ratio(results, name, FUSE_OVERLAYFS)), _ratio(ratio(results, name, KERNEL))]
            for name, metric in WORKLOAD_METRICS.items() if name in med]
    return head, rows


def podman_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    med = medians(results)
    head = ["rootless podman", "overlayfuse (s)", "fuse-overlayfs (s)", "native overlay (s)",
            "overlayfuse / fuse-overlayfs", "overlayfuse / native"]
    rows = [[metric.title, *[_num(med[name].get(i)) for i in ALL],
             _ratio(ratio(results, name, FUSE_OVERLAYFS)), _ratio(ratio(results, name, KERNEL))]
            for name, metric in PODMAN_METRICS.items() if name in med]
    return head, rows


def chown_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Each command's median time, and the upper dir's size after it, per implementation
    with and without metacopy (`_metacopy` metrics); fuse-overlayfs has none."""
    med = medians(results)
    head = ["command", "overlayfuse", "overlayfuse metacopy", "kernel", "kernel metacopy",
            "fuse-overlayfs", "overlayfuse / fuse-overlayfs", "overlayfuse / kernel",
            "overlayfuse metacopy / kernel metacopy", "overlayfuse metacopy / overlayfuse",
            "kernel metacopy / kernel"]
    rows = []
    for metric in (*CHOWN_COMMANDS.values(), *CHOWN_UPPER.values()):
        name, timed = metric.name, metric.unit == "s"
        if name not in med and name + "_metacopy" not in med:
            continue
        plain, meta = med.get(name, {}), med.get(name + "_metacopy", {})
        ours, kernel = plain.get(OVERLAYFUSE), plain.get(KERNEL)
        ours_meta, kernel_meta = meta.get(OVERLAYFUSE), meta.get(KERNEL)
        ratios = [_over(ours, plain.get(FUSE_OVERLAYFS)), _over(ours, kernel),
                  _over(ours_meta, kernel_meta), _over(ours_meta, ours),
                  _over(kernel_meta, kernel)]
        values = (ours, ours_meta, kernel, kernel_meta, plain.get(FUSE_OVERLAYFS))
        rows.append([f"{metric.title} ({metric.unit})", *[_num(v) for v in values],
                     *[_ratio(v) if timed else "" for v in ratios]])
    return head, rows


def floor_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    med = medians(results)
    head = ["phase", "ops", "floor (s)", "floor per op", "overlayfuse per op",
            "fuse-overlayfs per op", "overlayfuse / floor", "fuse-overlayfs / floor"]
    rows = []
    for name in FLOOR_METRICS:
        floor = med.get(name, {}).get(FLOOR)
        if floor is None:
            continue
        count = results["counts"].get(name)
        rows.append([METRICS[name].title, f"{count:,}" if count else "", _num(floor),
                     _per_op(floor, count), _per_op(med[name].get(OVERLAYFUSE), count),
                     _per_op(med[name].get(FUSE_OVERLAYFS), count),
                     _ratio(ratio(results, name, FLOOR)),
                     _ratio(_over(med[name].get(FUSE_OVERLAYFS), floor))])
    return head, rows


def _over(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def concurrency_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    med = medians(results)
    head = ["clients", *[f"{title} {SHORT[i]} (ops/s)" for _, _, title in CONCURRENT_OPS
                         for i in ALL],
            *[f"{title} overlayfuse / fuse-overlayfs" for _, _, title in CONCURRENT_OPS]]
    rows = []
    for clients in CLIENTS:
        names = [concurrency_metric(op, clients) for op, _, _ in CONCURRENT_OPS]
        if not any(name in med for name in names):
            continue
        rows.append([str(clients),
                     *[_num(med.get(name, {}).get(i), "MB/s") for name in names for i in ALL],
                     *[_ratio(ratio(results, name, FUSE_OVERLAYFS)) for name in names]])
    return head, rows


def memory_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["daemon", "RSS after cold walk (MB)", "fds after cold walk",
            "RSS after warm walks (MB)", f"RSS over {REPEAT_WALKS} cold walks of one mount (MB)",
            "fds over those walks"]
    rows = []
    status = results.get("status", {})
    for impl in (OVERLAYFUSE, FUSE_OVERLAYFS):
        cold = status.get("walk_cold", {}).get(impl)
        warm = status.get("walk_warm", {}).get(impl)
        repeat = results.get("repeat_walks", {}).get(impl, [])
        if not cold and not repeat:
            continue
        rows.append([
            SHORT[impl],
            _num(_median([s["rss_mb"] for s in cold or []])),
            _int(_median([s["fds"] for s in cold or []])),
            _num(_median([s["rss_mb"] for s in warm or []])),
            " → ".join(f"{r['rss_mb']:.1f}" for r in repeat if r["rss_mb"] is not None),
            " → ".join(str(r["fds"]) for r in repeat if r["fds"] is not None),
        ])
    rows.append(["kernel", "n/a", "n/a", "n/a", "n/a", "n/a"])
    return head, rows


def scaling_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    scale = scaling_medians(results)
    impls = [i for i in ALL if any(k[2] == i for k in scale)]
    head = ["files", "lowers",
            *[f"cold stat {SHORT[i]} (s)" for i in impls],
            *[f"cold walk {SHORT[i]} (s)" for i in impls],
            "stat overlayfuse / fuse-overlayfs", "walk overlayfuse / fuse-overlayfs",
            "overlayfuse RSS after stat (MB)"]
    rows = []
    for files, layers in sorted({(k[0], k[1]) for k in scale}):
        def get(impl: str, metric: str, field: str = "seconds") -> float | None:
            return scale.get((files, layers, impl, metric), {}).get(field)

        def rat(metric: str) -> str:
            ours, theirs = get(OVERLAYFUSE, metric), get(FUSE_OVERLAYFS, metric)
            return _ratio(ours / theirs if ours and theirs else None)

        rows.append([f"{files:,}", str(layers),
                     *[_num(get(i, "stat_cold")) for i in impls],
                     *[_num(get(i, "walk_cold")) for i in impls],
                     rat("stat_cold"), rat("walk_cold"),
                     _num(get(OVERLAYFUSE, "stat_cold", "rss_mb"))])
    return head, rows


def targets_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["target", "measured", "", "result", "the others, for comparison"]
    rows = []
    extra = derived(results)

    def fmt(key: str, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.0f}" if key in ("rss_max_stat", "fd_growth", "mount_ms") \
            else f"{value:.2f}"

    for row in evaluate(results):
        verdict = "not measured" if row["met"] is None else ("**met**" if row["met"]
                                                             else "**missed**")
        others = ", ".join(f"{SHORT[impl]} {fmt(row['key'], value)}"
                           for impl, value in extra.get(row["key"], {}).items()
                           if impl not in ("label", OVERLAYFUSE))
        for base in (KERNEL, FLOOR):
            if row["label"].endswith(f"/ {base}"):
                med = medians(results).get(row["key"], {})
                theirs, reference = med.get(FUSE_OVERLAYFS), med.get(base)
                if theirs is not None and reference:
                    others = f"fuse-overlayfs / {base} {theirs / reference:.2f}"
        rows.append([row["target"], fmt(row["key"], row["value"]), row["label"], verdict,
                     others])
    return head, rows


def markdown(head: list[str], rows: list[list[str]]) -> str:
    numeric = [i for i in range(len(head)) if all(
        r[i].replace(",", "").replace(".", "").replace(" µs", "").isdigit() or r[i] == "n/a"
        for r in rows if r[i])]
    align = ["---:" if i in numeric else "---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(head: list[str], rows: list[list[str]]) -> str:
    rows = [[c.replace("**", "") for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


# ---- the plot ------------------------------------------------------------------------------

def plot(results: dict[str, Any], path: Path) -> bool:
    scale = scaling_medians(results)
    if not scale:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colors = {OVERLAYFUSE: "tab:blue", FUSE_OVERLAYFS: "tab:orange", KERNEL: "tab:green"}
    files_all = sorted({k[0] for k in scale})
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((axes[0], "stat_cold", "cold stat of every file"),
                              (axes[1], "walk_cold", "cold walk (os.walk + lstat)")):
        for impl in ALL:
            for fi, files in enumerate(files_all):
                pts = sorted((k[1], v["seconds"] / files * 1e6) for k, v in scale.items()
                             if k[0] == files and k[2] == impl and k[3] == metric
                             and v["seconds"] is not None)
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts],
                        linestyle=styles[fi % len(styles)], marker="os^D"[fi % 4],
                        color=colors[impl], label=f"{SHORT[impl]}, {files:,} files")
        ax.set_xscale("log", base=2)
        layers = sorted({k[1] for k in scale})
        ax.set_xticks(layers, [str(n) for n in layers])
        ax.set_xlabel("lower layers")
        ax.set_ylabel("µs per file (median of rounds)")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, handlelength=4)
    fig.suptitle("Scaling: each file in one lower layer, the same dirs in all "
                 "(caches dropped, fresh mount)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- the documents -------------------------------------------------------------------------

def _podman_part(results: dict[str, Any]) -> list[str]:
    head, rows = podman_table(results)
    if not rows:
        return []
    spec = results["config"].get("podman", {})
    return [
        "### Rootless podman",
        "",
        "As a real non-root user with subordinate ids (bench/podman.py, the setup of "
        "tests/test_rootless_podman.py), a fresh storage per implementation, a busybox image "
        f"imported offline: `podman run --rm IMG true` {spec.get('runs')} times after one "
        "untimed run (median), and `podman build --no-cache` of the test's 4-step "
        f"Containerfile {_n(spec.get('builds', 1), 'time')} (median). overlayfuse and "
        "fuse-overlayfs as `mount_program`; *native* is podman's own overlay driver (kernel "
        "overlayfs in the user's namespace). overlayfuse's mount program was "
        f"`{results.get('podman_mount_program')}`"
        + (", a wrapper running this checkout with the installed command's interpreter."
           if results["config"].get("editable", True) else
           ", the benchmark's non-editable install of this checkout (bench/install.py)."),
        "",
        markdown(head, rows),
        "",
    ]


def _chown_part(results: dict[str, Any]) -> list[str]:
    head, rows = chown_table(results)
    if not rows:
        return []
    spec = results["config"].get("chown", {})
    return [
        "### chown, with and without metacopy",
        "",
        f"One lower layer with a tree of {spec.get('files', 0):,} small files (512 B – 4 KiB) "
        f"and a {spec.get('big_mib', 0):,} MiB file of real data (no holes); each command on a "
        "fresh mount, caches dropped first (bench/chown.py): `chown -R 1234:1234 tree`, and "
        "`chown 1234:1234` of the big file followed, after another drop of the caches, by a "
        "`sha256sum` of it (checked). *metacopy* is the mount option `metacopy=on`, which "
        "copies up the metadata only; fuse-overlayfs has no such option and always copies "
        "the data. The upper dir's size is its allocated blocks after the command. Medians "
        "over the rounds.",
        "",
        markdown(head, rows),
        "",
    ]


def _floor_part(results: dict[str, Any]) -> list[str]:
    head, rows = floor_table(results)
    if not rows:
        return []
    return [
        "### The floor: a minimal pyfuse3 filesystem",
        "",
        "The metadata phases, in the same rounds, also on bench/floorfs.py: the same pyfuse3, "
        "trio and mount options (`default_permissions`, entry and attribute timeouts of "
        "3600 s, a negative entry for a missing name), showing the same names, answering "
        "LOOKUP, GETATTR and READDIRPLUS from dicts built at start. Each phase sends it the "
        "same requests as overlayfuse (one LOOKUP per cold stat, an OPENDIR, READDIRPLUS and "
        "RELEASEDIR per listed dir), so a phase's time over the floor's is its cost per request "
        "over the least a Python FUSE daemon can spend.",
        "",
        markdown(head, rows),
        "",
    ]


def _concurrency_part(results: dict[str, Any]) -> list[str]:
    head, rows = concurrency_table(results)
    if not rows:
        return []
    cfg = results["config"]
    return [
        "### Concurrent clients",
        "",
        f"{', '.join(map(str, CLIENTS))} client processes at once on a fresh mount, caches "
        "dropped: each takes every n-th name of one list (the cold stat of every visible "
        "file; the cold open and read of every 5th) and all start together; throughput is "
        "all their operations over the time from the first start to the last end (bench/"
        f"concurrency.py). Median of {_n(cfg.get('conc_rounds', 1), 'round')}. "
        "fuse-overlayfs serves requests from several threads, overlayfuse from one trio "
        "thread; the machine has 2 cores.",
        "",
        markdown(head, rows),
        "",
    ]


def document(results: dict[str, Any], png: str | None) -> str:
    m = results["machine"]
    cfg = results["config"]
    main_spec = cfg["main"]
    load = m["load_1min"]
    problems = results.get("problems", [])
    workloads_part: list[str] = []
    if any(name in results["samples"] for name in WORKLOAD_METRICS):
        workloads_part = [
            "### Real workloads",
            "",
            "Whole commands, each on a fresh mount of one lower layer made for it, caches "
            "dropped first (bench/workloads.py): the mount command itself (start to return, "
            "and to the first `stat` of the root answered, warm, repeated), `tar -x` of "
            f"{cfg.get('workloads', {}).get('tar_files', 0):,} small files into the mount and "
            "`rm -rf` of them, `git status` and `git log -p | wc -c` in a repository whose "
            "`.git` is in the lower layer, `make -j2` of a generated C project in the lower "
            "layer, and `python -B` importing a generated package tree (with its .pyc) from "
            "the lower layer. Medians over the rounds (and the repeats, for the mount).",
            "",
            markdown(*workloads_table(results)),
            "",
        ]
    parts = [
        "# Benchmarks",
        "",
        "overlayfuse against kernel overlayfs and fuse-overlayfs over the same layers. "
        "Generated by `scripts/bench`" + (" --quick" if cfg["quick"] else "")
        + f" on {m['date']}, in {_duration(results['duration_s'])}; "
        "re-run it to refresh this page (the numbers below are its latest figures).",
        "",
        "## Machine",
        "",
        markdown(["", ""], [
            ["CPU", f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"],
            ["kernel", m["kernel"]],
            ["Python", m["python"]],
            ["pyfuse3 / trio / libfuse", f"{m['pyfuse3']} / {m['trio']} / {m['libfuse']}"],
            ["fuse-overlayfs", m["fuse_overlayfs"]],
            ["overlayfuse", m["overlayfuse"]],
            ["overlayfuse command timed", _command_timed(cfg)],
            ["layers on", m["filesystem"]],
            ["load average (1 min) during the run",
             f"min {load['min']:.2f}, median {load['median']:.2f}, max {load['max']:.2f}"],
        ]),
        "",
        "**Noise.** This is a 2-core virtual machine, and other work (test suites of other "
        "sessions) ran on it during the benchmark; the load average above shows how much. "
        "Absolute times are therefore noisy, by tens of percent for the short phases; the "
        "ratios are more stable because the implementations alternate within each round, but "
        "a ratio near a target's bound can flip from run to run. Dropping the page cache also "
        "slows down whatever else runs.",
        "",
        "## Method",
        "",
        f"- **Stack**: 3 lower layers. The bottom one has {main_spec['dirs']} dirs of "
        f"{main_spec['files']} small files (512 B – 4 KiB) and a {main_spec['big_mib']} MiB "
        "file; the middle one overrides every 10th file, whites out every 20th (chardev 0/0), "
        "adds files and has one opaque dir; the top one overrides every 50th file and adds a "
        f"dir and files. The merged tree shows {cfg['visible_files']:,} small files in "
        f"{cfg['dirs'] - 1} dirs. The upper dir starts empty.",
        "- **Fresh for every phase**: each phase mounts each implementation anew, with its own "
        "new upper and work dir over the same read-only lower layers, then runs `sync` and "
        "`echo 3 > /proc/sys/vm/drop_caches`: cold means cold for the kernel's caches "
        "(page cache, dentries, inodes, the lower layers' too) and for the daemon. A warm "
        "phase first runs its operation once, untimed, then times it (median of 3–5 passes).",
        f"- **Rounds**: {_n(cfg['rounds'], 'round')} of the phases; "
        f"{_n(cfg['scale_rounds'], 'round')} of the smaller scaling runs and "
        f"{_n(cfg.get('scale_rounds_large', cfg['scale_rounds']), 'round')} of the larger ones. "
        "The order of the implementations rotates from phase to phase and round to round. "
        "Tables show medians over the rounds.",
        "- **Timing**: the operations are Python calls (`os.lstat`, `os.scandir`, `os.walk`, "
        "`os.open`/`os.read`/`os.write`, `os.unlink`) in a worker process of their own, timed "
        "with `time.perf_counter`; start-up is not timed. Default mount options for all three "
        "(`-o lowerdir=…,upperdir=…,workdir=…` and nothing else; overlayfuse's default entry "
        "and attribute timeouts are 3600 s, fuse-overlayfs keeps its own default).",
        "- **Operations**: *walk* is `os.walk` plus an `lstat` of every file (like `du`); *find* "
        "runs `find(1)` over the merged tree (a readdir of every dir, no stat); "
        "*missing names* are the whited-out names plus names that never existed; *small-file "
        "reads* open and read every 5th visible file; *create* is open(O_CREAT|O_EXCL), write "
        "1 KiB, close, spread over existing lower dirs (so their copy-up is included); "
        "*small writes* are 8-byte `write` calls to one new file opened O_APPEND, then a "
        "close (a logger's pattern); *copy-up* opens with O_APPEND and writes one byte; "
        "*unlink* removes lower files, leaving whiteouts. Write phases are not followed by "
        "a sync: their data may still be in the page cache when the clock stops (overlayfuse "
        "and the kernel fsync a copied-up file).",
        "- **Memory**: the daemon's VmRSS and open fds are read from /proc/PID after each timed "
        f"step; separately, one mount is walked {REPEAT_WALKS} times with the caches dropped "
        "before each walk (so the kernel forgets the inodes and the daemon sees them again).",
        "- **Checks**: every operation's errors are counted and every walk's file and dir "
        "counts compared with the stack's; a failed check is listed under Problems.",
        "",
        "## Results",
        "",
        "Times in seconds (lower is better), throughput in MB/s (higher is better); ratios are "
        "overlayfuse's median divided by the other's (for MB/s, a ratio above 1 means "
        "overlayfuse is faster).",
        "",
        markdown(*main_table(results)),
        "",
        "### Targets",
        "",
        markdown(*targets_table(results)),
        "",
        *workloads_part,
        *_podman_part(results),
        *_chown_part(results),
        *_floor_part(results),
        *_concurrency_part(results),
        "### Daemon memory and fds",
        "",
        markdown(*memory_table(results)),
        "",
    ]
    if results.get("scaling"):
        parts += [
            "### Scaling",
            "",
            "Cold stat of every file and cold walk, with the files spread round-robin over 1 to "
            "64 lower layers (each file in exactly one layer; the same dirs in every layer), "
            "for trees of " + " and ".join(f"{n:,}" for n in sorted(
                {row["files"] for row in results["scaling"]})) + " files. The plot shows time "
            "per file.",
            "",
        ]
        if png:
            parts += [f"![scaling plot]({png})", ""]
        parts += [markdown(*scaling_table(results)), ""]
    parts += ["### Problems", ""]
    if problems:
        parts += [f"- {p['impl']}, {p['what']}: {p['detail']}" for p in problems]
    else:
        parts += ["None: every operation succeeded and every walk found the expected tree."]
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        parts += ["", notes.read_text().rstrip()]
    parts += ["", "## Running it", "",
              "```sh",
              "scripts/bench            # full run, 15-20 min; rewrites this page",
              "scripts/bench --no-chown # 6 min less: no chown runs (they need 2.4 GiB free)",
              "scripts/bench --quick    # smaller stack, one round: a smoke test (< 1 min)",
              "scripts/bench --help     # phases, implementations, rounds, where the layers live",
              "```", "",
              "It needs root (kernel overlayfs, dropping caches). Raw samples, per-round daemon "
              "memory and the worker's counts are in `bench/results/DATE/results.json`. "
              "Benchmarks are never part of the test suite: no test asserts a timing.", ""]
    return "\n".join(parts)


def render(results: dict[str, Any], out: Path, docs: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    have_png = plot(results, out / PNG)
    (out / "report.md").write_text(document(results, PNG if have_png else None))
    print()
    print(text_table(*main_table(results)))
    if any(name in results["samples"] for name in WORKLOAD_METRICS):
        print()
        print(text_table(*workloads_table(results)))
    print()
    print(text_table(*targets_table(results)))
    for table in (podman_table, chown_table, floor_table, concurrency_table):
        head, rows = table(results)
        if rows:
            print()
            print(text_table(head, rows))
    print()
    print(text_table(*memory_table(results)))
    if results.get("scaling"):
        print()
        print(text_table(*scaling_table(results)))
    if results.get("problems"):
        print(f"\n{len(results['problems'])} problem(s): see {out / 'report.md'}")
    if not have_png and results.get("scaling"):
        print("(no plot: matplotlib is not installed; scripts/bench installs it)")
    if docs is not None:
        if have_png:
            shutil.copyfile(out / PNG, docs / PNG)
        (docs / "benchmarks.md").write_text(document(results, PNG if have_png else None))
