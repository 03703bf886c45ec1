"""Failover time: from kill -9 of a worker to its job running on another worker.

Starts a coordinator and two workers on loopback (default heartbeats: 0.5 s interval, 2.0 s
timeout), then, for each trial: submit a long shell job, wait until it runs, kill -9 the worker
holding it, and poll the job (every 10 ms) until it runs elsewhere as attempt 2. The killed
worker is restarted under its name before the next trial. Prints a table (or `--json`).

    .venv/bin/python scripts/bench_failover.py [--trials 10] [--heartbeat-interval 0.5]
        [--heartbeat-timeout 2.0] [--json]

A shell job outlives a kill -9 of its worker (it runs in its own session), so each job writes
its pid to a file and the script kills exactly those processes after each trial.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcpsched.client import SyncClient
from tcpsched.testing.processes import (
    ProcessGroup,
    kill_job_processes,
    wait_for_workers,
    wait_until,
)

POLL_S = 0.01
WAIT_S = 60.0


def trial(group: ProcessGroup, client: SyncClient, address: str, workers: dict[str, Any],
          pid_file: Path) -> dict[str, Any]:
    job = client.submit_shell(f"echo $$ >> {pid_file}; exec sleep 120")
    record = wait_until(lambda: (r := client.status(job))["state"] == "running" and r, WAIT_S,
                        interval=POLL_S, what="the job to run")
    holder = record["worker"]
    killed_at = time.monotonic()
    workers[holder].signal(signal.SIGKILL)
    dead_at = None
    while True:
        now = time.monotonic()
        if now - killed_at > WAIT_S:
            raise TimeoutError(f"job {job} did not run elsewhere within {WAIT_S}s")
        if dead_at is None and any(w["name"] == holder and w["state"] == "dead"
                                   for w in client.workers()):
            dead_at = now
        record = client.status(job)
        if record["state"] == "running" and record["worker"] != holder:
            running_at = time.monotonic()
            break
        time.sleep(POLL_S)
    workers[holder].wait(WAIT_S)
    client.cancel(job)
    kill_job_processes(pid_file)
    workers[holder] = group.worker(address, holder, slots=1)
    wait_for_workers(client, sorted(workers), timeout=WAIT_S)
    return {
        "job": job, "killed": holder, "ran_on": record["worker"],
        "attempts": record["attempts"],
        "declared_dead_s": round((dead_at or running_at) - killed_at, 4),
        "running_elsewhere_s": round(running_at - killed_at, 4),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument("--heartbeat-timeout", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tcpsched-failover-"))
    pid_file = workdir / "job-pids"
    group = ProcessGroup(workdir / "run")
    client: SyncClient | None = None
    results = []
    try:
        _, address = group.coordinator(extra=[
            "--heartbeat-interval", str(args.heartbeat_interval),
            "--heartbeat-timeout", str(args.heartbeat_timeout), "--log-level", "warning",
        ])  # fmt: skip
        workers = {name: group.worker(address, name, slots=1) for name in ("w1", "w2")}
        client = SyncClient(address, connect_timeout=WAIT_S)
        wait_until(client.leader, WAIT_S, what="the coordinator")
        wait_for_workers(client, sorted(workers), timeout=WAIT_S)
        for i in range(args.trials):
            results.append(trial(group, client, address, workers, pid_file))
            if not args.json:
                r = results[-1]
                print(f"trial {i + 1:2d}: killed {r['killed']}, dead after "
                      f"{r['declared_dead_s']:.3f}s, running on {r['ran_on']} after "
                      f"{r['running_elsewhere_s']:.3f}s", file=sys.stderr)
    finally:
        if client is not None:
            client.close()
        group.stop_all()
        kill_job_processes(pid_file)
    times = [r["running_elsewhere_s"] for r in results]
    summary = {
        "heartbeat_interval_s": args.heartbeat_interval,
        "heartbeat_timeout_s": args.heartbeat_timeout,
        "trials": len(results),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "median_declared_dead_s": round(statistics.median(r["declared_dead_s"] for r in results),
                                        3),
        "results": results,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"{'metric':<46} {'value':>10}")
        print(f"{'heartbeat interval / timeout':<46} "
              f"{args.heartbeat_interval:>4g}s/{args.heartbeat_timeout:g}s")
        print(f"{'trials':<46} {len(results):>10}")
        print(f"{'kill -9 -> declared dead, median':<46} "
              f"{summary['median_declared_dead_s']:>9.3f}s")
        print(f"{'kill -9 -> job running elsewhere, median':<46} {summary['median_s']:>9.3f}s")
        print(f"{'kill -9 -> job running elsewhere, min / max':<46} "
              f"{summary['min_s']:.3f}s/{summary['max_s']:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
