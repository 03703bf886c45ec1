"""End-to-end benchmarks of one coordinator and its workers on loopback (`make bench`).

Starts a real cluster (1 coordinator, `--workers` workers, in a temporary directory on free
ports), runs each benchmark against it, and always stops every process it started, also on
Ctrl-C or SIGTERM. Figures go to stdout as a table, or as one JSON document with `--json`;
progress goes to stderr.

Benchmarks (one function each, listed in `BENCHMARKS`; add a section by adding a function):
  throughput  N no-op Python jobs submitted with `Client.map` and gathered: end-to-end jobs/s,
              and the submit-only rate (how fast the coordinator takes jobs in).
  latency     one job at a time, submit -> result: p50, p99 (and mean, max) in milliseconds.

Each benchmark runs once per worker `--isolation` asked for (both by default, each on a
cluster of its own, sections named `throughput.process`, `throughput.thread`, ...); with both,
`isolation.process_vs_thread` is process mode's end-to-end throughput over thread mode's.

    python scripts/bench.py [--jobs 20000] [--latency-samples 500] [--workers 2] [--slots 4]
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

NOOP_FUNCTION = "operator:pos"  # returns its argument: the cheapest job that proves it ran
GATHER_TIMEOUT_S = 600.0


@attrs.frozen
class Figure:
    """One measured number, named `section.name`, with its unit."""

    section: str
    name: str
    value: float
    unit: str


@attrs.frozen
class BenchConfig:
    jobs: int = 20_000
    latency_samples: int = 500
    workers: int = 2
    slots: int = 4
    policy: str = "round-robin"
    fsync: str | None = None  # None: the coordinator's default
    token: bool = False  # a shared token: authenticated handshakes and MAC'd frames
    isolation: str = "process"  # the workers' --isolation


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
    "latency": bench_latency,
}


def start_cluster(group: ProcessGroup, config: BenchConfig, token: bytes | None) -> str:
    """One coordinator (state in memory) and `config.workers` workers; returns its address."""
    extra = ["--policy", config.policy, "--log-level", "warning"]
    worker_extra = ["--log-level", "warning", "--isolation", config.isolation]
    if config.fsync is not None:
        extra += ["--fsync", config.fsync]
    if token is not None:
        token_file = group.workdir / "token"
        token_file.write_bytes(token)
        extra += ["--token-file", str(token_file)]
        worker_extra += ["--token-file", str(token_file)]
    _, address = group.coordinator(extra=extra)
    names = [f"w{i + 1}" for i in range(config.workers)]
    for name in names:
        group.worker(address, name, slots=config.slots, extra=worker_extra)
    with SyncClient(address, connect_timeout=30.0, token=token) as client:
        wait_for_workers(client, names, timeout=30.0)
    return address


async def run_benchmarks(address: str, config: BenchConfig, names: Sequence[str],
                         token: bytes | None) -> list[Figure]:
    figures: list[Figure] = []
    async with Client([address], token=token, connect_timeout=30.0) as client:
        for name in names:
            figures.extend(await BENCHMARKS[name](client, config))
    return figures


def format_value(figure: Figure) -> str:
    if figure.unit in ("jobs", "s") and figure.value == int(figure.value):
        return f"{int(figure.value)}"
    if figure.unit == "jobs/s":
        return f"{figure.value:,.0f}"
    if figure.unit == "ratio":
        return f"{figure.value:.3f}"
    return f"{figure.value:.2f}"


def table(figures: Sequence[Figure]) -> str:
    rows = [(f"{f.section}.{f.name}", format_value(f), f.unit) for f in figures]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in
              enumerate(("benchmark", "value", "unit"))]
    lines = [f"{'benchmark':<{widths[0]}}  {'value':>{widths[1]}}  unit"]
    lines += [f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit}" for name, value, unit in rows]
    return "\n".join(lines)


def document(figures: Sequence[Figure], config: BenchConfig) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for f in figures:
        results.setdefault(f.section, {})[f.name] = {"value": f.value, "unit": f.unit}
    return {
        "config": attrs.asdict(config),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "results": results,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark a local tcpsched cluster.")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs for throughput (20000)")
    p.add_argument("--latency-samples", type=int, default=500, metavar="N",
                   help="sequential round trips for latency (500)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--slots", type=int, default=4, help="slots per worker (4)")
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
    if args.jobs < 1 or args.latency_samples < 1 or args.workers < 1 or args.slots < 1:
        p.error("--jobs, --latency-samples, --workers and --slots must be at least 1")
    return args


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_cluster(config: BenchConfig, names: Sequence[str]) -> list[Figure]:
    """Start a cluster for `config`, run the benchmarks `names` on it, stop it."""
    import uvloop

    with tempfile.TemporaryDirectory(prefix="tcpsched-bench-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            token = secrets.token_hex(16).encode() if config.token else None
            address = start_cluster(group, config, token)
            _log(f"cluster: 1 coordinator at {address} (fsync {config.fsync or 'default'}, "
                 f"token {'on' if token else 'off'}), {config.workers} workers x "
                 f"{config.slots} slots, isolation {config.isolation}")
            figures = uvloop.run(run_benchmarks(address, config, names, token))
        except Exception:
            _log(group.logs())
            raise
        finally:
            group.stop_all()
    return [attrs.evolve(f, section=f"{f.section}.{config.isolation}") for f in figures]


def isolation_ratio(figures: Sequence[Figure]) -> list[Figure]:
    """Process mode's end-to-end throughput over thread mode's, when both ran."""
    rates = {f.section: f.value for f in figures if f.name == "end_to_end"}
    process, thread = rates.get("throughput.process"), rates.get("throughput.thread")
    if process is None or thread is None:
        return []
    return [Figure("isolation", "process_vs_thread", process / thread, "ratio")]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(BENCHMARKS)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so the finally below stops the cluster
    figures: list[Figure] = []
    configs = []
    for isolation in args.isolation or ["process", "thread"]:
        config = BenchConfig(jobs=args.jobs, latency_samples=args.latency_samples,
                             workers=args.workers, slots=args.slots, policy=args.policy,
                             fsync=args.fsync, token=args.token, isolation=isolation)
        configs.append(config)
        try:
            figures.extend(run_cluster(config, names))
        except KeyboardInterrupt:
            _log("interrupted: stopping the cluster")
            return 130
    figures.extend(isolation_ratio(figures))
    if args.json:
        doc = document(figures, configs[0])
        doc["config"]["isolation"] = [c.isolation for c in configs]
        print(json.dumps(doc, indent=2))
    else:
        print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
