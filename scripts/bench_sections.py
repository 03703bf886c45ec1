"""The sections of `scripts/bench.py`: each measures one thing on a running cluster.

A section is `fn(group, address, leader_pid, config, token) -> [Figure]` in `SECTIONS`;
bench.py starts the cluster (`start_cluster`), calls it, and stops the cluster after. Figures
are named `section.name` with a unit; bench.py takes medians over repeats and sets
`coordinators` and `system` (ours or Dask's).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import bench_dask

from tcpsched.client_sync import SyncClient
from tcpsched.core.backpressure import MAX_PENDING_DEFAULT
from tcpsched.core.jobs import JobSpec
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until

NOOP_FUNCTION = "builtins:abs"  # abs(i) == i for the items sent: the cheapest proof it ran
GATHER_TIMEOUT_S = 900.0
LOADGEN_READY_S = 300.0
FILL_BATCH = 5_000
RESTART_SCRIPT = Path(__file__).resolve().with_name("bench_restart.py")


@attrs.frozen
class Figure:
    """One measured number, named `section.name`, with its unit."""

    section: str
    name: str
    value: float
    unit: str
    coordinators: int = 1  # 0: not a tcpsched cluster (Dask, restart)
    system: str = "tcpsched"  # or "dask"
    samples: tuple[float, ...] = ()  # the values the median was taken of

    def label(self) -> str:
        where = f" ({self.coordinators} coordinators)" if self.coordinators == 3 else ""
        return f"{self.section}.{self.name}{where}"


@attrs.frozen
class BenchConfig:
    jobs: int = 20_000
    submits: int = 1_000
    latency_samples: int = 1_000
    shell_jobs: int = 2_000
    calls: int = 20_000
    queued: tuple[int, ...] = (10_000, 1_000_000)
    queued_batch: int = 5_000
    worker_counts: tuple[int, ...] = (10, 100, 1_000)
    idle_s: float = 5.0
    scale_jobs: int = 5_000
    workers: int = 2
    slots: int = 1
    policy: str = "round-robin"
    fsync: str | None = None  # None: the coordinator's default
    token: bool = False  # a shared token: authenticated handshakes and MAC'd frames
    isolation: str = "process"  # the workers' --isolation
    prefetch: int | None = None  # the workers' --prefetch (None: their default)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (fraction in [0, 1])."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_args(group: ProcessGroup, config: BenchConfig, token: bytes | None
                 ) -> tuple[list[str], list[str]]:
    """The flags every benchmark cluster's coordinators and workers get from `config` (the
    token, if any, written to a file in the group's directory)."""
    extra = ["--policy", config.policy, "--log-level", "warning"]
    # The queued section keeps up to max(--queued) jobs pending and submits its batch on top:
    # the coordinator's backpressure (--max-pending, default 1,000,000) must not refuse it.
    most_pending = max(config.queued, default=0) + config.queued_batch + 200
    if most_pending > MAX_PENDING_DEFAULT:
        extra += ["--max-pending", str(most_pending)]
    worker_extra = ["--log-level", "warning"]
    if config.prefetch is not None:
        worker_extra += ["--prefetch", str(config.prefetch)]
    if config.fsync is not None:
        extra += ["--fsync", config.fsync]
    if token is not None:
        token_file = group.workdir / "token"
        token_file.write_bytes(token)
        extra += ["--token-file", str(token_file)]
        worker_extra += ["--token-file", str(token_file)]
    return extra, worker_extra


def start_cluster(group: ProcessGroup, config: BenchConfig, token: bytes | None,
                  coordinators: int = 1, *, workers: int | None = None,
                  no_shell: bool = False) -> tuple[str, int]:
    """One coordinator or a peer group, and `workers` (default `config.workers`) workers given
    every address (`--no-shell` with `no_shell`); the addresses, comma-separated, and
    coordinator 1's pid."""
    extra, worker_extra = cluster_args(group, config, token)
    worker_extra += ["--isolation", config.isolation]
    if no_shell:
        worker_extra.append("--no-shell")
    if coordinators == 1:
        proc, address = group.coordinator(extra=extra)
    else:
        members = group.group(coordinators, extra=extra)
        proc, address = members[1][0], ",".join(a for _, a in members.values())
    names = [f"w{i + 1}" for i in range(config.workers if workers is None else workers)]
    for name in names:
        group.worker(address, name, slots=config.slots, extra=worker_extra)
    with SyncClient(address, connect_timeout=30.0, token=token) as client:
        wait_until(client.leader, 30.0, what="a leader")
        if names:
            wait_for_workers(client, names, timeout=60.0)
    return address, proc.pid


def _client(address: str, token: bytes | None) -> SyncClient:
    return SyncClient(address, connect_timeout=30.0, token=token)


def _run_map(client: SyncClient, n: int) -> tuple[float, float]:
    """Seconds to submit and to finish `n` no-op jobs via map + gather (results checked)."""
    start = time.perf_counter()
    ids = client.map(NOOP_FUNCTION, range(n))
    submitted = time.perf_counter()
    records = client.gather(ids, timeout=GATHER_TIMEOUT_S)
    finished = time.perf_counter()
    failed = [r for r in records if r["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} jobs did not succeed, e.g. {failed[0]}")
    if [r["result"] for r in records] != list(range(n)):
        raise RuntimeError("results do not match the submitted arguments")
    return submitted - start, finished - start


def throughput(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
               token: bytes | None) -> list[Figure]:
    """`config.jobs` no-op jobs through `SyncClient.map` (batched submits), then `gather`."""
    n = config.jobs
    _log(f"throughput: {n} jobs with SyncClient.map + gather ...")
    with _client(address, token) as client:
        _run_map(client, min(200, n))  # warm: imports in the call processes, buffers
        submit_s, total_s = _run_map(client, n)
    return [Figure("throughput", "end_to_end", n / total_s, "jobs/s"),
            Figure("throughput", "submit_only", n / submit_s, "jobs/s")]


def _round_trips(one: Callable[[int], None], n: int) -> list[float]:
    for i in range(min(20, n)):  # warm up: imports on the workers, connection buffers
        one(i)
    samples = []
    for i in range(n):
        start = time.perf_counter()
        one(i)
        samples.append((time.perf_counter() - start) * 1000.0)
    return sorted(samples)


def latency(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
            token: bytes | None) -> list[Figure]:
    """Sequential submit -> wait for the record, one job at a time."""
    _log(f"latency: {config.latency_samples} sequential submit -> result round trips ...")
    with _client(address, token) as client:
        def one(i: int) -> None:
            record = client.wait(client.submit_call(NOOP_FUNCTION, i), timeout=60)
            if record["state"] != "succeeded":
                raise RuntimeError(f"latency job failed: {record}")

        samples = _round_trips(one, config.latency_samples)
    return [Figure("latency", "p50", percentile(samples, 0.50), "ms"),
            Figure("latency", "p99", percentile(samples, 0.99), "ms")]


def submits(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
            token: bytes | None) -> list[Figure]:
    """Sequential single submits: each is acknowledged (committed) before the next is sent."""
    _log(f"submits: {config.submits} sequential acknowledged submits ...")
    with _client(address, token) as client:
        samples = _round_trips(lambda i: client.submit_call(NOOP_FUNCTION, i), config.submits)
    return [Figure("submits", "rate", 1000.0 * len(samples) / sum(samples), "jobs/s"),
            Figure("submits", "p50", percentile(samples, 0.50), "ms")]


def shell(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
          token: bytes | None) -> list[Figure]:
    """`config.shell_jobs` shell jobs running `true`: how fast workers spawn processes."""
    n = config.shell_jobs
    _log(f"shell: {n} `true` shell jobs ...")
    with _client(address, token) as client:
        start = time.perf_counter()
        ids = client.submit_many(JobSpec(kind="shell", command="true") for _ in range(n))
        records = client.gather(ids, timeout=GATHER_TIMEOUT_S)
        elapsed = time.perf_counter() - start
    failed = sum(1 for r in records if r["state"] != "succeeded")
    if failed:
        raise RuntimeError(f"{failed} of {n} shell jobs did not succeed")
    return [Figure("shell", "jobs_per_s", n / elapsed, "jobs/s")]


def queued(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
           token: bytes | None) -> list[Figure]:
    """Coordinator CPU per job run while N others stay queued: shell jobs, and the workers
    run no shell (`--no-shell`), so they are pending, unplaceable, for the whole batch."""
    figures = []
    with _client(address, token) as client:
        _run_map(client, min(200, config.queued_batch))  # warm
        have = 0
        for target in sorted(config.queued):
            _log(f"queued: filling the queue to {target} unplaceable jobs ...")
            client.submit_many((JobSpec(kind="shell", command="true")
                                for _ in range(target - have)), FILL_BATCH)
            have = max(have, target)
            _log(f"queued: {config.queued_batch} jobs with {target} queued ...")
            before = cpu_seconds(leader_pid)
            _run_map(client, config.queued_batch)
            used = cpu_seconds(leader_pid) - before
            figures.append(Figure("queued", f"cpu_us_per_job_{target}_queued",
                                  1e6 * used / config.queued_batch, "µs"))
        # The longest full collection of the leader's heap while the queue filled: it stops
        # the loop (heartbeats and replication included), so it must not grow with the queue.
        pause = client.stats().get("gc_full_pause_max_s", 0.0)
    if len(figures) > 1 and figures[0].value > 0:
        figures.append(Figure("queued", "cpu_largest_vs_smallest",
                              figures[-1].value / figures[0].value, "ratio"))
    figures.append(Figure("queued", "gc_full_pause_max_s", pause, "s"))
    return figures


def workers(group: ProcessGroup, address: str, leader_pid: int, config: BenchConfig,
            token: bytes | None) -> list[Figure]:
    """The leader's CPU share with N heartbeating workers, and dispatch throughput at each N."""
    figures = []
    token_args = [] if token is None else ["--token-file", str(group.workdir / "token")]
    with _client(address, token) as client:
        for count in config.worker_counts:
            _log(f"workers: {count} load-generator workers connecting ...")
            gen = group.start(f"loadgen-{count}", "tcpsched.testing.loadgen",
                              [address, "--workers", str(count), "--slots", "1",
                               "--name-prefix", f"lg{count}-", *token_args])
            try:
                wait_until(lambda g=gen: "ready" in g.log() or not g.alive(), LOADGEN_READY_S,
                           interval=0.2, what=f"{count} load-generator workers")
                if not gen.alive():
                    raise RuntimeError(f"the load generator exited:\n{gen.log()[-2000:]}")
                beats_before = _heartbeats_sent(gen)
                before, start = cpu_seconds(leader_pid), time.perf_counter()
                time.sleep(config.idle_s)  # the figure: CPU over a fixed idle window
                cpu_s = cpu_seconds(leader_pid) - before
                share = cpu_s / (time.perf_counter() - start)
                beats = _heartbeats_sent(gen) - beats_before
                _log(f"workers: {config.scale_jobs} jobs over {count} workers ...")
                _, total_s = _run_map(client, config.scale_jobs)
            finally:
                group.stop(gen)
            # Per heartbeat too: a loaded machine's load generator sends fewer than N / interval.
            figures += [Figure("workers", f"leader_cpu_{count}_idle", 100.0 * share, "%"),
                        Figure("workers", f"leader_us_per_heartbeat_{count}",
                               1e6 * cpu_s / max(beats, 1), "us"),
                        Figure("workers", f"dispatch_{count}", config.scale_jobs / total_s,
                               "jobs/s")]
    return figures


def _heartbeats_sent(gen: Any) -> int:
    """How many heartbeats the load generator's workers have sent so far (it prints the count
    on SIGUSR1, tcpsched/testing/loadgen.py)."""
    seen = gen.log().count("heartbeats_sent ")
    gen.signal(signal.SIGUSR1)
    wait_until(lambda: gen.log().count("heartbeats_sent ") > seen or not gen.alive(), 10.0,
               interval=0.01, what="the load generator's heartbeat count")
    return int(gen.log().rsplit("heartbeats_sent ", 1)[1].split()[0])


def calls(group: ProcessGroup | None, address: str, leader_pid: int, config: BenchConfig,
          token: bytes | None) -> list[Figure]:
    """No-op calls/s through the worker's executor alone (no coordinator), in thread and in
    process isolation, `config.slots` at a time: what isolation costs, without the noise of
    the rest of the path; `process_vs_thread` is their ratio."""
    import uvloop

    from tcpsched.runtime.executor import Executor
    from tcpsched.runtime.outcome import KillSwitch

    async def rate(isolation: str) -> float:
        executor = Executor(config.slots, 1 << 20, 2.0, isolation=isolation)

        async def lane(count: int) -> None:
            for i in range(count):
                outcome = await executor.run_call(NOOP_FUNCTION, (i,), {}, None, KillSwitch())
                if outcome.state != "succeeded" or outcome.result != i:
                    raise RuntimeError(f"a no-op call failed: {outcome}")

        try:
            await asyncio.gather(*(lane(20) for _ in range(config.slots)))  # warm
            per_lane = max(1, config.calls // config.slots)
            start = time.perf_counter()
            await asyncio.gather(*(lane(per_lane) for _ in range(config.slots)))
            return per_lane * config.slots / (time.perf_counter() - start)
        finally:
            executor.shutdown()

    _log(f"calls: {config.calls} no-op calls through the executor, thread then process ...")
    thread, process = uvloop.run(rate("thread")), uvloop.run(rate("process"))
    return [Figure("calls", "thread", thread, "calls/s"),
            Figure("calls", "process", process, "calls/s"),
            Figure("calls", "process_vs_thread", process / thread, "ratio")]


SECTIONS: dict[str, Callable[..., list[Figure]]] = {
    "throughput": throughput, "latency": latency, "submits": submits, "shell": shell,
    "queued": queued, "workers": workers, "calls": calls,
}


def dask_figures(config: BenchConfig, names: Sequence[str]) -> list[Figure]:
    """The same throughput and latency work on Dask's LocalCluster."""
    figures = []
    with bench_dask.dask_client() as client:
        if "throughput" in names:
            _log(f"dask: throughput, {config.jobs} jobs ...")
            figures.append(Figure("throughput", "end_to_end",
                                  bench_dask.throughput(client, config.jobs), "jobs/s"))
        if "latency" in names:
            _log(f"dask: latency, {config.latency_samples} round trips ...")
            samples = bench_dask.latency_ms(client, config.latency_samples)
            figures += [Figure("latency", "p50", percentile(samples, 0.50), "ms"),
                        Figure("latency", "p99", percentile(samples, 0.99), "ms")]
    return figures


def _numbers(prefix: str, value: Any) -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(prefix, float(value))]
    if isinstance(value, dict):
        return [pair for key, item in value.items()
                for pair in _numbers(f"{prefix}.{key}" if prefix else str(key), item)]
    return []


def _unit(name: str) -> str:
    for suffix, unit in (("_s", "s"), ("_ms", "ms"), ("_bytes", "bytes"), ("_mib", "MiB")):
        if name.endswith(suffix):
            return unit
    return ""


def restart_figures(restart_args: str, skipped: dict[str, str],
                    script: Path = RESTART_SCRIPT) -> list[Figure]:
    """scripts/bench_restart.py's numbers (`main(argv)` printing JSON with `--json`): every
    number in its document, named by its path of keys."""
    if not script.exists():
        skipped["restart"] = f"{script.name} is not in scripts/ (not on this branch)"
        return []
    spec = importlib.util.spec_from_file_location("bench_restart", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    _log("restart: scripts/bench_restart.py ...")
    with contextlib.redirect_stdout(out):
        code = module.main([*shlex.split(restart_args), "--json"])
    if code not in (0, None):
        raise RuntimeError(f"bench_restart.py exited {code}")
    doc = json.loads(out.getvalue())
    return [Figure("restart", name, value, _unit(name), 0) for name, value in _numbers("", doc)]


def document(figures: Sequence[Figure]) -> dict[str, dict[str, Any]]:
    """results[section][name] = {value, unit, samples}; a peer group's sections are
    "name@3", Dask's "name@dask"."""
    results: dict[str, dict[str, Any]] = {}
    for f in figures:
        section = (f"{f.section}@dask" if f.system == "dask"
                   else f"{f.section}@{f.coordinators}" if f.coordinators == 3 else f.section)
        results.setdefault(section, {})[f.name] = {"value": f.value, "unit": f.unit,
                                                   "samples": list(f.samples)}
    return results
