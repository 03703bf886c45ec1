"""The simulated workers of the cluster simulation (`tcpsched.testing.sim`).

Each `SimWorker` runs the real worker core, `core/workerproto.WorkerProtocol`, the class
`tcpsched/worker.py` wraps: the protocol under test is the one that ships, not a copy of it.
`WorkerSide` is the simulation's shell around those cores, as `worker.py` is the real one: it
feeds each core its events off the simulation's heap (messages, closed connections, finished
jobs, its timer) and carries out its effects on the simulated network and clock. Jobs take only
simulated time. Timers fire a little late, never early, like a busy event loop's. A hung worker
(SIGSTOP) queues whatever reaches it and replays it on resume; a crash discards its core and
bumps the worker's `life`, so that events of an earlier life are ignored. A worker whose core
exits (drained, or refused) is restarted a little later, as a supervisor would.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core import workerproto as wp

if TYPE_CHECKING:
    from tcpsched.testing.sim import Simulation

TIMER_LATENESS = 0.3  # a timer fires up to this share of the heartbeat interval late


@attrs.define
class SimWorker:
    """One simulated worker process: its core (None while it is down) and its shell state."""

    name: str
    slots: int
    prefetch: int = 0  # assignments it holds beyond its slots (core/prefetch.py)
    up: bool = True
    hung: bool = False
    conn: int | None = None  # the current session's connection, which is its session number
    life: int = 0  # bumped on crash/restart so events of an earlier life are ignored
    proto: wp.WorkerProtocol | None = None
    tick_at: float | None = None  # the deadline the armed timer is for
    backlog: list[tuple[str, Any]] = attrs.field(factory=list)  # what arrived while hung

    @property
    def running(self) -> dict[str, int]:
        return self.proto.running if self.proto is not None else {}

    @property
    def draining(self) -> bool:
        return self.proto is not None and self.proto.draining


class WorkerSide:
    """Every simulated worker's shell, driven by events off the simulation's heap."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    # -- the core ---------------------------------------------------------------------------------

    def boot(self, w: SimWorker) -> None:
        """A new process: a fresh core, with one incarnation per life (a reconnect proves it
        is the same process, a restart is not)."""
        cfg = self.sim.config
        config = wp.WorkerConfig(
            name=w.name, slots=w.slots, prefetch=w.prefetch,
            coordinators=tuple(self.sim.coordinator_addresses),
            incarnation=f"{w.name}#{w.life}", drain_timeout_s=cfg.drain_timeout_s,
            result_flush_s=cfg.drain_timeout_s,
        )  # fmt: skip
        w.proto = wp.WorkerProtocol(config, random.Random(self.sim.rng.getrandbits(64)),
                                    self.sim.clock.now)
        w.tick_at = None
        self._arm(w)

    def boot_named(self, name: str) -> None:
        w = self.sim.workers[name]
        if w.up and w.proto is None:
            self.boot(w)

    def feed(self, w: SimWorker, event: wp.Event) -> None:
        assert w.proto is not None
        for effect in w.proto.step(event, self.sim.clock.now):
            self._carry_out(w, effect)
            if w.proto is None:  # it exited
                return
        self._arm(w)

    def _arm(self, w: SimWorker) -> None:
        assert w.proto is not None
        deadline = w.proto.next_deadline()
        if deadline == w.tick_at:
            return
        w.tick_at = deadline
        if deadline is not None:
            late = self.sim.rng.uniform(0, TIMER_LATENESS * self.sim.config.heartbeat_interval_s)
            self.sim.at(max(deadline, self.sim.clock.now) + late, "worker_tick",
                        (w.name, w.life, deadline))

    def _carry_out(self, w: SimWorker, effect: wp.Effect) -> None:
        sim = self.sim
        now = sim.clock.now
        if isinstance(effect, wp.Send):
            if w.conn is not None:
                sim.net.to_sched(w.conn, effect.msg)
        elif isinstance(effect, wp.StartJob):
            a = effect.assign
            sim.at(now + sim.rng.uniform(0.01, sim.config.job_s_max), "job_done",
                   (w.name, w.life, a.job_id, a.attempt, None))
        elif isinstance(effect, wp.KillJob):
            sim.at(now, "job_done", (w.name, w.life, effect.job_id, effect.attempt,
                                     effect.reason))
        elif isinstance(effect, wp.Dial):
            conn = sim.net.open(w.name, effect.address)
            sim.log(f"{w.name} dials {effect.address} conn={conn} "
                    f"running={sorted(w.running.items())}")
            sim.at(now, "worker_dialed", (w.name, w.life, conn, effect.address))
        elif isinstance(effect, wp.CloseSession):
            if w.conn is not None:
                sim.log(f"{w.name} leaves conn={w.conn}: {effect.reason}")
                sim.net.worker_close(w.conn, reset=False)
                w.conn = None
        elif isinstance(effect, wp.Exit):
            sim.log(f"{w.name} exits {effect.code}: {effect.reason}")
            self.stop(w, reset=False)
            sim.at(now + sim.rng.uniform(0.5, 4.0), "restart", w.name)

    def _live(self, w: SimWorker, life: int | None, kind: str, payload: Any) -> bool:
        """Whether an event is for this life of a running worker; a hung one queues it."""
        if not w.up or w.proto is None or (life is not None and life != w.life):
            return False
        if w.hung:
            w.backlog.append((kind, payload))
            return False
        return True

    # -- events off the heap -----------------------------------------------------------------------

    def tick(self, payload: tuple[str, int, float]) -> None:
        name, life, deadline = payload
        w = self.sim.workers[name]
        if w.tick_at == deadline and self._live(w, life, "worker_tick", payload):
            w.tick_at = None
            self.feed(w, wp.Tick())

    def dialed(self, payload: tuple[str, int, int, str]) -> None:
        name, life, conn, address = payload
        w = self.sim.workers[name]
        if self._live(w, life, "worker_dialed", payload):
            w.conn = conn
            self.feed(w, wp.SessionStarted(conn, address))

    def receive(self, payload: tuple[str, int, Any]) -> None:
        name, conn, msg = payload
        w = self.sim.workers[name]
        if conn == w.conn and self._live(w, None, "worker_receive", payload):
            if isinstance(msg, m.Refused):
                self.sim.log(f"{name} refused: {msg.reason}")
            self.feed(w, wp.Received(conn, msg))

    def closed(self, payload: tuple[str, int]) -> None:
        name, conn = payload
        w = self.sim.workers[name]
        if conn == w.conn and self._live(w, None, "worker_closed", payload):
            self.sim.log(f"{name} sees conn={conn} closed")
            w.conn = None
            self.feed(w, wp.SessionClosed(conn, "closed"))

    def job_done(self, payload: tuple[str, int, str, int, str | None]) -> None:
        name, life, job_id, attempt, killed = payload
        w = self.sim.workers[name]
        if not self._live(w, life, "job_done", payload):
            return
        if killed is not None:
            state = "cancelled" if killed == "cancelled" else "failed"
            error: str | None = killed
        elif self.sim.rng.random() < self.sim.config.failure_p:
            state, error = "failed", "exit code 1"
        else:
            state, error = "succeeded", None
        now = self.sim.clock.now
        self.feed(w, wp.JobFinished(m.Result(
            job_id=job_id, attempt=attempt, state=state,
            exit_code=0 if state == "succeeded" else 1, result=None, stdout="", stderr="",
            error=error, started_at=now, finished_at=now,
        )))  # fmt: skip

    def drain(self, w: SimWorker) -> None:
        """SIGTERM."""
        if self._live(w, w.life, "worker_drain", w.name):
            self.feed(w, wp.DrainRequested())

    def drain_replayed(self, name: str) -> None:
        self.drain(self.sim.workers[name])

    # -- processes ---------------------------------------------------------------------------

    def stop(self, w: SimWorker, *, reset: bool) -> None:
        if w.conn is not None:
            self.sim.net.worker_close(w.conn, reset=reset)
        w.up = False
        w.hung = False
        w.conn = None
        w.proto = None
        w.tick_at = None
        w.backlog.clear()
        w.life += 1

    def restart(self, name: str | None) -> None:
        names = sorted(self.sim.workers) if name is None else [name]
        for n in names:
            w = self.sim.workers[n]
            if name is None and w.hung:
                self.resume((n, w.life))
            if w.up:
                continue
            w.up = True
            w.life += 1
            self.sim.log(f"{n} restarts")
            self.boot(w)

    def resume(self, payload: tuple[str, int]) -> None:
        name, life = payload
        w = self.sim.workers[name]
        if life != w.life or not w.hung:
            return
        w.hung = False
        self.sim.log(f"{name} resumes with {len(w.backlog)} queued events")
        backlog, w.backlog = w.backlog, []
        for kind, item in backlog:
            self.sim.handle(kind, item)
