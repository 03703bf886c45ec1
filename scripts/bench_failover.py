"""Failover times: of a worker (its job runs elsewhere) or, with `--leader`, of the leader.

Worker mode (the default): starts a coordinator and two workers on loopback (default
heartbeats: 0.5 s interval, 2.0 s timeout), then, for each trial: submit a long shell job, wait
until it runs, kill -9 the worker holding it, and poll the job (every 10 ms) until it runs
elsewhere as attempt 2. The killed worker is restarted under its name before the next trial.

Leader mode (`--leader`): starts coordinators 1-3 as a peer group with default settings (no
tuned timeouts: only ids, addresses and data directories are given), then, for each trial:
wait until 3 leads with both followers joined and a submit is acknowledged, kill -9 the leader,
and submit (`builtins:abs`, a client given all three addresses) until one is acknowledged: the
time from the kill to that acknowledgement is the failover. The new leader's "became leader"
log line splits it into election and the client finding the new leader. The killed coordinator
is restarted; it catches up, holds down and leads again before the next trial.

Prints a table (or `--json`), and each trial on stderr as it ends.

    .venv/bin/python scripts/bench_failover.py [--leader] [--trials 10] [--heartbeat-interval 0.5]
        [--heartbeat-timeout 2.0] [--json]

A shell job outlives a kill -9 of its worker (it runs in its own session), so each job writes
its pid to a file and the script kills exactly those processes after each trial.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcpsched.client_sync import SyncClient
from tcpsched.errors import TcpschedError
from tcpsched.testing.processes import (
    Proc,
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


def became_leader_at(proc: Proc, after_wall_s: float) -> float | None:
    """Unix time of the first "became leader" line in `proc`'s log at or after `after_wall_s`
    (the log's timestamps have millisecond resolution, local time)."""
    for line in proc.log().splitlines():
        if "became leader" not in line:
            continue
        try:
            at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at >= after_wall_s - 0.001:
            return at
    return None


def has_joined(proc: Proc) -> bool:
    log = proc.log()
    return "became follower of" in log or "became leader" in log


def wait_steady(client: SyncClient, coordinators: dict[int, Proc], leader_id: int) -> None:
    """`leader_id` leads, every coordinator has joined, and a submit is acknowledged."""
    wait_until(lambda: all(map(has_joined, coordinators.values())), WAIT_S,
               what="every coordinator to join")
    wait_until(lambda: client.leader()["id"] == leader_id, WAIT_S,
               what=f"coordinator {leader_id} to lead")
    wait_until(lambda: client.submit_call("builtins:abs", -1), WAIT_S, what="a submit")


def leader_trial(group: ProcessGroup, client: SyncClient, members: dict[int, str],
                 coordinators: dict[int, Proc], index: int) -> dict[str, Any]:
    top = max(members)
    wait_steady(client, coordinators, top)
    leader = client.leader()
    killed_at, killed_wall = time.monotonic(), time.time()
    coordinators[top].signal(signal.SIGKILL)
    tries = 0
    while True:
        tries += 1
        try:
            client.submit_call("builtins:abs", -index)
            break
        except TcpschedError:
            if time.monotonic() - killed_at > WAIT_S:
                raise
    acked_at = time.monotonic()
    new_leader = client.leader()
    coordinators[top].wait(WAIT_S)
    elected_wall = became_leader_at(coordinators[int(new_leader["id"])], killed_wall)
    coordinators[top] = group.peer(top, members, (), name=f"c{top}-{index}")[0]
    return {
        "killed": int(leader["id"]), "killed_epoch": int(leader["epoch"]),
        "new_leader": int(new_leader["id"]), "new_epoch": int(new_leader["epoch"]),
        "elected_s": None if elected_wall is None else round(elected_wall - killed_wall, 4),
        "acknowledged_s": round(acked_at - killed_at, 4),
        "submit_calls": tries,
    }  # fmt: skip


def main_leader(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="tcpsched-failover-leader-"))
    group = ProcessGroup(workdir / "run")
    client: SyncClient | None = None
    results: list[dict[str, Any]] = []
    try:
        peers = group.group(3)
        members = {i: address for i, (_, address) in peers.items()}
        coordinators = {i: proc for i, (proc, _) in peers.items()}
        client = SyncClient(",".join(members[i] for i in sorted(members)),
                            connect_timeout=WAIT_S)
        for i in range(args.trials):
            results.append(leader_trial(group, client, members, coordinators, i + 1))
            r = results[-1]
            elected = "?" if r["elected_s"] is None else f"{r['elected_s']:.3f}s"
            print(f"trial {i + 1:2d}: killed leader {r['killed']} (epoch {r['killed_epoch']}), "
                  f"{r['new_leader']} elected after {elected}, first submit acknowledged "
                  f"after {r['acknowledged_s']:.3f}s", file=sys.stderr, flush=True)
    finally:
        if client is not None:
            client.close()
        group.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)  # reached only when every trial went well
    times = [r["acknowledged_s"] for r in results]
    elected = [r["elected_s"] for r in results if r["elected_s"] is not None]
    summary = {
        "mode": "leader", "settings": "coordinator defaults", "trials": len(results),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3), "max_s": round(max(times), 3),
        "median_elected_s": round(statistics.median(elected), 3) if elected else None,
        "results": results,
    }  # fmt: skip
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"{'metric':<52} {'value':>10}")
        print(f"{'settings':<52} {'defaults':>10}")
        print(f"{'trials':<52} {len(results):>10}")
        for i, r in enumerate(results, 1):
            print(f"{f'trial {i}: kill -9 leader -> acknowledged submit':<52} "
                  f"{r['acknowledged_s']:>9.3f}s")
        if elected:
            print(f"{'kill -9 leader -> new leader elected, median':<52} "
                  f"{summary['median_elected_s']:>9.3f}s")
        print(f"{'kill -9 leader -> acknowledged submit, median':<52} "
              f"{summary['median_s']:>9.3f}s")
        print(f"{'kill -9 leader -> acknowledged submit, min / max':<52} "
              f"{summary['min_s']:.3f}s/{summary['max_s']:.3f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--leader", action="store_true",
                   help="kill -9 the leader of three coordinators instead of a worker")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument("--heartbeat-timeout", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be at least 1")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so the finally blocks stop the cluster
    if args.leader:
        return main_leader(args)
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


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
