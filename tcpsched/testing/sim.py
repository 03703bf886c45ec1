"""A seeded simulation of a whole single-coordinator cluster, with faults, checked every step.

Theory of operation: the real `Scheduler` (the core, unchanged) talks to simulated workers that
follow the same protocol as `tcpsched/worker.py` (register with running attempts, heartbeats,
results kept in an outbox until acknowledged, kill orders, hand back on drain). Everything runs
on one `SimClock` and one event heap; `SimNetwork` carries each message with a random delay
while keeping per-connection FIFO order, like TCP, and loses in-flight messages when a
connection is cut. Faults are drawn from the seed during a fault window: connection cuts, worker
crashes (kill -9), hangs (SIGSTOP: no heartbeats, nothing processed, then resumed), and drains
(SIGTERM); crashed or drained workers restart later. After every step the invariants are
checked; once the window closes every worker comes back, and every acknowledged job must then
reach a terminal state. One seed is one exact run: a failure names the command that replays it.

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


@attrs.define
class SimClock:
    now: float = 1_000.0

    def advance_to(self, t: float) -> None:
        assert t >= self.now - 1e-9, f"time went back: {t} < {self.now}"
        self.now = max(self.now, t)


@attrs.define
class SimConn:
    conn: int
    worker: str
    cut: bool = False  # reset: whatever is in flight is lost, both ways
    sched_closed: bool = False  # the scheduler closed it (or saw it close)
    worker_closed: bool = False
    sched_told: bool = False  # the scheduler got its Closed event (exactly once)
    to_sched_at: float = 0.0  # delivery time of the last message, for FIFO order
    to_worker_at: float = 0.0


class SimNetwork:
    """Connections between the scheduler and workers: delays, FIFO per direction, cuts."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.conns: dict[int, SimConn] = {}
        self._ids = itertools.count(1)

    def _delay(self) -> float:
        cfg = self.sim.config
        return self.sim.rng.uniform(cfg.net_delay_min_s, cfg.net_delay_max_s)

    def open(self, worker: str) -> int:
        conn = next(self._ids)
        c = self.conns[conn] = SimConn(conn, worker)
        c.to_sched_at = self.sim.clock.now + self._delay()
        self.sim.at(c.to_sched_at, "sched_connected", conn)
        return conn

    def to_sched(self, conn: int, msg: Any) -> None:
        c = self.conns[conn]
        if c.cut or c.worker_closed:
            return
        c.to_sched_at = max(c.to_sched_at, self.sim.clock.now + self._delay())
        self.sim.at(c.to_sched_at, "sched_receive", (conn, msg))

    def to_worker(self, conn: int, msg: Any) -> None:
        c = self.conns.get(conn)
        if c is None or c.cut or c.sched_closed:
            return
        c.to_worker_at = max(c.to_worker_at, self.sim.clock.now + self._delay())
        self.sim.at(c.to_worker_at, "worker_receive", (c.worker, conn, msg))

    def sched_close(self, conn: int) -> None:
        """The scheduler closes: what it sent still arrives (flush), then the worker sees EOF."""
        c = self.conns[conn]
        if c.sched_closed:
            return
        c.sched_closed = True
        c.to_worker_at = max(c.to_worker_at, self.sim.clock.now + self._delay())
        self.sim.at(c.to_worker_at, "worker_closed", (c.worker, conn))
        self.sim.at(self.sim.clock.now, "sched_closed", conn)

    def worker_close(self, conn: int, *, reset: bool) -> None:
        """The worker closes (gracefully after a drain, or by dying: a reset)."""
        c = self.conns[conn]
        if c.worker_closed:
            return
        c.worker_closed = True
        c.cut = c.cut or reset
        c.to_sched_at = max(c.to_sched_at, self.sim.clock.now + self._delay())
        self.sim.at(c.to_sched_at, "sched_closed", conn)

    def cut(self, conn: int) -> None:
        """A network fault resets the connection: both sides see it close, in-flight is lost."""
        c = self.conns[conn]
        if c.cut:
            return
        c.cut = True
        self.sim.at(self.sim.clock.now + self._delay(), "sched_closed", conn)
        self.sim.at(self.sim.clock.now + self._delay(), "worker_closed", (c.worker, conn))


@attrs.define
class SimWorker:
    """The worker protocol of `tcpsched/worker.py`, with jobs that only take simulated time."""

    name: str
    slots: int
    up: bool = True
    hung: bool = False
    draining: bool = False
    conn: int | None = None
    registered: bool = False
    life: int = 0  # bumped on crash/restart so timers of an earlier life are ignored
    running: dict[str, int] = attrs.field(factory=dict)
    outbox: dict[tuple[str, int], m.Result] = attrs.field(factory=dict)
    backlog: list[tuple[str, Any]] = attrs.field(factory=list)  # what arrived while hung
    epoch_seen: int = 0

    def refs(self) -> tuple[m.AttemptRef, ...]:
        return tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in sorted(self.running.items()))


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
        self._handlers: dict[str, Callable[[Any], None]] = {
            "sched_connected": self._sched_connected, "sched_receive": self._sched_receive,
            "sched_closed": self._sched_closed, "worker_receive": self._worker_receive,
            "worker_closed": self._worker_closed, "worker_connect": self._worker_connect,
            "heartbeat": self._heartbeat, "job_done": self._job_done,
            "drain_end": self._drain_end, "submit": self._submit, "fault": self._fault,
            "restart": self._restart, "resume": self._resume,
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
            self.at(start + self.rng.uniform(0, 0.5), "worker_connect", (worker.name, 0))
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
        self._handlers[kind](payload)
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
                    self._log(f"journal {record['op']} job={record['id']} "
                              f"{record.get('worker') or record.get('reason') or ''}")
            elif isinstance(effect, Send):
                if effect.conn == CLIENT_CONN:
                    self._client_reply(effect.msg)
                else:
                    self.net.to_worker(effect.conn, effect.msg)
            elif isinstance(effect, Close):
                if effect.conn == CLIENT_CONN:
                    self._fail(f"the scheduler closed the client: {effect.reason}")
                self._log(f"scheduler closes conn={effect.conn}: {effect.reason}")
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

    # -- the worker side ---------------------------------------------------------------------------

    def _send(self, worker: SimWorker, msg: Any) -> None:
        if worker.conn is not None:
            self.net.to_sched(worker.conn, msg)

    def _worker_connect(self, payload: tuple[str, int]) -> None:
        name, life = payload
        w = self.workers[name]
        if life != w.life or not w.up or w.conn is not None:
            return
        if w.hung:
            w.backlog.append(("worker_connect", payload))
            return
        w.conn = self.net.open(name)
        w.registered = False
        self._log(f"{name} dials conn={w.conn} running={sorted(w.running.items())}")
        self._send(w, m.Register(name=name, slots=w.slots, running=w.refs(),
                                 draining=w.draining))

    def _worker_receive(self, payload: tuple[str, int, Any]) -> None:
        name, conn, msg = payload
        w = self.workers[name]
        if not w.up or conn != w.conn:
            return
        if w.hung:
            w.backlog.append(("worker_receive", payload))
            return
        if isinstance(msg, m.Registered):
            w.registered = True
            w.epoch_seen = max(w.epoch_seen, msg.epoch)
            for ref in msg.kill:
                self._kill(w, ref.job_id, ref.attempt, "stale attempt")
            for result in list(w.outbox.values()):
                self._send(w, result)
            self.at(self.clock.now, "heartbeat", (name, w.life, conn))
        elif isinstance(msg, m.Assign):
            self._assign(w, msg)
        elif isinstance(msg, m.Kill):
            self._kill(w, msg.job_id, msg.attempt, msg.reason)
        elif isinstance(msg, m.ResultAck):
            w.outbox.pop((msg.job_id, msg.attempt), None)

    def _assign(self, w: SimWorker, msg: m.Assign) -> None:
        if msg.epoch < w.epoch_seen:
            return
        current = w.running.get(msg.job_id)
        if current is not None:
            if current >= msg.attempt:
                return
            del w.running[msg.job_id]  # superseded: its result would be stale
        if w.draining or len(w.running) >= w.slots:
            self._send(w, m.HandBack(job_id=msg.job_id, attempt=msg.attempt,
                                     reason="draining" if w.draining else "no free slot"))
            return
        w.running[msg.job_id] = msg.attempt
        duration = self.rng.uniform(0.01, self.config.job_s_max)
        self.at(self.clock.now + duration, "job_done", (w.name, w.life, msg.job_id, msg.attempt))

    def _kill(self, w: SimWorker, job_id: str, attempt: int, reason: str) -> None:
        if w.running.get(job_id) != attempt:
            return
        del w.running[job_id]
        self._finish(w, job_id, attempt, "cancelled" if reason == "cancelled" else "failed",
                     reason)

    def _job_done(self, payload: tuple[str, int, str, int]) -> None:
        name, life, job_id, attempt = payload
        w = self.workers[name]
        if life != w.life or w.running.get(job_id) != attempt:
            return
        if w.hung:
            w.backlog.append(("job_done", payload))
            return
        del w.running[job_id]
        failed = self.rng.random() < self.config.failure_p
        self._finish(w, job_id, attempt, "failed" if failed else "succeeded",
                     "exit code 1" if failed else None)

    def _finish(self, w: SimWorker, job_id: str, attempt: int, state: str,
                error: str | None) -> None:
        now = self.clock.now
        result = m.Result(job_id=job_id, attempt=attempt, state=state,
                          exit_code=0 if state == "succeeded" else 1, result=None, stdout="",
                          stderr="", error=error, started_at=now, finished_at=now)
        w.outbox[(job_id, attempt)] = result
        if w.registered:
            self._send(w, result)

    def _heartbeat(self, payload: tuple[str, int, int]) -> None:
        name, life, conn = payload
        w = self.workers[name]
        if life != w.life or conn != w.conn or not w.up:
            return
        if w.hung:
            w.backlog.append(("heartbeat", payload))
            return
        self._send(w, m.Heartbeat(running=w.refs()))
        # A busy event loop beats a little late, never early.
        interval = self.config.heartbeat_interval_s
        self.at(self.clock.now + interval * self.rng.uniform(1.0, 1.3), "heartbeat", payload)

    def _worker_closed(self, payload: tuple[str, int]) -> None:
        name, conn = payload
        w = self.workers[name]
        if not w.up or conn != w.conn:
            return
        if w.hung:
            w.backlog.append(("worker_closed", payload))
            return
        self._log(f"{name} sees conn={conn} closed")
        w.conn = None
        w.registered = False
        self.at(self.clock.now + self.rng.uniform(0.0, 0.1), "worker_connect", (name, w.life))

    def _drain_end(self, payload: tuple[str, int]) -> None:
        name, life = payload
        w = self.workers[name]
        if life != w.life or not w.up:
            return
        if w.hung:
            w.backlog.append(("drain_end", payload))
            return
        for job_id, attempt in sorted(w.running.items()):
            self._send(w, m.HandBack(job_id=job_id, attempt=attempt, reason="drain timeout"))
        self._log(f"{name} drained, handed back {sorted(w.running)}, exits")
        w.running.clear()
        self._stop_worker(w, reset=False)

    # -- faults ------------------------------------------------------------------------------------

    def _fault(self, _payload: None) -> None:
        rng = self.rng
        kind = rng.choice(("cut", "crash", "hang", "hang_long", "drain", "restart"))
        w = self.workers[rng.choice(sorted(self.workers))]
        if kind == "cut" and w.up and w.conn is not None and not w.hung:
            self.net.cut(w.conn)
        elif kind == "crash" and w.up:
            self._stop_worker(w, reset=True)
            self.at(self.clock.now + rng.uniform(0.2, 6.0), "restart", w.name)
        elif kind in ("hang", "hang_long") and w.up and not w.hung:
            timeout = self.config.heartbeat_timeout_s
            length = rng.uniform(0.1, timeout * 0.8) if kind == "hang" else \
                rng.uniform(timeout * 1.2, timeout * 3)
            w.hung = True
            self.at(self.clock.now + length, "resume", (w.name, w.life))
        elif kind == "drain" and w.up and not w.hung and not w.draining:
            w.draining = True
            self._send(w, m.Draining())
            self.at(self.clock.now + rng.uniform(0, self.config.drain_timeout_s), "drain_end",
                    (w.name, w.life))
            self.at(self.clock.now + self.config.drain_timeout_s + rng.uniform(0.5, 4.0),
                    "restart", w.name)
        elif kind == "restart" and not w.up:
            self._restart(w.name)
        else:
            return
        self.faults[kind] += 1
        self._log(f"FAULT {kind} {w.name}")

    def _stop_worker(self, w: SimWorker, *, reset: bool) -> None:
        if w.conn is not None:
            self.net.worker_close(w.conn, reset=reset)
        w.up = False
        w.hung = False
        w.conn = None
        w.registered = False
        w.running.clear()
        w.outbox.clear()
        w.backlog.clear()
        w.life += 1

    def _restart(self, name: str | None) -> None:
        names = sorted(self.workers) if name is None else [name]
        for n in names:
            w = self.workers[n]
            if name is None and w.hung:
                self._resume((n, w.life))
            if w.up:
                continue
            w.up = True
            w.draining = False
            w.life += 1
            self._log(f"{n} restarts")
            self.at(self.clock.now + self.rng.uniform(0.01, 0.3), "worker_connect", (n, w.life))

    def _resume(self, payload: tuple[str, int]) -> None:
        name, life = payload
        w = self.workers[name]
        if life != w.life or not w.hung:
            return
        w.hung = False
        self._log(f"{name} resumes with {len(w.backlog)} queued events")
        backlog, w.backlog = w.backlog, []
        for kind, item in backlog:
            self._handlers[kind](item)

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

    def _log(self, line: str) -> None:
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
