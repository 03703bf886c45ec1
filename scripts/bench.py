"""End-to-end benchmarks of a local cluster and its workers on loopback (`make bench`).

Starts a real cluster (1 coordinator, or 3 peer coordinators with `--coordinators 3`, and
`--workers` workers, in a temporary directory on free ports), runs each benchmark against it,
and always stops every process it started, also on Ctrl-C or SIGTERM. `--coordinators 1,3`
runs the benchmarks against each size in turn and adds what the peer group costs (a reply
waits for its record to be on a majority: one follower round trip more). Figures go to stdout
as a table, or as one JSON document with `--json`; progress goes to stderr.

Benchmarks (one function each, listed in `BENCHMARKS`; add a section by adding a function):
  throughput  N no-op Python jobs submitted with `Client.map` and gathered: end-to-end jobs/s,
              and the submit-only rate (how fast the coordinator takes jobs in, acknowledged).
  submits     one submit at a time, each acknowledged before the next: submits/s and p50 ms.
  latency     one job at a time, submit -> result: p50, p99 (and mean, max) in milliseconds.

Each benchmark runs on a lone coordinator and on a peer group of three (`--coordinators`), with
the workers' `--isolation process` (the default); the lone coordinator is also measured with
`--isolation thread`, and `isolation.process_vs_thread` is process mode's end-to-end throughput
over thread mode's (sections of thread runs end in `.thread`).

    python scripts/bench.py [--coordinators 1|3|1,3] [--jobs 20000] [--submits 1000]
                            [--latency-samples 500] [--workers 2] [--slots 4] [--prefetch N]
                            [--fsync always|batch|never] [--token] [--only NAME]...
                            [--isolation process|thread]... [--json]

`--token` runs the cluster with a shared token (random, in the temporary directory), so every
connection authenticates and, without TLS, every coalesced write carries a MAC: the cost of
authenticated frames shows as the difference from a run without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from tcpsched import Client
from tcpsched.client import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_for_workers

NOOP_FUNCTION = "builtins:abs"  # abs(i) == i for the items sent: the cheapest proof it ran
GATHER_TIMEOUT_S = 600.0


@attrs.frozen
class Figure:
    """One measured number, named `section.name`, with its unit."""

    section: str
    name: str
    value: float
    unit: str
    coordinators: int = 1


@attrs.frozen
class BenchConfig:
    jobs: int = 20_000
    submits: int = 1_000
    latency_samples: int = 500
    workers: int = 2
    slots: int = 4
    policy: str = "round-robin"
    fsync: str | None = None  # None: the coordinator's default
    token: bool = False  # a shared token: authenticated handshakes and MAC'd frames
    isolation: str = "process"  # the workers' --isolation
    prefetch: int | None = None  # the workers' --prefetch (None: their default)


Benchmark = Callable[[Client, BenchConfig], Awaitable[list[Figure]]]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (fraction in [0, 1])."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def bench_throughput(client: Client, config: BenchConfig) -> list[Figure]:
    """`config.jobs` no-op jobs through `map` (batched submits), then `gather` of them all."""
    n = config.jobs
    _log(f"throughput: submitting {n} jobs with Client.map ...")
    start = time.perf_counter()
    ids = await client.map(NOOP_FUNCTION, range(n))
    submitted = time.perf_counter()
    records = await client.gather(ids, timeout=GATHER_TIMEOUT_S)
    finished = time.perf_counter()
    failed = [r for r in records if r["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} jobs did not succeed, e.g. {failed[0]}")
    if [r["result"] for r in records] != list(range(n)):
        raise RuntimeError("results do not match the submitted arguments")
    total_s, submit_s = finished - start, submitted - start
    return [
        Figure("throughput", "end_to_end", n / total_s, "jobs/s"),
        Figure("throughput", "submit_only", n / submit_s, "jobs/s"),
        Figure("throughput", "total_time", total_s, "s"),
        Figure("throughput", "jobs", n, "jobs"),
    ]


async def bench_submits(client: Client, config: BenchConfig) -> list[Figure]:
    """Sequential single submits: each is acknowledged (committed) before the next is sent."""
    n = config.submits
    _log(f"submits: {n} sequential acknowledged submits ...")
    for i in range(min(20, n)):  # warm up the connection and the leader's paths
        await client.submit_call(NOOP_FUNCTION, i)
    samples_ms = []
    start = time.perf_counter()
    for i in range(n):
        before = time.perf_counter()
        await client.submit_call(NOOP_FUNCTION, i)
        samples_ms.append((time.perf_counter() - before) * 1000.0)
    elapsed = time.perf_counter() - start
    samples_ms.sort()
    return [
        Figure("submits", "rate", n / elapsed, "jobs/s"),
        Figure("submits", "p50", percentile(samples_ms, 0.50), "ms"),
        Figure("submits", "p99", percentile(samples_ms, 0.99), "ms"),
        Figure("submits", "samples", n, "jobs"),
    ]


async def bench_latency(client: Client, config: BenchConfig) -> list[Figure]:
    """Sequential submit -> wait for the record, one job at a time."""
    n = config.latency_samples
    _log(f"latency: {n} sequential submit -> result round trips ...")
    for i in range(min(20, n)):  # warm up: imports on the workers, connection buffers
        await client.wait(await client.submit_call(NOOP_FUNCTION, i), timeout=60)
    samples_ms = []
    for i in range(n):
        start = time.perf_counter()
        record = await client.wait(await client.submit_call(NOOP_FUNCTION, i), timeout=60)
        samples_ms.append((time.perf_counter() - start) * 1000.0)
        if record["state"] != "succeeded":
            raise RuntimeError(f"latency job failed: {record}")
    samples_ms.sort()
    return [
        Figure("latency", "p50", percentile(samples_ms, 0.50), "ms"),
        Figure("latency", "p99", percentile(samples_ms, 0.99), "ms"),
        Figure("latency", "mean", sum(samples_ms) / n, "ms"),
        Figure("latency", "max", samples_ms[-1], "ms"),
        Figure("latency", "samples", n, "jobs"),
    ]


BENCHMARKS: dict[str, Benchmark] = {
    "throughput": bench_throughput,
    "submits": bench_submits,
    "latency": bench_latency,
}


def start_cluster(group: ProcessGroup, config: BenchConfig, token: bytes | None,
                  coordinators: int = 1) -> str:
    """One coordinator, or a peer group of `coordinators`, and `config.workers` workers given
    every address; returns the addresses, comma-separated."""
    extra = ["--policy", config.policy, "--log-level", "warning"]
    worker_extra = ["--log-level", "warning", "--isolation", config.isolation]
    if config.prefetch is not None:
        worker_extra += ["--prefetch", str(config.prefetch)]
    if config.fsync is not None:
        extra += ["--fsync", config.fsync]
    if token is not None:
        token_file = group.workdir / "token"
        token_file.write_bytes(token)
        extra += ["--token-file", str(token_file)]
        worker_extra += ["--token-file", str(token_file)]
    if coordinators == 1:
        _, address = group.coordinator(extra=extra)
    else:
        address = ",".join(a for _, a in group.group(coordinators, extra=extra).values())
    names = [f"w{i + 1}" for i in range(config.workers)]
    for name in names:
        group.worker(address, name, slots=config.slots, extra=worker_extra)
    with SyncClient(address, connect_timeout=30.0, token=token) as client:
        wait_for_workers(client, names, timeout=30.0)
    return address


async def run_benchmarks(address: str, config: BenchConfig, names: Sequence[str],
                         token: bytes | None, coordinators: int = 1) -> list[Figure]:
    figures: list[Figure] = []
    async with Client(address, token=token, connect_timeout=30.0) as client:
        for name in names:
            figures.extend(attrs.evolve(f, coordinators=coordinators)
                           for f in await BENCHMARKS[name](client, config))
    return figures


def group_cost(figures: Sequence[Figure]) -> list[Figure]:
    """For each rate measured with 1 and with 3 coordinators: how much slower 3 are, in %."""
    rates = {(f.section, f.name, f.coordinators): f.value for f in figures
             if f.unit == "jobs/s"}
    return [Figure(section, f"{name}_cost_3_vs_1", 100.0 * (1.0 - rates[section, name, 3] / one),
                   "%", 3)
            for (section, name, count), one in rates.items()
            if count == 1 and (section, name, 3) in rates]


def format_value(figure: Figure) -> str:
    if figure.unit in ("jobs", "s") and figure.value == int(figure.value):
        return f"{int(figure.value)}"
    if figure.unit == "jobs/s":
        return f"{figure.value:,.0f}"
    if figure.unit == "ratio":
        return f"{figure.value:.3f}"
    return f"{figure.value:.2f}"


def table(figures: Sequence[Figure]) -> str:
    rows = [(str(f.coordinators), f"{f.section}.{f.name}", format_value(f), f.unit)
            for f in figures]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in
              enumerate(("coordinators", "benchmark", "value", "unit"))]
    lines = [f"{'coordinators':>{widths[0]}}  {'benchmark':<{widths[1]}}  "
             f"{'value':>{widths[2]}}  unit"]
    lines += [f"{count:>{widths[0]}}  {name:<{widths[1]}}  {value:>{widths[2]}}  {unit}"
              for count, name, value, unit in rows]
    return "\n".join(lines)


def document(figures: Sequence[Figure], config: BenchConfig,
             coordinators: Sequence[int] = (1,)) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for f in figures:
        # One coordinator keeps the historical keys; a peer group's sections are "name@3".
        section = f.section if f.coordinators == 1 else f"{f.section}@{f.coordinators}"
        results.setdefault(section, {})[f.name] = {"value": f.value, "unit": f.unit}
    return {
        "config": {**attrs.asdict(config), "coordinators": list(coordinators)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "results": results,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark a local tcpsched cluster.")
    p.add_argument("--coordinators", default="1", metavar="1|3|1,3",
                   help="coordinators in the cluster; 1,3 runs both and compares (1)")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs for throughput (20000)")
    p.add_argument("--submits", type=int, default=1_000, metavar="N",
                   help="sequential acknowledged submits (1000)")
    p.add_argument("--latency-samples", type=int, default=500, metavar="N",
                   help="sequential round trips for latency (500)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--slots", type=int, default=4, help="slots per worker (4)")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="the workers' --prefetch (their default if not given)")
    p.add_argument("--policy", default="round-robin", choices=("round-robin", "random"))
    p.add_argument("--fsync", default=None, choices=("always", "batch", "never"),
                   help="the coordinator's journal fsync policy (its default if not given)")
    p.add_argument("--token", action="store_true",
                   help="run the cluster with a shared token (authenticated, MAC'd frames)")
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), default=None,
                   help="run only this benchmark (repeatable)")
    p.add_argument("--isolation", action="append", choices=("process", "thread"), default=None,
                   help="the workers' --isolation (repeatable; default: both, one after the "
                   "other)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    if (args.jobs < 1 or args.latency_samples < 1 or args.workers < 1 or args.slots < 1
            or args.submits < 1):
        p.error("--jobs, --submits, --latency-samples, --workers and --slots must be at "
                "least 1")
    try:
        args.coordinators = sorted({int(n) for n in args.coordinators.split(",")})
    except ValueError:
        p.error("--coordinators takes 1, 3 or 1,3")
    if not set(args.coordinators) <= {1, 3}:
        p.error("--coordinators takes 1, 3 or 1,3")
    return args


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def isolation_ratio(figures: Sequence[Figure]) -> list[Figure]:
    """Process mode's end-to-end throughput over thread mode's, on one coordinator."""
    rates = {f.section: f.value for f in figures if f.name == "end_to_end" and f.coordinators == 1}
    process, thread = rates.get("throughput"), rates.get("throughput.thread")
    if process is None or thread is None:
        return []
    return [Figure("isolation", "process_vs_thread", process / thread, "ratio", 1)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    isolations = args.isolation or ["process", "thread"]
    names = args.only or list(BENCHMARKS)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so the finally below stops the cluster
    import uvloop

    figures: list[Figure] = []
    token = secrets.token_hex(16).encode() if args.token else None
    base = BenchConfig(jobs=args.jobs, submits=args.submits,
                       latency_samples=args.latency_samples, workers=args.workers,
                       slots=args.slots, prefetch=args.prefetch, policy=args.policy,
                       fsync=args.fsync, token=args.token,
                       isolation=isolations[0])
    runs = [(count, isolations[0]) for count in args.coordinators]
    if 1 in args.coordinators:
        runs += [(1, isolation) for isolation in isolations[1:]]
    for count, isolation in runs:
        config = attrs.evolve(base, isolation=isolation)
        with tempfile.TemporaryDirectory(prefix="tcpsched-bench-") as tmp:
            group = ProcessGroup(Path(tmp))
            try:
                address = start_cluster(group, config, token, count)
                _log(f"cluster: {count} coordinator(s) at {address} (fsync "
                     f"{config.fsync or 'default'}, token {'on' if token else 'off'}), "
                     f"{config.workers} workers x {config.slots} slots, isolation {isolation}")
                measured = uvloop.run(run_benchmarks(address, config, names, token, count))
            except KeyboardInterrupt:
                _log("interrupted: stopping the cluster")
                return 130
            except Exception:
                _log(group.logs())
                raise
            finally:
                group.stop_all()
        if isolation != isolations[0]:
            measured = [attrs.evolve(f, section=f"{f.section}.{isolation}") for f in measured]
        figures += measured
    figures += group_cost(figures)
    figures += isolation_ratio(figures)
    if args.json:
        doc = document(figures, base, args.coordinators)
        doc["config"]["isolation"] = isolations
        print(json.dumps(doc, indent=2))
    else:
        print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
