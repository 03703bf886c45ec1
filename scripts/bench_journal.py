"""Durability figures: acknowledged submits per second under each fsync policy, restart time
with a million jobs on disk, and memory per queued job.

    python scripts/bench_journal.py [--seconds 5] [--jobs 1000000] [--clients 4]
                                    [--concurrency 16] [--json] [--skip-restart]
                                    [--skip-submits]

Submits: a real coordinator (--fsync always, batch, never) and CLIENTS client connections in
one asyncio process, each with CONCURRENCY submits in flight; each submit is one job and one
round trip, so the figure is what group commit makes of many small acknowledged writes. A
second row per policy sends `map` batches of 100 jobs per request.

Restart: a data directory with JOBS queued jobs (90% in snapshot.json, 10% as journal records)
is written with the storage code itself (submitting a million jobs over the wire would measure
the network, not recovery); then a coordinator is started on it and timed from spawn until it
answers `stats` with every job pending. Memory: the RSS of that coordinator minus the RSS of
one started on an empty directory, per job; and tracemalloc of the table plus the queue of a
scheduler holding 100,000 submitted jobs, per job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import socket
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcpsched.client import Client  # noqa: E402
from tcpsched.client_sync import SyncClient  # noqa: E402
from tcpsched.core.jobs import JobRecord, JobSpec  # noqa: E402
from tcpsched.core.records import job_to_dict  # noqa: E402
from tcpsched.core.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from tcpsched.core.state import JobTable  # noqa: E402
from tcpsched.runtime.journal_lines import encode_line, segment_name  # noqa: E402
from tcpsched.runtime.snapshot import write_snapshot  # noqa: E402
from tcpsched.testing.processes import ProcessGroup, free_port, wait_until  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# -- submits per second -------------------------------------------------------------------------


async def _load(address: str, seconds: float, clients: int, concurrency: int,
                batch: int) -> int:
    done = 0
    stop_at = time.monotonic() + seconds

    async def one(client: Client) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            if batch == 1:
                await client.submit_call("operator:add", 1, 2)
            else:
                await client.map("operator:add", [(1, 2)] * batch, batch_size=batch)
            done += batch

    opened = [Client(address) for _ in range(clients)]
    try:
        for client in opened:
            await client.connect()
        async with asyncio.TaskGroup() as tasks:
            for client in opened:
                for _ in range(concurrency):
                    tasks.create_task(one(client))
    finally:
        for client in opened:
            await client.close()
    return done


def bench_submits(workdir: Path, policy: str, *, seconds: float, clients: int,
                  concurrency: int, batch: int) -> dict[str, Any]:
    group = ProcessGroup(workdir / f"{policy}-{batch}")
    try:
        _, address = group.coordinator(port=free_port(), extra=["--fsync", policy,
                                                                "--log-level", "warning"])
        with SyncClient(address, connect_timeout=30) as probe:
            wait_until(probe.leader, 30, what="coordinator")
            before = probe.stats()
        started = time.monotonic()
        done = asyncio.run(_load(address, seconds, clients, concurrency, batch))
        elapsed = time.monotonic() - started
        with SyncClient(address, connect_timeout=30) as probe:
            after = probe.stats()
        writes = after["journal_writes"] - before["journal_writes"]
        fsyncs = after["journal_fsyncs"] - before["journal_fsyncs"]
        return {"fsync": policy, "jobs_per_request": batch, "acked_jobs": done,
                "seconds": round(elapsed, 2), "acked_jobs_per_s": round(done / elapsed),
                "writes": writes, "fsyncs": fsyncs,
                "records_per_write": round((after["journal_seq"] - before["journal_seq"])
                                           / max(writes, 1), 1)}
    finally:
        group.stop_all()


# -- restart time and memory --------------------------------------------------------------------


def build_data_dir(data_dir: Path, jobs: int) -> float:
    """JOBS queued call jobs: 90% in a snapshot, the rest as journal records after it."""
    started = time.perf_counter()
    rng = random.Random(1)
    in_snapshot = jobs - jobs // 10
    table = JobTable()
    now = time.time()

    def submit(i: int) -> dict[str, Any]:
        spec = JobSpec(kind="call", function="operator:add", args=(i, 1),
                       key=f"{rng.getrandbits(128):032x}")
        job = JobRecord(id=f"{rng.getrandbits(48):012x}", seq=i + 1, spec=spec,
                        submitted_at=now + i * 1e-6)
        return {"op": "submit", "job": job_to_dict(job)}

    gc.disable()
    try:
        data_dir.mkdir(parents=True)
        for i in range(in_snapshot):
            table.apply(submit(i))
        write_snapshot(data_dir, in_snapshot, table.image())
        del table
        with open(data_dir / segment_name(in_snapshot + 1), "wb") as f:
            for i in range(in_snapshot, jobs):
                f.write(encode_line(i + 1, submit(i)))
    finally:
        gc.enable()
    return time.perf_counter() - started


def time_start(group: ProcessGroup, name: str, data_dir: Path, jobs: int
               ) -> tuple[float, int, str]:
    port = free_port()
    started = time.monotonic()
    proc = group.start(name, "tcpsched.coordinator",
                       ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)])
    # The coordinator listens only once it has recovered: poll the port itself (a client's
    # reconnect backoff would add up to a second to the figure).
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() - started > 600:
                raise
            time.sleep(0.01)
    with SyncClient(f"127.0.0.1:{port}", connect_timeout=120) as client:
        assert client.stats()["pending"] == jobs
        elapsed = time.monotonic() - started
    rss = rss_bytes(proc.pid)
    recovered = next((line for line in proc.log().splitlines() if " recovered " in line), "")
    group.stop(proc)
    return elapsed, rss, recovered


def bench_restart(workdir: Path, jobs: int) -> dict[str, Any]:
    data_dir = workdir / "restart" / "c1"
    build_s = build_data_dir(data_dir, jobs)
    group = ProcessGroup(workdir / "restart-run")
    try:
        empty_s, empty_rss, _ = time_start(group, "empty", workdir / "restart" / "empty", 0)
        full_s, full_rss, line = time_start(group, "full", data_dir, jobs)
    finally:
        group.stop_all()
    recovery_s = float(line.split(" in ")[1].split("s;")[0]) if " in " in line else None
    disk = sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file())
    return {"jobs": jobs, "build_s": round(build_s, 1), "restart_s": round(full_s, 2),
            "empty_start_s": round(empty_s, 2), "recovery_in_process_s": recovery_s,
            "disk_bytes_per_job": round(disk / jobs), "rss_bytes_per_job":
            round((full_rss - empty_rss) / jobs)}


def bench_wire_memory(workdir: Path, jobs: int = 200_000) -> dict[str, Any]:
    """RSS growth of a coordinator per job queued over the wire with `map` (no worker)."""
    group = ProcessGroup(workdir / "wire-memory")
    try:
        proc, address = group.coordinator(port=free_port(), extra=["--fsync", "never",
                                                                   "--log-level", "warning"])
        with SyncClient(address, connect_timeout=30) as client:
            wait_until(client.leader, 30, what="coordinator")
            client.map("operator:add", [(0, 1)] * 1000, batch_size=1000)  # warm the paths
            before = rss_bytes(proc.pid)
            for start in range(0, jobs, 10_000):
                client.map("operator:add", [(i, 1) for i in range(start, start + 10_000)],
                           batch_size=1000)
            assert client.stats()["pending"] == jobs + 1000
            after = rss_bytes(proc.pid)
        return {"jobs": jobs, "rss_bytes_per_job": round((after - before) / jobs)}
    finally:
        group.stop_all()


def bench_tracemalloc(jobs: int = 100_000) -> dict[str, Any]:
    """Bytes held by the table and queue per queued job, as a client's `map` creates them."""
    now = time.time()
    scheduler = Scheduler(SchedulerConfig(), random.Random(1), now)
    specs = [JobSpec(kind="call", function="operator:add", args=(i, 1),
                     key=f"{random.getrandbits(128):032x}") for i in range(jobs)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for spec in specs:
        scheduler.submit(spec, now)
    scheduler._effects.clear()  # the journal records, which the runtime writes and drops
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"jobs": jobs, "bytes_per_job_table_and_queue": round(held / jobs),
            "note": "spec objects made by the client decoder are counted in RSS, not here"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--skip-submits", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"submits": []}
    with tempfile.TemporaryDirectory(prefix="tcpsched-bench-") as tmp:
        workdir = Path(tmp)
        for batch in () if args.skip_submits else (1, 100):
            for policy in ("always", "batch", "never"):
                row = bench_submits(workdir, policy, seconds=args.seconds, clients=args.clients,
                                    concurrency=args.concurrency, batch=batch)
                results["submits"].append(row)
                if not args.json:
                    print(f"submits  fsync={policy:<6} jobs/request={batch:<3} "
                          f"acked jobs/s={row['acked_jobs_per_s']:>7}  "
                          f"records/write={row['records_per_write']:>6}  "
                          f"fsyncs={row['fsyncs']}", flush=True)
        results["memory_wire"] = bench_wire_memory(workdir)
        if not args.json:
            print(f"memory   coordinator RSS per job queued over the wire (200k jobs): "
                  f"{results['memory_wire']['rss_bytes_per_job']} bytes", flush=True)
        results["memory_tracemalloc"] = bench_tracemalloc()
        if not args.json:
            print(f"memory   table+queue per queued job (tracemalloc, 100k jobs): "
                  f"{results['memory_tracemalloc']['bytes_per_job_table_and_queue']} bytes",
                  flush=True)
        if not args.skip_restart:
            results["restart"] = r = bench_restart(workdir, args.jobs)
            if not args.json:
                print(f"restart  {r['jobs']} jobs (90% snapshot, 10% journal): ready in "
                      f"{r['restart_s']} s (empty directory: {r['empty_start_s']} s; recovery "
                      f"itself {r['recovery_in_process_s']} s); disk {r['disk_bytes_per_job']}"
                      f" bytes/job; RSS {r['rss_bytes_per_job']} bytes/job", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
