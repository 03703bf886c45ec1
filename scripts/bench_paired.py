"""The `paired` section of `scripts/bench.py`: process over thread isolation, measured side by
side on one coordinator, so that both modes see the same load.

Why paired: on a shared 2-core machine the load of other processes moves a round trip by
milliseconds from one run to the next, far more than isolation costs, so two clusters measured
one after the other (`--only latency --isolation process`, then `--isolation thread`) compare
the load of two moments, not the two modes. Here one coordinator has `--workers` workers of
each mode (`--slots` each), tagged `process` and `thread`, and jobs go to one mode or the other
by tag:

  latency     `--latency-samples` pairs of sequential round trips, one in each mode, the order
              swapped every pair: p50 of each mode and the median of the pairs' differences.
  throughput  `--jobs` no-op jobs per mode via `map` + `gather`, in three batches per mode,
              alternating: the median jobs/s of each and their ratio; and CPU µs per job of
              each mode's worker processes and their call processes (every thread's run time
              from /proc/PID/task/TID/schedstat, exact where clock-tick counts are not).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from bench_sections import (
    NOOP_FUNCTION,
    BenchConfig,
    Figure,
    _client,
    _log,
    cluster_args,
    percentile,
)

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until

MODES = ("process", "thread")
BATCHES = 3  # throughput batches per mode, alternating


def start(group: ProcessGroup, config: BenchConfig, token: bytes | None) -> tuple[str, int]:
    """One coordinator and `config.workers` workers of each mode, tagged with their mode."""
    extra, common = cluster_args(group, config, token)
    proc, address = group.coordinator(extra=extra)
    names = []
    for mode in MODES:
        for i in range(config.workers):
            name = f"{mode}{i + 1}"
            names.append(name)
            group.worker(address, name, slots=config.slots,
                         extra=[*common, "--isolation", mode, "--tags", mode])
    with SyncClient(address, connect_timeout=30.0, token=token) as client:
        wait_until(client.leader, 30.0, what="a leader")
        wait_for_workers(client, names, timeout=60.0)
    return address, proc.pid


def run_time_s(pid: int) -> float:
    """CPU seconds of every thread of `pid` (schedstat's run time, in nanoseconds)."""
    total = 0
    with os.scandir(f"/proc/{pid}/task") as tasks:
        for task in tasks:
            total += int(Path(task.path, "schedstat").read_text().split()[0])
    return total / 1e9


def _children(pids: set[int]) -> set[int]:
    """The processes whose parent is one of `pids` (the workers' call processes)."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) in pids:
                found.add(int(entry.name))
    return found


def _mode_cpu_s(group: ProcessGroup, mode: str) -> float:
    workers = {p.pid for p in group.procs if p.name.startswith(mode) and p.alive()}
    total = 0.0
    for pid in workers | _children(workers):
        try:
            total += run_time_s(pid)
        except (OSError, ValueError):  # it ended meanwhile
            continue
    return total


def paired(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
           token: bytes | None) -> list[Figure]:
    n, per_batch = config.latency_samples, max(1, config.jobs // BATCHES)
    _log(f"paired: {n} round trips and {BATCHES} x {per_batch} jobs per mode, alternating ...")
    with _client(address, token) as client:
        def one(mode: str, i: int) -> float:
            start = time.perf_counter()
            record = client.wait(client.submit_call(NOOP_FUNCTION, i, tags=[mode]), timeout=60)
            if record["state"] != "succeeded":
                raise RuntimeError(f"paired {mode} job failed: {record}")
            return (time.perf_counter() - start) * 1000.0

        def batch(mode: str, count: int) -> float:
            start = time.perf_counter()
            records = client.gather(client.map(NOOP_FUNCTION, range(count), tags=[mode]),
                                    timeout=900.0)
            if any(r["state"] != "succeeded" for r in records):
                raise RuntimeError(f"paired {mode} map: a job did not succeed")
            return count / (time.perf_counter() - start)

        for mode in MODES:  # warm: call processes started, imports done
            batch(mode, min(200, per_batch))
            for i in range(min(20, n)):
                one(mode, i)
        trips: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i in range(n):
            for mode in MODES if i % 2 else reversed(MODES):
                trips[mode].append(one(mode, i))
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu = dict.fromkeys(MODES, 0.0)
        for b in range(BATCHES):
            for mode in MODES if b % 2 == 0 else reversed(MODES):
                before = _mode_cpu_s(group, mode)
                rates[mode].append(batch(mode, per_batch))
                cpu[mode] += _mode_cpu_s(group, mode) - before
    diffs = sorted(p - t for p, t in zip(trips["process"], trips["thread"], strict=True))
    figures = [Figure("paired", f"latency_p50_{mode}", percentile(sorted(trips[mode]), 0.5), "ms")
               for mode in MODES]
    figures.append(Figure("paired", "latency_p50_diff", percentile(diffs, 0.5), "ms"))
    medians = {mode: statistics.median(rates[mode]) for mode in MODES}
    figures += [Figure("paired", f"throughput_{mode}", medians[mode], "jobs/s") for mode in MODES]
    figures.append(Figure("paired", "process_vs_thread",
                          medians["process"] / medians["thread"], "ratio"))
    figures += [Figure("paired", f"worker_cpu_{mode}", cpu[mode] / (BATCHES * per_batch) * 1e6,
                       "µs/job") for mode in MODES]
    return figures
