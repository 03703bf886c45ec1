"""The worst loop stall a heartbeating worker sees while clients read a large job table.

Starts a coordinator (default heartbeats: 0.5 s interval, 2 s timeout) and one worker in a
temporary directory, queues `--jobs` delayed jobs (they stay pending), starts a probe worker
(`tcpsched.testing.probe`: it heartbeats and times the leader's answers) and one real job of
`--job-s` seconds on the worker, then reads: `wait` with `--prefixes` id prefixes and
`--lists` concurrent `list --limit 100000`. Prints the probe's worst stall in ms, the workers
lost and the real job's attempts (1 unless a stall killed its worker). Always stops every
process it started.

    python scripts/loop_stall.py [--jobs 50000] [--prefixes 2000] [--lists 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcpsched import Client
from tcpsched.client_sync import SyncClient
from tcpsched.core.jobs import JobSpec
from tcpsched.testing.processes import ProcessGroup, wait_until

PREFIX_CHARS = 8
READ_TIMEOUT_S = 120.0  # the original code takes seconds per reply


async def read_load(address: str, ids: list[str], prefixes: int, lists: int) -> None:
    """One `wait` naming `prefixes` jobs by id prefix, and `lists` concurrent big lists."""
    async def one_list() -> int:
        async with Client(address, connect_timeout=READ_TIMEOUT_S) as client:
            return len(await client.list(limit=100_000))

    async with Client(address, connect_timeout=READ_TIMEOUT_S) as client:
        step = max(1, len(ids) // prefixes)
        refs = [job_id[:PREFIX_CHARS] for job_id in ids[::step][:prefixes]]
        waited, *listed = await asyncio.gather(client.wait_records(refs, timeout=0),
                                               *(one_list() for _ in range(lists)))
    if len(waited) != len(refs) or any(n != len(ids) + 1 for n in listed):
        raise RuntimeError(f"unexpected replies: wait {len(waited)}, lists {listed}")


async def fill(address: str, jobs: int) -> list[str]:
    async with Client(address) as client:
        specs = (JobSpec(kind="shell", command=f"echo {i}", delay=3600.0) for i in range(jobs))
        return await client.submit_many(specs, batch_size=5000)


def run(jobs: int, prefixes: int, lists: int, job_s: float, workdir: Path) -> dict[str, Any]:
    procs = ProcessGroup(workdir)
    try:
        _, address = procs.coordinator(extra=["--fsync", "never", "--seed", "1"])
        procs.worker(address, "w1", slots=1)
        sync = SyncClient(address, connect_timeout=15.0)
        try:
            wait_until(sync.leader, 15.0, what="coordinator")
            wait_until(lambda: any(w["name"] == "w1" and w["state"] == "alive"
                                   for w in sync.workers()), 15.0, what="worker w1")
            t0 = time.monotonic()
            ids = asyncio.run(fill(address, jobs))
            fill_s = time.monotonic() - t0
            probe = procs.start("probe", "tcpsched.testing.probe", [address])
            wait_until(lambda: "ready" in probe.log(), 15.0, what="probe registered")
            job = sync.submit_call("time:sleep", job_s)
            wait_until(lambda: sync.status(job)["state"] == "running", 15.0, what="job running")
            t0 = time.monotonic()
            asyncio.run(read_load(address, ids, prefixes, lists))
            read_s = time.monotonic() - t0
            record = sync.wait(job, timeout=60.0 + job_s)
            stats = sync.stats()
            procs.stop(probe)
            lines = [line for line in probe.log().splitlines() if line.startswith("{")]
            if not lines:
                raise RuntimeError(f"the probe printed no figures:\n{probe.log()[-2000:]}")
            measured = json.loads(lines[-1])
        finally:
            sync.close()
    finally:
        procs.stop_all()
    return {"jobs": jobs, "prefixes": prefixes, "lists": lists, "fill_s": round(fill_s, 2),
            "read_s": round(read_s, 2), "max_stall_ms": measured["max_rtt_ms"],
            "probe_closed": measured["closed"],
            "leader_stall_max_ms": round(stats.get("loop_stall_max_s", 0.0) * 1000.0, 1),
            "workers_lost": stats["workers_lost"],
            "job_attempts": record["attempts"], "job_state": record["state"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--prefixes", type=int, default=2000)
    parser.add_argument("--lists", type=int, default=8)
    parser.add_argument("--job-s", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tcpsched-stall-") as tmp:
        figures = run(args.jobs, args.prefixes, args.lists, args.job_s, Path(tmp))
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>14}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
