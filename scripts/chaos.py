"""`make chaos`: a bounded chaos run against a local cluster, then a check that no job was lost.

Starts one coordinator and a few workers on loopback (in a fresh temporary directory), submits
a steady load of jobs (short Python calls, shell commands, some failing with retries), and for
`--duration` seconds does random harm to the workers: kill -9, SIGSTOP for up to a few heartbeat
timeouts then SIGCONT, SIGTERM (drain) followed by a restart, and restarts of the dead. Then the
harm stops, every worker comes back, and every job the coordinator acknowledged must reach a
terminal state within `--settle` seconds. Prints a summary; exits 1 on any violation (a job
missing, or not terminal), 0 otherwise. Everything it started is stopped on the way out.

    .venv/bin/python scripts/chaos.py [--duration 30] [--workers 4] [--seed N] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcpsched.client import SyncClient
from tcpsched.errors import JobNotFound, TcpschedError
from tcpsched.testing.processes import (
    Proc,
    ProcessGroup,
    kill_job_processes,
    wait_for_workers,
    wait_until,
)

WAIT_S = 60.0


class Chaos:
    def __init__(self, args: argparse.Namespace, group: ProcessGroup, address: str, *,
                 client: SyncClient, rng: random.Random, pid_file: Path) -> None:
        self.args = args
        self.group = group
        self.address = address
        self.client = client
        self.rng = rng
        self.pid_file = pid_file
        self.workers: dict[str, Proc] = {}
        self.stopped_until: dict[str, float] = {}  # SIGSTOPped worker -> when to SIGCONT it
        self.actions: collections.Counter[str] = collections.Counter()
        self.submitted: list[str] = []
        self.terminated: set[str] = set()  # sent SIGTERM, draining until it exits

    def start_worker(self, name: str) -> None:
        self.terminated.discard(name)
        self.workers[name] = self.group.worker(
            self.address, name, slots=self.args.slots, extra=["--drain-timeout", "1"])

    def submit_some(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.6:
                job = self.client.submit_call("time:sleep", round(rng.uniform(0.05, 1.5), 3),
                                              retries=rng.randint(0, 2))
            elif kind < 0.85:
                # A shell job outlives kill -9 of its worker: record its pid to clean up.
                job = self.client.submit_shell(
                    f"echo $$ >> {self.pid_file}; sleep {rng.uniform(0.05, 1.0):.2f}",
                    retries=1)
            else:
                job = self.client.submit_shell("exit 1", retries=rng.randint(0, 2))
            self.submitted.append(job)

    def harm(self) -> None:
        rng = self.rng
        now = time.monotonic()
        live = [n for n, p in self.workers.items()
                if p.alive() and n not in self.stopped_until and n not in self.terminated]
        dead = [n for n, p in self.workers.items() if not p.alive()]
        action = rng.choice(("kill9", "kill9", "sigstop", "sigterm", "restart"))
        if action == "restart" or (not live and dead):
            if dead:
                name = rng.choice(dead)
                self.start_worker(name)
                self.actions["restart"] += 1
            return
        if len(live) <= 1:
            return  # keep one capable worker alive: the promise is conditional on it
        name = rng.choice(live)
        proc = self.workers[name]
        if action == "kill9":
            proc.signal(signal.SIGKILL)
        elif action == "sigstop":
            proc.signal(signal.SIGSTOP)
            self.stopped_until[name] = now + rng.uniform(0.2, 3.0 * self.args.heartbeat_timeout)
        elif action == "sigterm":
            proc.signal(signal.SIGTERM)
            self.terminated.add(name)
        self.actions[action] += 1

    def resume_due(self, everyone: bool = False) -> None:
        now = time.monotonic()
        for name, until in list(self.stopped_until.items()):
            if everyone or now >= until:
                self.workers[name].signal(signal.SIGCONT)
                del self.stopped_until[name]

    def run(self) -> None:
        args = self.args
        end = time.monotonic() + args.duration
        next_harm = time.monotonic() + self.rng.uniform(0.3, 1.5)
        while time.monotonic() < end:
            self.submit_some()
            if time.monotonic() >= next_harm:
                self.harm()
                next_harm = time.monotonic() + self.rng.uniform(0.3, 1.5)
            self.resume_due()
            time.sleep(self.rng.uniform(0.05, 0.3))
        # Harm stops: resume the stopped, let the drained exit, restart every dead worker.
        self.resume_due(everyone=True)
        for name in sorted(self.terminated):
            self.workers[name].wait(WAIT_S)
        for name, proc in list(self.workers.items()):
            if not proc.alive():
                self.start_worker(name)
        wait_for_workers(self.client, sorted(self.workers), timeout=WAIT_S)


def check(client: SyncClient, job_ids: list[str], settle_s: float) -> tuple[dict[str, Any],
                                                                               list[str]]:
    """Wait for every job to be terminal; the summary and the list of violations."""
    violations: list[str] = []
    records: list[dict[str, Any]] = []
    try:
        records = client.wait_records(job_ids, timeout=settle_s)
    except JobNotFound as exc:
        violations.append(f"an acknowledged job is lost: {exc}")
    states = collections.Counter(r["state"] for r in records)
    for r in records:
        if r["state"] not in ("succeeded", "failed", "cancelled"):
            violations.append(f"job {r['id']} is still {r['state']} (attempts={r['attempts']}, "
                              f"worker={r['worker']}) after {settle_s:g}s of calm")
    if records and len(records) != len(set(job_ids)):
        violations.append(f"asked for {len(set(job_ids))} jobs, got {len(records)} records")
    attempts = collections.Counter(r["attempts"] for r in records)
    return {"jobs": len(job_ids), "states": dict(states),
            "attempts": {str(k): v for k, v in sorted(attempts.items())}}, violations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds of harm (default 30)")
    p.add_argument("--settle", type=float, default=120.0,
                   help="seconds for every job to finish once harm stops (default 120)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--heartbeat-interval", type=float, default=0.2)
    p.add_argument("--heartbeat-timeout", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed of the harm (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the logs directory")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    workdir = Path(tempfile.mkdtemp(prefix="tcpsched-chaos-"))
    pid_file = workdir / "job-pids"
    group = ProcessGroup(workdir / "run")
    client: SyncClient | None = None
    started = time.monotonic()
    try:
        _, address = group.coordinator(extra=[
            "--heartbeat-interval", str(args.heartbeat_interval),
            "--heartbeat-timeout", str(args.heartbeat_timeout), "--retry-base", "0.2",
            "--retry-cap", "2",
        ])  # fmt: skip
        client = SyncClient(address, connect_timeout=WAIT_S)
        wait_until(client.leader, WAIT_S, what="the coordinator")
        chaos = Chaos(args, group, address, client=client, rng=random.Random(seed),
                      pid_file=pid_file)
        for i in range(1, args.workers + 1):
            chaos.start_worker(f"w{i}")
        wait_for_workers(client, sorted(chaos.workers), timeout=WAIT_S)
        print(f"chaos: seed={seed} {args.workers} workers x {args.slots} slots, "
              f"{args.duration:g}s of harm, logs in {workdir}", file=sys.stderr)
        chaos.run()
        summary, violations = check(client, chaos.submitted, args.settle)
        stats = client.stats()
    except (TcpschedError, TimeoutError) as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        print(group.logs()[-6000:], file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
        group.stop_all()
        kill_job_processes(pid_file)
    summary.update({
        "seed": seed, "seconds": round(time.monotonic() - started, 1),
        "harm": dict(chaos.actions),
        "counters": {k: stats.get(k) for k in ("reassigned", "retried", "poisoned",
                                               "handed_back", "workers_lost")},
        "violations": violations,
    })  # fmt: skip
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"jobs acknowledged   {summary['jobs']}")
        print(f"final states        {summary['states']}")
        print(f"attempts per job    {summary['attempts']}")
        print(f"harm done           {summary['harm']}")
        print(f"coordinator counts  {summary['counters']}")
        print(f"wall time           {summary['seconds']}s  (seed {seed})")
        for v in violations:
            print(f"VIOLATION: {v}")
        print("OK: every acknowledged job reached a terminal state" if not violations
              else f"FAILED: {len(violations)} violation(s); replay the harm with --seed {seed}")
    if not args.keep and not violations:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
