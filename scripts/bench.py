"""End-to-end benchmarks of local clusters on loopback, optionally beside Dask (`make bench`).

Starts real clusters (1 coordinator, or 3 peer coordinators, and `--workers` workers of
`--slots` slots, in temporary directories on free ports), runs each selected section against
them, and always stops every process it started, also on Ctrl-C or SIGTERM. Figures go to
stdout as a table (figure, command, our value, Dask's value, ratio ours/Dask), or as one JSON
document with `--json`; progress goes to stderr. `--repeat N` runs everything N times,
interleaved (ours, then Dask's, then ours again...), and reports the medians.

Sections (`--only NAME`, repeatable; all by default):
  throughput  `--jobs` no-op Python jobs (`builtins:abs`) via `SyncClient.map` + `gather`:
              end-to-end jobs/s and the submit-only rate; per `--coordinators` count. With a
              second `--isolation` (default: process, then thread) the lone coordinator's
              cluster is measured in thread mode too: `isolation.process_vs_thread`.
  latency     `--latency-samples` sequential submit -> result round trips: p50, p99 (ms).
  submits     `--submits` sequential acknowledged submits: submits/s and p50 ms.
  shell       `--shell-jobs` shell jobs (`true`): jobs/s, which measures process spawning.
  calls       `--calls` no-op calls through a worker's executor alone, `--slots` at a time, in
              thread and in process isolation: calls/s of each and `process_vs_thread`.
  paired      process over thread isolation side by side on one coordinator (`--workers` of
              each mode, jobs routed by tag, alternating): round trip p50 of each and of the
              pairs' differences, `map` throughput of each, CPU µs per job of each mode's
              workers and call processes (scripts/bench_paired.py). Robust to a loaded machine
              where two clusters measured one after the other are not.
  queued      coordinator CPU µs per job for `--queued-batch` jobs run while N others stay
              queued (`--queued 10000,1000000`): the queued ones ask for a tag no worker has,
              so they are really pending for the whole batch. CPU is the coordinator process's
              utime + stime from /proc/PID/stat, read before and after the batch.
  workers     the leader's CPU share (% of one core) over `--idle-s` seconds with N workers
              connected and heartbeating at the default interval (`--worker-counts
              10,100,1000`: one load-generator process, `tcpsched.testing.loadgen`, speaking
              the real protocol), and dispatch throughput of `--scale-jobs` jobs at each N.
  restart     `scripts/bench_restart.py` (restart with many jobs, RSS per job), if present:
              called with `--json` and `--restart-args`; skipped with the reason otherwise.

`--compare dask` runs the throughput and latency work on Dask distributed's LocalCluster (2
worker processes x 1 thread, see bench_dask.py) in the same run; without `distributed`
installed the comparison is skipped with the reason. `--token` runs every cluster with a
shared token (authenticated handshakes, MAC'd frames).

    python scripts/bench.py [--coordinators 1|3|1,3] [--only NAME]... [--repeat 3]
        [--compare dask] [--jobs 20000] [--latency-samples 1000] [--submits 1000]
        [--shell-jobs 2000] [--calls 20000] [--queued 10000,1000000] [--queued-batch 5000]
        [--worker-counts 10,100,1000] [--idle-s 5] [--scale-jobs 5000] [--workers 2]
        [--slots 1] [--fsync always|batch|never] [--isolation process|thread]... [--token]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_*.py beside this file

import bench_dask
import bench_paired
import bench_sections as sections
from bench_sections import BenchConfig, Figure

from tcpsched.core.dispatch import POLICIES
from tcpsched.testing.processes import ProcessGroup

CLUSTER_SECTIONS = ("throughput", "latency", "submits", "shell")
SECTIONS = (*CLUSTER_SECTIONS, "calls", "paired", "queued", "workers", "restart")
RUNNERS = {**sections.SECTIONS, "paired": bench_paired.paired}
DASK_SECTIONS = ("throughput", "latency")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes numbers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{flag} takes numbers of at least 1")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark local tcpsched clusters (and Dask).")
    p.add_argument("--coordinators", default="1,3", metavar="1|3|1,3",
                   help="coordinators in the cluster; 1,3 runs both and compares (1,3)")
    p.add_argument("--only", action="append", choices=SECTIONS, default=None,
                   help="run only this section (repeatable; default: all)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run everything N times, interleaved, and report medians (1)")
    p.add_argument("--compare", choices=("dask",), default=None,
                   help="also run throughput and latency on Dask distributed")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs for throughput (20000)")
    p.add_argument("--latency-samples", type=int, default=1_000, metavar="N",
                   help="sequential round trips for latency (1000)")
    p.add_argument("--submits", type=int, default=1_000, metavar="N",
                   help="sequential acknowledged submits (1000)")
    p.add_argument("--shell-jobs", type=int, default=2_000, metavar="N",
                   help="`true` shell jobs for shell (2000)")
    p.add_argument("--calls", type=int, default=20_000, metavar="N",
                   help="no-op calls through the executor for calls (20000)")
    p.add_argument("--queued", default="10000,1000000", metavar="N,N",
                   help="jobs kept queued while a batch is measured (10000,1000000)")
    p.add_argument("--queued-batch", type=int, default=5_000, metavar="N",
                   help="jobs run and measured at each queue size (5000)")
    p.add_argument("--worker-counts", default="10,100,1000", metavar="N,N",
                   help="connected load-generator workers (10,100,1000)")
    p.add_argument("--idle-s", type=float, default=5.0, metavar="S",
                   help="seconds the leader's CPU is measured with idle workers (5)")
    p.add_argument("--scale-jobs", type=int, default=5_000, metavar="N",
                   help="jobs dispatched at each worker count (5000)")
    p.add_argument("--restart-args", default="", metavar="ARGS",
                   help="arguments for scripts/bench_restart.py (its defaults)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--slots", type=int, default=1, help="slots per worker (1)")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="the workers' --prefetch (their default, 16 x slots, if not given)")
    p.add_argument("--policy", default="round-robin", choices=POLICIES)
    p.add_argument("--fsync", default=None, choices=("always", "batch", "never"),
                   help="the coordinators' journal fsync policy (their default if not given)")
    p.add_argument("--token", action="store_true",
                   help="run the clusters with a shared token (authenticated, MAC'd frames)")
    p.add_argument("--isolation", action="append", choices=("process", "thread"), default=None,
                   help="the workers' --isolation (repeatable; default: process, then thread "
                   "for throughput)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    counts = ("--jobs", "--calls", "--latency-samples", "--submits", "--shell-jobs",
              "--queued-batch", "--scale-jobs", "--workers", "--slots", "--repeat")
    for flag in counts:
        if getattr(args, flag[2:].replace("-", "_")) < 1:
            p.error(f"{flag} must be at least 1")
    if args.idle_s <= 0:
        p.error("--idle-s must be > 0 seconds")
    try:
        args.queued = _int_list(args.queued, "--queued")
        args.worker_counts = _int_list(args.worker_counts, "--worker-counts")
        args.coordinators = sorted(set(_int_list(args.coordinators, "--coordinators")))
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if not set(args.coordinators) <= {1, 3}:
        p.error("--coordinators takes 1, 3 or 1,3")
    return args


def _with(figures: list[Figure], **changes: Any) -> list[Figure]:
    return [attrs.evolve(f, **changes) for f in figures]


def run_once(args: argparse.Namespace, config: BenchConfig, names: Sequence[str],
             token: bytes | None, skipped: dict[str, str]) -> list[Figure]:
    """Every selected section once; Dask's right after ours when compared."""
    figures: list[Figure] = []
    isolations = args.isolation or ["process", "thread"]
    ours = [n for n in names if n in CLUSTER_SECTIONS]
    for count in args.coordinators if ours else []:
        figures += in_cluster(config, token, count, ours,
                              lambda group, c=count: sections.start_cluster(group, config,
                                                                            token, c))
    if "throughput" in names and 1 in args.coordinators:
        for isolation in isolations[1:]:
            other = attrs.evolve(config, isolation=isolation)
            measured = in_cluster(other, token, 1, ["throughput"],
                                  lambda group, o=other: sections.start_cluster(group, o, token, 1))
            figures += _with(measured, section=f"throughput.{isolation}")
    if args.compare == "dask" and any(n in DASK_SECTIONS for n in names):
        reason = bench_dask.unavailable()
        if reason is not None:
            skipped["dask"] = reason
        else:
            figures += _with(sections.dask_figures(config, names), system="dask",
                             coordinators=0)
    if "calls" in names:
        figures += _with(sections.calls(None, "", 0, config, token), coordinators=0)
    if "paired" in names:  # one coordinator, workers of both modes routed by tag
        figures += in_cluster(config, token, 1, ["paired"],
                              lambda group: bench_paired.start(group, config, token))
    if "queued" in names:  # workers without shells: queued shell jobs are unplaceable
        figures += in_cluster(config, token, 1, ["queued"],
                              lambda group: sections.start_cluster(group, config, token, 1,
                                                                   no_shell=True))
    if "workers" in names:
        figures += in_cluster(config, token, 1, ["workers"],
                              lambda group: sections.start_cluster(group, config, token, 1,
                                                                   workers=0))
    if "restart" in names:
        figures += sections.restart_figures(args.restart_args, skipped)
    return figures


def in_cluster(config: BenchConfig, token: bytes | None, count: int, names: Sequence[str],
               start: Callable[[ProcessGroup], tuple[str, int]]) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="tcpsched-bench-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            address, leader_pid = start(group)
            _log(f"cluster: {count} coordinator(s) at {address}, isolation {config.isolation}, "
                 f"sections {' '.join(names)}")
            figures: list[Figure] = []
            for name in names:
                figures += RUNNERS[name](group, address, leader_pid, config, token)
            return _with(figures, coordinators=count)
        except Exception:
            _log(group.logs()[-8000:])
            raise
        finally:
            group.stop_all()


def medians(runs: list[list[Figure]]) -> list[Figure]:
    """One figure per key, the median of its values over the runs, in first-seen order."""
    values: dict[tuple[str, str, int, str], list[float]] = {}
    first: dict[tuple[str, str, int, str], Figure] = {}
    for run in runs:
        for f in run:
            key = (f.section, f.name, f.coordinators, f.system)
            values.setdefault(key, []).append(f.value)
            first.setdefault(key, f)
    return [attrs.evolve(first[key], value=statistics.median(v), samples=tuple(v))
            for key, v in values.items()]


def derived(figures: Sequence[Figure]) -> list[Figure]:
    """3 coordinators' cost in %, and process over thread isolation."""
    out = []
    rates = {(f.section, f.name, f.coordinators): f.value for f in figures
             if f.unit == "jobs/s" and f.system == "tcpsched"}
    for (section, name, count), one in rates.items():
        three = rates.get((section, name, 3))
        if count == 1 and three is not None and one > 0:
            out.append(Figure(section, f"{name}_cost_3_vs_1", 100.0 * (1.0 - three / one),
                              "%", 3))
    process = rates.get(("throughput", "end_to_end", 1))
    thread = rates.get(("throughput.thread", "end_to_end", 1))
    if process and thread:
        out.append(Figure("isolation", "process_vs_thread", process / thread, "ratio", 1))
    return out


def rows(figures: Sequence[Figure], compared: bool) -> list[dict[str, Any]]:
    """Our figures, each with Dask's value and the ratio ours/Dask where Dask measured it."""
    dask = {(f.section, f.name): f for f in figures if f.system == "dask"}
    out = []
    for f in figures:
        if f.system != "tcpsched":
            continue
        other = dask.get((f.section, f.name))
        only = f.section.split(".")[0]
        command = f"scripts/bench.py --only {only if only in SECTIONS else 'throughput'}"
        if f.name.endswith("_cost_3_vs_1"):
            command += " --coordinators 1,3"
        elif f.coordinators in (1, 3):
            command += f" --coordinators {f.coordinators}"
        if f.section.startswith("throughput.") or f.section == "isolation":
            command += " --isolation process --isolation thread"
        if compared and other is not None:
            command += " --compare dask"
        row: dict[str, Any] = {"figure": f.label(), "command": command, "value": f.value,
                               "unit": f.unit, "samples": list(f.samples)}
        if other is not None:
            row["dask"] = other.value
            row["ratio"] = f.value / other.value if other.value else None
        out.append(row)
    return out


def table(found: Sequence[dict[str, Any]]) -> str:
    header = ("figure", "command", "value", "Dask", "ratio")
    lines = [[r["figure"], r["command"], f"{sections.fmt(r['value'])} {r['unit']}",
              "" if "dask" not in r else f"{sections.fmt(r['dask'])} {r['unit']}",
              "" if r.get("ratio") is None else f"{r['ratio']:.2f}"] for r in found]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(SECTIONS)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so the finally blocks stop the clusters
    token = secrets.token_hex(16).encode() if args.token else None
    config = BenchConfig(jobs=args.jobs, submits=args.submits,
                         latency_samples=args.latency_samples, shell_jobs=args.shell_jobs,
                         calls=args.calls,
                         queued=tuple(args.queued), queued_batch=args.queued_batch,
                         worker_counts=tuple(args.worker_counts), idle_s=args.idle_s,
                         scale_jobs=args.scale_jobs, workers=args.workers, slots=args.slots,
                         prefetch=args.prefetch,
                         policy=args.policy, fsync=args.fsync, token=args.token,
                         isolation=(args.isolation or ["process"])[0])
    skipped: dict[str, str] = {}
    runs = []
    try:
        for n in range(args.repeat):
            _log(f"run {n + 1} of {args.repeat}")
            runs.append(run_once(args, config, names, token, skipped))
    except KeyboardInterrupt:
        _log("interrupted: the clusters are stopped")
        return 130
    figures = medians(runs)
    figures += derived(figures)
    found = rows(figures, args.compare == "dask")
    if args.json:
        print(json.dumps({
            "config": {**attrs.asdict(config), "coordinators": args.coordinators,
                       "repeat": args.repeat, "compare": args.compare, "sections": names},
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform(), "loadavg": list(os.getloadavg())},
            "results": sections.document(figures),
            "rows": found,
            "skipped": skipped,
        }, indent=2))
    else:
        print(table(found))
        for what, reason in skipped.items():
            print(f"skipped {what}: {reason}")
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
              f"{os.cpu_count()} CPUs; medians of {args.repeat} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
