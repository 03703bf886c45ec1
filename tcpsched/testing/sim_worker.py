"""The simulated workers of the cluster simulation (`tcpsched.testing.sim`).

`SimWorker` is one worker's state; `WorkerSide` plays the protocol of `tcpsched/worker.py` for
all of them: register with the attempts still running, heartbeat, keep each result in an outbox
until it is acknowledged, obey kill orders, hand work back on a drain. Jobs take only simulated
time. A hung worker (SIGSTOP) queues whatever reaches it and replays it on resume; a stop bumps
the worker's `life` so that timers of an earlier life are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m

if TYPE_CHECKING:
    from tcpsched.testing.sim import Simulation


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
    target: int = 0  # which coordinator (of the simulation's list) to dial next

    def refs(self) -> tuple[m.AttemptRef, ...]:
        return tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in sorted(self.running.items()))


class WorkerSide:
    """Every worker's side of the protocol, driven by events off the simulation's heap."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def send(self, worker: SimWorker, msg: Any) -> None:
        if worker.conn is not None:
            self.sim.net.to_sched(worker.conn, msg)

    def connect(self, payload: tuple[str, int]) -> None:
        name, life = payload
        w = self.sim.workers[name]
        if life != w.life or not w.up or w.conn is not None:
            return
        if w.hung:
            w.backlog.append(("worker_connect", payload))
            return
        addresses = self.sim.coordinator_addresses
        w.conn = self.sim.net.open(name, addresses[w.target % len(addresses)])
        w.registered = False
        self.sim.log(f"{name} dials conn={w.conn} running={sorted(w.running.items())}")
        # One incarnation per life: a reconnect proves it is the same process, a restart is not.
        self.send(w, m.Register(name=name, slots=w.slots, running=w.refs(),
                                 draining=w.draining, incarnation=f"{name}#{w.life}"))

    def receive(self, payload: tuple[str, int, Any]) -> None:
        name, conn, msg = payload
        w = self.sim.workers[name]
        if not w.up or conn != w.conn:
            return
        if w.hung:
            w.backlog.append(("worker_receive", payload))
            return
        if isinstance(msg, m.Registered):
            w.registered = True
            w.epoch_seen = max(w.epoch_seen, msg.epoch)
            for ref in msg.kill:
                self.kill(w, ref.job_id, ref.attempt, "stale attempt")
            for result in list(w.outbox.values()):
                self.send(w, result)
            self.sim.at(self.sim.clock.now, "heartbeat", (name, w.life, conn))
        elif isinstance(msg, m.Assign):
            self.assign(w, msg)
        elif isinstance(msg, m.Kill):
            self.kill(w, msg.job_id, msg.attempt, msg.reason)
        elif isinstance(msg, m.ResultAck):
            w.outbox.pop((msg.job_id, msg.attempt), None)
        elif isinstance(msg, m.Refused):
            # The name is still held by this worker's previous life (its close not yet seen):
            # a real worker exits 2 here and its supervisor restarts it; the simulation lets
            # it dial again when the connection closes.
            self.sim.log(f"{name} refused: {msg.reason}")

    def assign(self, w: SimWorker, msg: m.Assign) -> None:
        if msg.epoch < w.epoch_seen:
            return
        current = w.running.get(msg.job_id)
        if current is not None:
            if current >= msg.attempt:
                return
            del w.running[msg.job_id]  # superseded: its result would be stale
        if w.draining or len(w.running) >= w.slots:
            self.send(w, m.HandBack(job_id=msg.job_id, attempt=msg.attempt,
                                     reason="draining" if w.draining else "no free slot"))
            return
        w.running[msg.job_id] = msg.attempt
        duration = self.sim.rng.uniform(0.01, self.sim.config.job_s_max)
        self.sim.at(self.sim.clock.now + duration, "job_done",
                    (w.name, w.life, msg.job_id, msg.attempt))

    def kill(self, w: SimWorker, job_id: str, attempt: int, reason: str) -> None:
        if w.running.get(job_id) != attempt:
            return
        del w.running[job_id]
        self.finish(w, job_id, attempt, "cancelled" if reason == "cancelled" else "failed",
                     reason)

    def job_done(self, payload: tuple[str, int, str, int]) -> None:
        name, life, job_id, attempt = payload
        w = self.sim.workers[name]
        if life != w.life or w.running.get(job_id) != attempt:
            return
        if w.hung:
            w.backlog.append(("job_done", payload))
            return
        del w.running[job_id]
        failed = self.sim.rng.random() < self.sim.config.failure_p
        self.finish(w, job_id, attempt, "failed" if failed else "succeeded",
                     "exit code 1" if failed else None)

    def finish(self, w: SimWorker, job_id: str, attempt: int, state: str,
                error: str | None) -> None:
        now = self.sim.clock.now
        result = m.Result(job_id=job_id, attempt=attempt, state=state,
                          exit_code=0 if state == "succeeded" else 1, result=None, stdout="",
                          stderr="", error=error, started_at=now, finished_at=now)
        w.outbox[(job_id, attempt)] = result
        if w.registered:
            self.send(w, result)

    def heartbeat(self, payload: tuple[str, int, int]) -> None:
        name, life, conn = payload
        w = self.sim.workers[name]
        if life != w.life or conn != w.conn or not w.up:
            return
        if w.hung:
            w.backlog.append(("heartbeat", payload))
            return
        self.send(w, m.Heartbeat(running=w.refs()))
        # A busy event loop beats a little late, never early.
        interval = self.sim.config.heartbeat_interval_s
        self.sim.at(self.sim.clock.now + interval * self.sim.rng.uniform(1.0, 1.3), "heartbeat",
                    payload)

    def closed(self, payload: tuple[str, int]) -> None:
        name, conn = payload
        w = self.sim.workers[name]
        if not w.up or conn != w.conn:
            return
        if w.hung:
            w.backlog.append(("worker_closed", payload))
            return
        self.sim.log(f"{name} sees conn={conn} closed")
        if not w.registered:
            w.target += 1  # not the leader, or not up: try the next coordinator
        w.conn = None
        w.registered = False
        self.sim.at(self.sim.clock.now + self.sim.rng.uniform(0.0, 0.1), "worker_connect",
                    (name, w.life))

    def drain_end(self, payload: tuple[str, int]) -> None:
        name, life = payload
        w = self.sim.workers[name]
        if life != w.life or not w.up:
            return
        if w.hung:
            w.backlog.append(("drain_end", payload))
            return
        for job_id, attempt in sorted(w.running.items()):
            self.send(w, m.HandBack(job_id=job_id, attempt=attempt, reason="drain timeout"))
        self.sim.log(f"{name} drained, handed back {sorted(w.running)}, exits")
        w.running.clear()
        self.stop(w, reset=False)

    def stop(self, w: SimWorker, *, reset: bool) -> None:
        if w.conn is not None:
            self.sim.net.worker_close(w.conn, reset=reset)
        w.up = False
        w.hung = False
        w.conn = None
        w.registered = False
        w.running.clear()
        w.outbox.clear()
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
            w.draining = False
            w.life += 1
            self.sim.log(f"{n} restarts")
            self.sim.at(self.sim.clock.now + self.sim.rng.uniform(0.01, 0.3), "worker_connect",
                        (n, w.life))

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
