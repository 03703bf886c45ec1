"""The simulated clock and network of the cluster simulation (`tcpsched.testing.sim`).

Theory of operation. `SimClock` is the one global clock; it never goes back (each coordinator
reads it through its own offset, which only ever jumps forward: `sim_coordinator`).

Two kinds of link, because the real system has two:

* `SimNetwork`: client and worker connections to one coordinator. They are TCP-like: FIFO per
  direction (each delivery is scheduled no earlier than the one before it), whatever is in
  flight is lost when a connection is cut, and a cut is seen as `Closed` by both ends. A dial
  to a coordinator that is down, paused past the dial or cut off from its parties fails: the
  dialler sees the connection close.
* `PeerNetwork`: coordinator-to-coordinator messages, one *directed* link per ordered pair
  (each coordinator sends on the connection it dialled, so reachability differs by direction
  and a partition may be asymmetric). Real peer links are TCP, but a reconnect loses whatever
  was in flight and the node must never depend on what a lost connection carried; so the
  simulation is harsher than TCP on purpose: each message is delayed independently (which
  reorders), and may be lost or duplicated. Cutting a direction drops what is in flight on it
  and tells the receiver `PeerClosed`, as the real shell does when the connection it hears a
  peer on closes.

Delivery is an event on the simulation's heap, so the network owns no loop.
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


# -- client and worker connections ----------------------------------------------------------------


@attrs.define
class SimConn:
    conn: int
    party: str  # the worker's or client's name
    node: int  # the coordinator it dialled
    node_life: int  # which life of that coordinator: a crash ends every connection to it
    is_worker: bool = True
    cut: bool = False  # reset: whatever is in flight is lost, both ways
    node_closed: bool = False  # the coordinator closed it (or saw it close)
    party_closed: bool = False
    node_told: bool = False  # the coordinator got its Closed event (exactly once)
    node_knows: bool = False  # the coordinator got its Connected event
    to_node_at: float = 0.0  # delivery time of the last message, for FIFO order
    to_party_at: float = 0.0

    @property
    def worker(self) -> str:
        """The party's name (the worker side calls it so)."""
        return self.party


class SimNetwork:
    """Connections between coordinators and their clients and workers."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.conns: dict[int, SimConn] = {}
        self._ids = itertools.count(1)

    def _delay(self) -> float:
        cfg = self.sim.config
        return self.sim.rng.uniform(cfg.net_delay_min_s, cfg.net_delay_max_s)

    def open(self, party: str, address: str, *, is_worker: bool = True) -> int:
        """Dial the coordinator at `address`; returns the connection's number at once (the
        dialler learns of a failure as a close)."""
        sim = self.sim
        node = sim.node_at(address)
        conn = next(self._ids)
        c = self.conns[conn] = SimConn(conn, party, node.node_id, node.life, is_worker)
        c.to_node_at = sim.clock.now + self._delay()
        if node.up and not sim.faults.is_cut_off(node.node_id):
            sim.schedule(c.to_node_at, sim.events.NodeConnected(conn))
        else:
            self.cut(conn)
        return conn

    def to_sched(self, conn: int, msg: Any) -> None:
        """The party sends to its coordinator."""
        c = self.conns.get(conn)
        if c is None or c.cut or c.party_closed:  # None: long closed, and forgotten
            return
        c.to_node_at = max(c.to_node_at, self.sim.clock.now + self._delay())
        self.sim.schedule(c.to_node_at, self.sim.events.NodeReceive(conn, msg))

    def to_party(self, conn: int, msg: Any) -> None:
        """The coordinator sends to the party."""
        c = self.conns.get(conn)
        if c is None or c.cut or c.node_closed:
            return
        c.to_party_at = max(c.to_party_at, self.sim.clock.now + self._delay())
        self._to_party(c, c.to_party_at, msg)

    def _to_party(self, c: SimConn, t: float, msg: Any) -> None:
        if c.is_worker:
            self.sim.at(t, "worker_receive", (c.party, c.conn, msg))
        else:
            self.sim.schedule(t, self.sim.events.ClientReceive(c.party, c.conn, msg))

    def _party_closed(self, c: SimConn, t: float) -> None:
        if c.is_worker:
            self.sim.at(t, "worker_closed", (c.party, c.conn))
        else:
            self.sim.schedule(t, self.sim.events.ClientClosed(c.party, c.conn))

    def node_close(self, conn: int) -> None:
        """The coordinator closes: what it sent still arrives (flush), then the party sees
        EOF; the coordinator's own receive loop ends with `Closed`."""
        c = self.conns.get(conn)
        if c is None or c.node_closed:
            return
        c.node_closed = True
        if not c.cut:
            c.to_party_at = max(c.to_party_at, self.sim.clock.now + self._delay())
            self._party_closed(c, c.to_party_at)
        self.sim.schedule(self.sim.clock.now, self.sim.events.NodeClosed(conn))

    def worker_close(self, conn: int, *, reset: bool) -> None:
        """The party closes (gracefully, or by dying: a reset)."""
        c = self.conns.get(conn)
        if c is None or c.party_closed:
            return
        c.party_closed = True
        c.cut = c.cut or reset
        c.to_node_at = max(c.to_node_at, self.sim.clock.now + self._delay())
        self.sim.schedule(c.to_node_at, self.sim.events.NodeClosed(conn))

    def cut(self, conn: int) -> None:
        """A network fault resets the connection: both sides see it close, in-flight is lost."""
        c = self.conns.get(conn)
        if c is None or c.cut:
            return
        c.cut = True
        now = self.sim.clock.now
        self.sim.schedule(now + self._delay(), self.sim.events.NodeClosed(conn))
        if not c.party_closed:
            self._party_closed(c, now + self._delay())

    def cut_node(self, node_id: int) -> None:
        """Every connection to `node_id` is reset (it crashed, or was cut off)."""
        for c in list(self.conns.values()):
            if c.node == node_id and not c.cut and not (c.node_closed and c.party_closed):
                self.cut(c.conn)

    def forget_closed(self) -> None:
        """Drop connections both ends are done with, so the map stays small."""
        done = [k for k, c in self.conns.items()
                if (c.cut or (c.node_closed and c.party_closed)) and c.node_told]
        for k in done:
            del self.conns[k]


# -- coordinator-to-coordinator links -------------------------------------------------------------


class PeerNetwork:
    """Directed links between coordinators: delay (hence reordering), loss, duplication, cuts."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.blocked: set[tuple[int, int]] = set()  # (src, dst): src's messages do not reach dst
        self.lossy = True  # off once faults stop: the liveness bound is measured on a calm net
        self.sent = 0
        self.lost = 0
        self.duplicated = 0

    def send(self, src: int, dst: int, msg: Any) -> None:
        sim = self.sim
        cfg = sim.config
        self.sent += 1
        if (src, dst) in self.blocked:
            self.lost += 1
            return
        rng = sim.rng
        copies = 1
        if self.lossy:
            if rng.random() < cfg.peer_loss_p:
                self.lost += 1
                return
            if rng.random() < cfg.peer_dup_p:
                copies = 2
                self.duplicated += 1
        for _ in range(copies):
            delay = rng.uniform(cfg.net_delay_min_s, cfg.net_delay_max_s)
            if self.lossy and rng.random() < cfg.peer_slow_p:
                delay += rng.uniform(0.0, cfg.peer_slow_s_max)  # overtaken by later messages
            sim.schedule(sim.clock.now + delay, sim.events.PeerDeliver(src, dst, msg))

    def block(self, src: int, dst: int) -> None:
        """Cut the direction src -> dst: dst's connection from src closes."""
        if (src, dst) in self.blocked:
            return
        self.blocked.add((src, dst))
        sim = self.sim
        sim.schedule(sim.clock.now + sim.config.net_delay_max_s, sim.events.PeerDown(src, dst))

    def heal(self) -> None:
        self.blocked.clear()

    def can_deliver(self, src: int, dst: int) -> bool:
        return (src, dst) not in self.blocked
