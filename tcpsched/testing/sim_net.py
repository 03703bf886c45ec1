"""The simulated clock and network of the cluster simulation (`tcpsched.testing.sim`).

`SimClock` is the one clock every simulated party reads; it never goes back. `SimNetwork`
carries each message between the scheduler and a worker with a delay drawn from the run's seed,
keeping per-connection FIFO order per direction like TCP, and loses whatever is in flight when a
connection is cut. Delivery is an event on the simulation's heap, so the network owns no loop.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from tcpsched.testing.sim import Simulation


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

