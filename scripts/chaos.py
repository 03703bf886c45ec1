"""`make chaos`: a bounded chaos run against a real 3-coordinator cluster, then a Jepsen-style
total-queue check of every job it was told about.

Starts coordinators 1-3 (a peer group) and a few workers on loopback, in a fresh directory. A
load of shell jobs runs from a thread of its own (several clients, each a `Client` given all
three addresses, so each follows the leader by itself): job number N appends `N` to an effects
file, so what ran is read from disk, never from what the coordinators claim. For `--duration`
seconds a nemesis, driven by a seeded `random.Random`, does harm: kill -9 of the leader, of a
follower, of a worker; SIGSTOP of the leader, a follower or a worker for a while, then SIGCONT;
and it restarts what it killed after a while. At most one coordinator is harmed at a time (a
majority stays whole, so every fault is one the design promises to survive) and one worker is
always left healthy.

Then the harm stops, everything is resumed and restarted, the load stops, and every job is
accounted for (the names are Jepsen's total-queue checker's):

  acknowledged   submits the cluster answered with a job id
  completed      acknowledged jobs that succeeded and whose effect is in the file
  failed         acknowledged jobs reported failed (e.g. poisoned: its workers kept dying)
  lost           acknowledged jobs the cluster no longer knows, or that succeeded with no effect
  unexpected     effects of jobs never submitted, or two numbers given one job id
  indeterminate  submits that raised (unknown outcome), and how many of them ran anyway
  duplicated     jobs that ran more than once (at-least-once: a worker killed mid-job)
  failovers      each harm of the leader, and the time from it to the first acknowledged
                 submit on a new leader (another address, or a higher epoch)

Exits 1 if anything was lost or unexpected, or an acknowledged job is not terminal within
`--settle` seconds after the harm stopped; 0 otherwise. Everything it started (coordinators,
workers, the shell jobs they ran) is stopped on the way out, also on an error, Ctrl-C or
SIGTERM; the total run is bounded by the duration, the settle bound and fixed waits.

    .venv/bin/python scripts/chaos.py [--duration 60] [--seed N] [--workers 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from tcpsched.client import Client
from tcpsched.client_sync import SyncClient
from tcpsched.errors import JobNotFound, TcpschedError
from tcpsched.testing.processes import (
    Proc,
    ProcessGroup,
    kill_job_processes,
    wait_for_workers,
    wait_until,
)

WAIT_S = 60.0  # any single wait for the cluster (a leader, workers) is bounded by this
LOAD_CONNECT_TIMEOUT_S = 30.0
TERMINAL = ("succeeded", "failed", "cancelled")


@attrs.define
class Ack:
    """One acknowledged submit: when, which job, and who acknowledged it at which epoch."""

    at: float
    number: int
    job_id: str
    address: str
    epoch: int


class Load:
    """`clients` concurrent submitters on an event loop in a thread of its own, at about
    `rate` jobs a second in all. Every submit is numbered; its outcome is remembered (acked,
    or raised: indeterminate) for the check at the end."""

    def __init__(self, addresses: str, effects: Path, pid_file: Path, *, clients: int,
                 rate: float, rng: random.Random) -> None:
        self.addresses = addresses.split(",")
        self.effects = effects
        self.pid_file = pid_file
        self.clients = clients
        self.rate = rate
        self.rng = rng  # used by the load thread only: the nemesis has its own
        self.numbers = itertools.count(1)
        self.attempted: set[int] = set()
        self.acks: list[Ack] = []
        self.indeterminate: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self, timeout: float) -> bool:
        """Ask the submitters to stop; True if they all did within `timeout`."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def acks_since(self, since: float) -> list[Ack]:
        return [a for a in list(self.acks) if a.at >= since]

    def _main(self) -> None:
        asyncio.run(self._run_all())

    async def _run_all(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for i in range(self.clients):
                tasks.create_task(self._submitter(i))

    def _command(self, number: int) -> str:
        # A shell job outlives kill -9 of its worker (its own session): record its pid so the
        # end of the run can kill it. The sleep gives the nemesis jobs to interrupt.
        return (f"echo $$ >> {self.pid_file}; sleep {self.rng.uniform(0.0, 0.6):.2f}; "
                f"echo {number} >> {self.effects}")

    async def _submitter(self, index: int) -> None:
        pause_s = self.clients / self.rate
        async with Client(self.addresses, connect_timeout=LOAD_CONNECT_TIMEOUT_S,
                          name=f"chaos-load-{index}") as client:
            while not self._stop.is_set():
                number = next(self.numbers)
                self.attempted.add(number)
                try:
                    job_id = await client.submit_shell(self._command(number), retries=2)
                except TcpschedError as exc:
                    self.indeterminate[number] = f"{type(exc).__name__}: {exc}"
                    continue
                epoch = client.welcome.epoch if client.welcome is not None else 0
                self.acks.append(Ack(time.monotonic(), number, job_id, client.address or "",
                                     epoch))
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * pause_s)


@attrs.define
class Fault:
    """One harm done: to whom, when, and (for the leader) when a new leader took a submit."""

    kind: str
    target: str
    at: float
    leader_address: str | None = None
    leader_epoch: int | None = None
    undone_at: float | None = None
    failover_s: float | None = None
    # For a harm of the leader: "new leader" once another took a submit; "kept" if the old one
    # (a short SIGSTOP) took one at its old epoch after it resumed; None while unresolved.
    outcome: str | None = None


class Nemesis:
    """Does seeded harm to the cluster's processes and undoes it, one decision per tick."""

    def __init__(self, args: argparse.Namespace, group: ProcessGroup, *,
                 addresses: dict[int, str], load: Load, rng: random.Random,
                 monitor: SyncClient) -> None:
        self.args = args
        self.group = group
        self.addresses = addresses
        self.joined = ",".join(addresses[i] for i in sorted(addresses))
        self.load = load
        self.rng = rng
        self.monitor = monitor
        self.coordinators: dict[int, Proc] = {}
        self.workers: dict[str, Proc] = {}
        # Harmed process name -> (what was done, when to undo it).
        self.harmed: dict[str, tuple[str, float]] = {}
        self.faults: list[Fault] = []
        self.restarts = 0

    # -- processes ------------------------------------------------------------------------------

    def coordinator_extra(self) -> list[str]:
        a = self.args
        return ["--heartbeat-interval", str(a.heartbeat_interval),
                "--heartbeat-timeout", str(a.heartbeat_timeout),
                "--retry-base", "0.2", "--retry-cap", "2"]

    def start_coordinator(self, node_id: int) -> None:
        name = f"c{node_id}" if node_id not in self.coordinators else f"c{node_id}-{self.restarts}"
        proc, _ = self.group.peer(node_id, self.addresses, self.coordinator_extra(), name=name)
        self.coordinators[node_id] = proc

    def start_worker(self, name: str) -> None:
        self.workers[name] = self.group.worker(self.joined, name, slots=self.args.slots,
                                               extra=["--drain-timeout", "1"])

    def proc(self, name: str) -> Proc:
        if name.startswith("c"):
            return self.coordinators[int(name[1:])]
        return self.workers[name]

    # -- harm -----------------------------------------------------------------------------------

    @staticmethod
    def has_joined(proc: Proc) -> bool:
        """Has this coordinator process followed or led yet? One just restarted has not: harm
        another now and two of three would be down, which is no failover but an outage."""
        log = proc.log()
        return "became follower of" in log or "became leader" in log

    def failover_pending(self) -> bool:
        return any(f.leader_address is not None and f.outcome is None for f in self.faults)

    def failovers_settled(self) -> bool:
        self.update_failovers()
        return not self.failover_pending()

    def update_failovers(self) -> None:
        """A harm of the leader ends at the first submit acknowledged by a new leader (another
        address, or a higher epoch), or, for a SIGSTOP shorter than the election timeout, at
        the first one the old leader acknowledges at its old epoch once resumed (a reply in
        flight when it was stopped is not taken for that)."""
        for fault in self.faults:
            if fault.leader_address is None or fault.outcome is not None:
                continue
            for ack in self.load.acks_since(fault.at):
                if ack.address != fault.leader_address or ack.epoch > (fault.leader_epoch or 0):
                    fault.failover_s = round(ack.at - fault.at, 3)
                    fault.outcome = "new leader"
                    break
                if fault.undone_at is not None and ack.at > fault.undone_at:
                    fault.outcome = "kept"
                    break

    def leader(self) -> tuple[int, str, int] | None:
        try:
            info = self.monitor.leader()
        except TcpschedError:
            return None
        return int(info["id"]), str(info["address"]), int(info["epoch"])

    def harm(self, now: float) -> None:
        rng = self.rng
        coordinators_whole = (not any(n.startswith("c") for n in self.harmed)
                              and all(map(self.has_joined, self.coordinators.values())))
        healthy_workers = [n for n in sorted(self.workers) if n not in self.harmed]
        choices: list[str] = []
        if coordinators_whole and not self.failover_pending():
            choices += ["kill-leader", "kill-leader", "stop-leader", "kill-follower",
                        "stop-follower"]
        if len(healthy_workers) > 1:
            choices += ["kill-worker", "kill-worker", "stop-worker"]
        if not choices:
            return
        kind = rng.choice(choices)
        how, _, whom = kind.partition("-")
        sig = signal.SIGKILL if how == "kill" else signal.SIGSTOP
        undo_at = now + (rng.uniform(1.0, 5.0) if how == "kill"
                         else rng.uniform(0.5, self.args.stop_max))
        if whom == "worker":
            target = rng.choice(healthy_workers)
            self.workers[target].signal(sig)
            self.faults.append(Fault(kind, target, now))
            self.harmed[target] = (how, undo_at)
            return
        leader = self.leader()
        if leader is None:
            return  # no leader to aim at right now: skip this tick
        leader_id, leader_address, epoch = leader
        if whom == "leader":
            node_id = leader_id
        else:
            node_id = rng.choice(sorted(i for i in self.coordinators if i != leader_id))
        target = f"c{node_id}"
        at = time.monotonic()
        self.coordinators[node_id].signal(sig)
        if whom == "leader":
            self.faults.append(Fault(kind, target, at, leader_address, epoch))
        else:
            self.faults.append(Fault(kind, target, at))
        self.harmed[target] = (how, undo_at)

    def undo(self, name: str) -> None:
        how, _ = self.harmed.pop(name)
        for fault in reversed(self.faults):
            if fault.target == name and fault.undone_at is None:
                fault.undone_at = time.monotonic()
                break
        if how == "stop":
            self.proc(name).signal(signal.SIGCONT)
            return
        proc = self.proc(name)
        with contextlib.suppress(Exception):
            proc.wait(5.0)  # SIGKILLed: reap it before its replacement binds the port
        self.restarts += 1
        if name.startswith("c"):
            self.start_coordinator(int(name[1:]))
        else:
            self.start_worker(name)

    def undo_due(self, now: float, everything: bool = False) -> None:
        for name, (_, until) in sorted(self.harmed.items()):
            if everything or now >= until:
                self.undo(name)

    def run(self, duration_s: float) -> None:
        end = time.monotonic() + duration_s
        next_harm = time.monotonic() + self.rng.uniform(0.5, self.args.interval)
        while (now := time.monotonic()) < end:
            self.update_failovers()
            self.undo_due(now)
            if now >= next_harm:
                self.harm(now)
                next_harm = time.monotonic() + self.rng.uniform(0.5, self.args.interval)
            time.sleep(0.02)
        self.undo_due(time.monotonic(), everything=True)


def check(client: SyncClient, load: Load, effects: Path, settle_s: float) -> dict[str, Any]:
    """The total-queue accounting of the run (see the module docstring)."""
    by_id: dict[str, int] = {}
    collisions = []
    for ack in load.acks:
        if by_id.setdefault(ack.job_id, ack.number) != ack.number:
            collisions.append(ack.job_id)
    records: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    try:
        for r in client.wait_records(list(by_id), timeout=settle_s):
            records[r["id"]] = r
    except JobNotFound:
        # Find which: ask for each, so one lost job names itself.
        for job_id in by_id:
            try:
                records[job_id] = client.status(job_id)
            except JobNotFound:
                missing.append(job_id)
    runs: collections.Counter[int] = collections.Counter()
    malformed = 0
    for line in effects.read_text().split() if effects.exists() else []:
        try:
            runs[int(line)] += 1
        except ValueError:
            malformed += 1
    states = collections.Counter(r["state"] for r in records.values())
    not_terminal = sorted(i for i, r in records.items() if r["state"] not in TERMINAL)
    no_effect = sorted(i for i, r in records.items()
                       if r["state"] == "succeeded" and runs[by_id[i]] == 0)
    completed = sum(1 for i, r in records.items()
                    if r["state"] == "succeeded" and runs[by_id[i]] > 0)
    unexpected = sorted(n for n in runs if n not in load.attempted)
    acked_numbers = set(by_id.values())
    indeterminate_ran = sum(1 for n in load.indeterminate if runs[n] > 0 and
                            n not in acked_numbers)
    duplicated = {n: c for n, c in runs.items() if c > 1}
    return {
        "attempted": len(load.attempted),
        "acknowledged": len(by_id),
        "completed": completed,
        "failed": states.get("failed", 0) + states.get("cancelled", 0),
        "lost": len(missing) + len(no_effect),
        "lost_ids": (missing + no_effect)[:20],
        "unexpected": len(unexpected) + malformed + len(collisions),
        "unexpected_numbers": unexpected[:20],
        "indeterminate": len(load.indeterminate),
        "indeterminate_executed": indeterminate_ran,
        "indeterminate_errors": sorted(collections.Counter(
            e.split(":", 1)[0] for e in load.indeterminate.values()).items()),
        "duplicated_jobs": len(duplicated),
        "duplicated_executions": sum(c - 1 for c in duplicated.values()),
        "not_terminal": len(not_terminal),
        "not_terminal_ids": not_terminal[:20],
        "states": dict(states),
        "attempts": {str(k): v for k, v in sorted(collections.Counter(
            r["attempts"] for r in records.values()).items())},
    }


def failover_summary(faults: Sequence[Fault]) -> dict[str, Any]:
    leader_faults = [f for f in faults if f.leader_address is not None]
    by_kind: dict[str, Any] = {}
    for kind in sorted({f.kind for f in leader_faults}):
        times = [f.failover_s for f in leader_faults if f.kind == kind and f.failover_s is not None]
        by_kind[kind] = {
            "count": sum(1 for f in leader_faults if f.kind == kind),
            "measured": len(times),
            "median_s": round(statistics.median(times), 3) if times else None,
            "min_s": min(times) if times else None,
            "max_s": max(times) if times else None,
        }
    return {"count": len(leader_faults), "by_kind": by_kind,
            "kept_leader": sum(1 for f in leader_faults if f.outcome == "kept"),
            "durations_s": [f.failover_s for f in leader_faults if f.failover_s is not None]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of harm (default 60)")
    p.add_argument("--settle", type=float, default=120.0,
                   help="seconds for every job to finish once harm stops (default 120)")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (default: random)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--clients", type=int, default=2, help="concurrent submitters (default 2)")
    p.add_argument("--rate", type=float, default=10.0, help="submits a second in all (10)")
    p.add_argument("--interval", type=float, default=3.0,
                   help="at most this many seconds between two harms (default 3)")
    p.add_argument("--stop-max", type=float, default=5.0,
                   help="longest SIGSTOP in seconds (default 5)")
    p.add_argument("--heartbeat-interval", type=float, default=0.2,
                   help="workers' heartbeat interval (default 0.2)")
    p.add_argument("--heartbeat-timeout", type=float, default=1.0,
                   help="seconds of worker silence before it is dead (default 1.0)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="directory for data, logs and the effects file (default: a new temp)")
    p.add_argument("--keep", action="store_true", help="keep the directory even if all is well")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.workers < 2 or args.clients < 1 or args.rate <= 0:
        p.error("--duration and --rate must be positive, --workers at least 2, --clients 1")
    return args


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def print_report(report: dict[str, Any]) -> None:
    r = report
    f = r["failovers"]
    rows = [
        ("seed", r["seed"]),
        ("harm seconds / wall seconds", f"{r['duration_s']:g} / {r['seconds']}"),
        ("submits attempted", r["attempted"]),
        ("acknowledged", r["acknowledged"]),
        ("completed", r["completed"]),
        ("failed (reported to the user)", r["failed"]),
        ("lost (must be 0)", r["lost"]),
        ("unexpected (must be 0)", r["unexpected"]),
        ("not terminal after settle (must be 0)", r["not_terminal"]),
        ("indeterminate submits / of them ran", f"{r['indeterminate']} / "
                                                 f"{r['indeterminate_executed']}"),
        ("duplicated: jobs / extra executions", f"{r['duplicated_jobs']} / "
                                                 f"{r['duplicated_executions']}"),
        ("final states", r["states"]),
        ("attempts per job", r["attempts"]),
        ("harm done", r["harm"]),
        ("restarts", r["restarts"]),
        ("harms of the leader / leader kept", f"{f['count']} / {f['kept_leader']}"),
    ]
    for kind, s in f["by_kind"].items():
        if s["measured"]:
            rows.append((f"  {kind}: failover median (min-max)",
                         f"{s['median_s']:.3f}s ({s['min_s']:.3f}-{s['max_s']:.3f}s), "
                         f"{s['measured']} of {s['count']} measured"))
        else:
            rows.append((f"  {kind}", f"{s['count']}, none measured"))
    rows.append(("  failover durations (s)", f["durations_s"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for v in r["violations"]:
        print(f"VIOLATION: {v}")
    print("OK: nothing lost, nothing unexpected, every acknowledged job terminal"
          if not r["violations"] else
          f"FAILED: {len(r['violations'])} violation(s); logs in {r['workdir']}; "
          f"replay the harm with --seed {r['seed']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tcpsched-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pid_file, effects = workdir / "job-pids", workdir / "effects"
    group = ProcessGroup(workdir / "run")
    monitor: SyncClient | None = None
    load: Load | None = None
    nemesis: Nemesis | None = None
    report: dict[str, Any] = {}
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so the finally below stops everything
    try:
        ports = [int(a.rsplit(":", 1)[1]) for a in _free_addresses(3)]
        addresses = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
        joined = ",".join(addresses[i] for i in sorted(addresses))
        monitor = SyncClient(joined, connect_timeout=5.0, name="chaos-monitor")
        load = Load(joined, effects, pid_file, clients=args.clients, rate=args.rate,
                    rng=random.Random(rng.randrange(2**32)))
        nemesis = Nemesis(args, group, addresses=addresses, load=load, rng=rng, monitor=monitor)
        for node_id in sorted(addresses):
            nemesis.start_coordinator(node_id)
        for i in range(1, args.workers + 1):
            nemesis.start_worker(f"w{i}")
        wait_until(nemesis.leader, WAIT_S, what="a leader")
        wait_for_workers(monitor, sorted(nemesis.workers), timeout=WAIT_S)
        print(f"chaos: seed={seed} 3 coordinators, {args.workers} workers x {args.slots} slots, "
              f"{args.clients} clients at ~{args.rate:g}/s, {args.duration:g}s of harm, "
              f"files in {workdir}", file=sys.stderr, flush=True)
        load.start()
        wait_until(lambda: load.acks, WAIT_S, what="the first acknowledged submit")
        nemesis.run(args.duration)
        # Harm stopped and undone: give the last failover its chance to show, then stop load.
        wait_until(nemesis.leader, WAIT_S, what="a leader after the harm")
        with contextlib.suppress(TimeoutError):
            wait_until(nemesis.failovers_settled, WAIT_S / 2, what="the last failover")
        if not load.stop(LOAD_CONNECT_TIMEOUT_S + 15.0):
            raise TimeoutError("the load did not stop")
        wait_for_workers(monitor, sorted(nemesis.workers), timeout=WAIT_S)
        report = check(monitor, load, effects, args.settle)
    except KeyboardInterrupt:
        print("chaos: interrupted: stopping everything", file=sys.stderr)
        return 130
    except (TcpschedError, TimeoutError) as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        print(group.logs()[-8000:], file=sys.stderr)
        return 1
    finally:
        if load is not None:
            load.stop(5.0)
        if monitor is not None:
            monitor.close()
        group.stop_all()
        kill_job_processes(pid_file)
    violations = []
    if report["lost"]:
        violations.append(f"{report['lost']} acknowledged job(s) lost: {report['lost_ids']}")
    if report["unexpected"]:
        violations.append(f"{report['unexpected']} unexpected effect(s) or id collisions: "
                          f"{report['unexpected_numbers']}")
    if report["not_terminal"]:
        violations.append(f"{report['not_terminal']} job(s) not terminal after "
                          f"{args.settle:g}s of calm: {report['not_terminal_ids']}")
    report.update({
        "seed": seed, "duration_s": args.duration,
        "seconds": round(time.monotonic() - started, 1),
        "harm": dict(collections.Counter(f.kind for f in nemesis.faults)),
        "restarts": nemesis.restarts,
        "failovers": failover_summary(nemesis.faults),
        "faults": [attrs.asdict(f) for f in nemesis.faults],
        "pids": [p.pid for p in group.procs],
        "workdir": str(workdir),
        "violations": violations,
    })  # fmt: skip
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    if args.workdir is None and not args.keep and not violations:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if violations else 0


def _free_addresses(count: int) -> list[str]:
    """`count` distinct free loopback ports (held open together, so no two are the same)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for sock in socks:
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
