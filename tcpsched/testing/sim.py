"""A seeded simulation of a whole single-coordinator cluster, with faults, checked every step.

Theory of operation: the real `Scheduler` (the core, unchanged) talks to simulated workers that
run the real worker core, `core/workerproto.py`, the one `tcpsched/worker.py` wraps (register
with running and unacknowledged attempts, heartbeats, results kept in an outbox until
acknowledged, epoch fencing, kill orders, hand back on drain). Everything runs
on one `SimClock` and one event heap; `SimNetwork` carries each message with a random delay
while keeping per-connection FIFO order, like TCP, and loses in-flight messages when a
connection is cut. Faults are drawn from the seed during a fault window: connection cuts, worker
crashes (kill -9), hangs (SIGSTOP: no heartbeats, nothing processed, then resumed), and drains
(SIGTERM); crashed or drained workers restart later. After every step the invariants are
checked; once the window closes every worker comes back, and every acknowledged job must then
reach a terminal state. One seed is one exact run: a failure names the command that replays it.

This module is the driver (event loop, scheduler and client side, fault injection, invariants,
CLI); the clock and network are in `sim_net`, the simulated workers in `sim_worker`.

    python -m tcpsched.testing.sim --seed 17 [--verbose]
    python -m tcpsched.testing.sim --seeds 200           # seeds 0..199
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import logging
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.events import Close, Closed, Connected, Journal, Received, Send, Tick
from tcpsched.core.jobs import JobSpec, JobState
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.testing.sim_net import SimClock, SimConn, SimNetwork
from tcpsched.testing.sim_worker import SimWorker, WorkerSide

__all__ = [
    "InvariantViolation", "SimClock", "SimConfig", "SimConn", "SimNetwork", "SimWorker",
    "Simulation", "WorkerSide", "main", "run_seed",
]

CLIENT_CONN = 0
TRACE_LINES = 40
TICKS_AT_ONE_INSTANT_MAX = 1000  # more Ticks than this without time moving is a busy loop


class InvariantViolation(AssertionError):
    """The cluster broke a promise; the message names the seed and the replay command."""


@attrs.frozen
class SimConfig:
    workers: int = 3
    slots_max: int = 3
    jobs: int = 40
    fault_window_s: float = 30.0
    settle_s: float = 600.0  # after the window, how long every job has to finish
    faults_per_s: float = 0.4
    net_delay_min_s: float = 0.0005
    net_delay_max_s: float = 0.05
    job_s_max: float = 3.0
    failure_p: float = 0.2
    retries_max: int = 2
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    drain_timeout_s: float = 1.0
    policy: str = "round-robin"


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.config = config or SimConfig()
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.net = SimNetwork(self)
        cfg = self.config
        self.scheduler = Scheduler(
            SchedulerConfig(
                heartbeat_interval_s=cfg.heartbeat_interval_s,
                heartbeat_timeout_s=cfg.heartbeat_timeout_s, retry_base_s=0.2, retry_cap_s=5.0,
                policy=cfg.policy,
            ),
            random.Random(self.rng.getrandbits(64)), self.clock.now,
        )  # fmt: skip
        self.workers = {
            f"w{i}": SimWorker(f"w{i}", self.rng.randint(1, cfg.slots_max))
            for i in range(1, cfg.workers + 1)
        }
        self.acked: set[str] = set()
        self.successes: collections.Counter[str] = collections.Counter()
        self.started: dict[str, int] = {}  # job id -> attempt of its latest start record
        self.trace: collections.deque[str] = collections.deque(maxlen=TRACE_LINES)
        self.faults: collections.Counter[str] = collections.Counter()
        self.steps = 0
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._req_ids = itertools.count(1)
        self._ticks_at_instant = 0
        self.worker_side = ws = WorkerSide(self)
        self._handlers: dict[str, Callable[[Any], None]] = {
            "sched_connected": self._sched_connected, "sched_receive": self._sched_receive,
            "sched_closed": self._sched_closed, "worker_receive": ws.receive,
            "worker_closed": ws.closed, "worker_boot": ws.boot_named, "worker_tick": ws.tick,
            "worker_dialed": ws.dialed, "job_done": ws.job_done,
            "worker_drain": ws.drain_replayed, "submit": self._submit, "fault": self._fault,
            "restart": ws.restart, "resume": ws.resume,
        }  # fmt: skip

    # -- the event loop ----------------------------------------------------------------------------

    def at(self, t: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def run(self) -> dict[str, Any]:
        cfg = self.config
        start = self.clock.now
        window_end = start + cfg.fault_window_s
        self._sched_step(Connected(CLIENT_CONN, "client", "sim-client", "sim:client"))
        for worker in self.workers.values():
            self.at(start + self.rng.uniform(0, 0.5), "worker_boot", worker.name)
        remaining = cfg.jobs
        while remaining > 0:
            batch = min(remaining, self.rng.randint(1, 5))
            remaining -= batch
            self.at(start + self.rng.uniform(0, cfg.fault_window_s), "submit", batch)
        t = start + 1.0
        while True:
            t += self.rng.expovariate(cfg.faults_per_s)
            if t >= window_end:
                break
            self.at(t, "fault")
        self.at(window_end, "restart", None)  # everyone back once faults stop
        deadline = window_end + cfg.settle_s
        while self.clock.now < deadline:
            if self._quiet_and_done(window_end):
                break
            if not self._step_once(deadline):
                break
        self._check_liveness()
        stats = self.scheduler.statistics()
        return {"seed": self.seed, "jobs": len(self.acked), "steps": self.steps,
                "sim_seconds": round(self.clock.now - start, 3),
                "succeeded": stats["succeeded"], "failed": stats["failed"],
                "reassigned": stats["reassigned"], "retried": stats["retried"],
                "poisoned": stats["poisoned"], "handed_back": stats["handed_back"],
                "workers_lost": stats["workers_lost"], "faults": dict(sorted(self.faults.items()))}

    def _quiet_and_done(self, window_end: float) -> bool:
        if self.clock.now < window_end or len(self.acked) < self.config.jobs:
            return False
        table = self.scheduler.table
        return all(table.jobs[j].state.is_terminal for j in self.acked)

    def _step_once(self, until: float) -> bool:
        next_event = self._heap[0][0] if self._heap else None
        deadline = self.scheduler.next_deadline()
        if deadline is not None and (next_event is None or deadline <= next_event):
            if deadline > until:
                return False
            previous = self.clock.now
            self.clock.advance_to(max(deadline, previous))
            self._ticks_at_instant = self._ticks_at_instant + 1 if self.clock.now == previous \
                else 0
            if self._ticks_at_instant > TICKS_AT_ONE_INSTANT_MAX:
                self._fail(f"busy loop: the scheduler asks for a timer at {deadline} again and "
                           f"again at {self.clock.now}")
            self._sched_step(Tick())
            return True
        if next_event is None or next_event > until:
            return False
        t, _, kind, payload = heapq.heappop(self._heap)
        self.clock.advance_to(t)
        self._ticks_at_instant = 0
        self.handle(kind, payload)
        self._check_invariants()
        return True

    # -- the scheduler side ------------------------------------------------------------------------

    def _sched_step(self, event: Any) -> None:
        self.steps += 1
        effects = self.scheduler.step(event, self.clock.now)
        for effect in effects:
            if isinstance(effect, Journal):
                record = effect.record
                if record["op"] == "start":
                    self.started[record["id"]] = record["attempt"]
                elif record["op"] == "finish" and "attempt" in record \
                        and record["attempt"] != self.started.get(record["id"]):
                    self._fail(f"job {record['id']} finished by attempt {record['attempt']}, "
                               f"but its current attempt is {self.started.get(record['id'])}")
                if record["op"] == "finish" and record["state"] == "succeeded":
                    self.successes[record["id"]] += 1
                if record["op"] in ("start", "finish", "requeue"):
                    self.log(f"journal {record['op']} job={record['id']} "
                              f"{record.get('worker') or record.get('reason') or ''}")
            elif isinstance(effect, Send):
                if effect.conn == CLIENT_CONN:
                    self._client_reply(effect.msg)
                else:
                    self.net.to_worker(effect.conn, effect.msg)
            elif isinstance(effect, Close):
                if effect.conn == CLIENT_CONN:
                    self._fail(f"the scheduler closed the client: {effect.reason}")
                self.log(f"scheduler closes conn={effect.conn}: {effect.reason}")
                self.net.sched_close(effect.conn)
        self._check_invariants()

    def _sched_connected(self, conn: int) -> None:
        c = self.net.conns[conn]
        if not c.cut and not c.worker_closed:
            self._sched_step(Connected(conn, "worker", c.worker, f"sim:{c.worker}"))
        # else: the dial failed before the handshake finished; the worker sees it closed.

    def _sched_receive(self, payload: tuple[int, Any]) -> None:
        conn, msg = payload
        c = self.net.conns[conn]
        if c.cut or c.sched_closed:
            return
        self._sched_step(Received(conn, msg))

    def _sched_closed(self, conn: int) -> None:
        c = self.net.conns[conn]
        if c.sched_told:
            return
        c.sched_told = True
        c.sched_closed = True
        self._sched_step(Closed(conn, "closed"))

    def _submit(self, count: int) -> None:
        cfg = self.config
        specs = tuple(
            JobSpec(kind="shell", command=f"sim job {i}",
                    retries=self.rng.randint(0, cfg.retries_max),
                    priority=self.rng.choice((0, 0, 0, 5)))
            for i in range(count)
        )  # fmt: skip
        self._sched_step(Received(CLIENT_CONN, m.Submit(req_id=next(self._req_ids), jobs=specs)))

    def _client_reply(self, msg: Any) -> None:
        if isinstance(msg, m.Reply) and isinstance(msg.value, list):
            self.acked.update(str(job_id) for job_id in msg.value)
        else:
            self._fail(f"unexpected reply to the client: {msg!r}")

    # -- faults ------------------------------------------------------------------------------------

    def _fault(self, _payload: None) -> None:
        rng = self.rng
        kind = rng.choice(("cut", "crash", "hang", "hang_long", "drain", "restart"))
        w = self.workers[rng.choice(sorted(self.workers))]
        if kind == "cut" and w.up and w.conn is not None and not w.hung:
            self.net.cut(w.conn)
        elif kind == "crash" and w.up:
            self.worker_side.stop(w, reset=True)
            self.at(self.clock.now + rng.uniform(0.2, 6.0), "restart", w.name)
        elif kind in ("hang", "hang_long") and w.up and not w.hung:
            timeout = self.config.heartbeat_timeout_s
            length = rng.uniform(0.1, timeout * 0.8) if kind == "hang" else \
                rng.uniform(timeout * 1.2, timeout * 3)
            w.hung = True
            self.at(self.clock.now + length, "resume", (w.name, w.life))
        elif kind == "drain" and w.up and w.proto is not None and not w.hung \
                and not w.draining:
            self.worker_side.drain(w)  # it exits once drained, and is restarted later
        elif kind == "restart" and not w.up:
            self.worker_side.restart(w.name)
        else:
            return
        self.faults[kind] += 1
        self.log(f"FAULT {kind} {w.name}")

    # -- invariants --------------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        sched = self.scheduler
        table = sched.table
        for job_id in self.acked:
            job = table.get(job_id)
            if job is None:
                self._fail(f"acknowledged job {job_id} is lost: not in the table")
            elif job.state is JobState.PENDING and job_id not in sched.queue:
                self._fail(f"acknowledged job {job_id} is lost: pending but not queued")
            elif job.state is JobState.RUNNING:
                entry = sched.workers.get(job.worker or "")
                if entry is None or entry.running.get(job_id) != job.attempts:
                    self._fail(f"job {job_id} is running on {job.worker}, which does not "
                               "hold it: nobody will ever finish it")
                elif sched.worker_state(job.worker or "") == "dead":
                    self._fail(f"job {job_id} is running on dead worker {job.worker}")
        for name, entry in sched.workers.items():
            if len(entry.running) > entry.slots:
                self._fail(f"scheduler gave {name} {len(entry.running)} jobs for "
                           f"{entry.slots} slots")
        for w in self.workers.values():
            if len(w.running) > w.slots:
                self._fail(f"worker {w.name} runs {len(w.running)} jobs on {w.slots} slots")
        for job_id, count in self.successes.items():
            if count > 1:
                self._fail(f"job {job_id} succeeded {count} times in the table")

    def _check_liveness(self) -> None:
        if len(self.acked) < self.config.jobs:
            self._fail(f"only {len(self.acked)} of {self.config.jobs} jobs were acknowledged")
        table = self.scheduler.table
        stuck = sorted(j for j in self.acked if not table.jobs[j].state.is_terminal)
        if stuck:
            job = table.jobs[stuck[0]]
            self._fail(f"{len(stuck)} job(s) never reached a terminal state after faults "
                       f"stopped, e.g. {job.id} {job.state.value} worker={job.worker} "
                       f"attempts={job.attempts}")

    def handle(self, kind: str, payload: Any) -> None:
        """Run the handler of one event (off the heap, or replayed by a resumed worker)."""
        self._handlers[kind](payload)

    def log(self, line: str) -> None:
        """Keep a line for the trace that a failure prints."""
        self.trace.append(f"t={self.clock.now:.4f} {line}")

    def _fail(self, problem: str) -> None:
        trace = "\n  ".join(self.trace)
        raise InvariantViolation(
            f"seed {self.seed}: {problem}\n"
            f"replay: python -m tcpsched.testing.sim --seed {self.seed} --verbose\n"
            f"last events:\n  {trace}"
        )


def run_seed(seed: int, config: SimConfig | None = None) -> dict[str, Any]:
    """Run one seeded simulation; raises InvariantViolation on a broken promise."""
    return Simulation(seed, config).run()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcpsched.testing.sim",
                                description="Seeded simulation of a cluster with faults.")
    p.add_argument("--seed", type=int, help="run this one seed")
    p.add_argument("--seeds", type=int, default=50, help="run seeds 0..N-1 (default 50)")
    defaults = SimConfig()
    p.add_argument("--jobs", type=int, default=defaults.jobs)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--slots-max", type=int, default=defaults.slots_max)
    p.add_argument("--faults-per-s", type=float, default=defaults.faults_per_s)
    p.add_argument("--verbose", action="store_true", help="log the scheduler's decisions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(name)s %(message)s")
    config = SimConfig(jobs=args.jobs, workers=args.workers, faults_per_s=args.faults_per_s,
                       slots_max=args.slots_max)
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    failures = 0
    for seed in seeds:
        try:
            summary = run_seed(seed, config)
        except InvariantViolation as exc:
            failures += 1
            print(f"FAIL {exc}")
            continue
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"{len(seeds) - failures}/{len(seeds)} seeds held every invariant")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
