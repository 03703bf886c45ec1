"""One simulated coordinator process: the real `Node` core in a shell that acts like the runner.

Theory of operation. `SimCoordinator` does for one `core/node.Node` what `runtime/runner.py`
and `coordinator.py` do for the real one, on simulated time and a simulated disk:

* each event is fed at the node's own monotonic clock (the global clock plus an offset that
  only jumps forward: a clock jump makes every timer of the node late at once) with a wall
  clock beside it (which may step either way; only record times read it);
* journal effects go to the `SimDisk` buffer at once; `Send`/`Close` to clients and workers
  are held; `ToPeer` goes out at once. The end of the turn is an event a moment later (events
  arriving meanwhile join the turn: group commit): feed `EndOfTurn` (the turn's dispatch
  pass and Appends), carry out the held effects (the node released them: committed), flush,
  feed `Flushed(last seq)`, carry out reloads (`Reloaded` from the disk), then what they held.
  A crash before the end of the turn loses what was not flushed. With `background_sync`
  (SimConfig), as the real runner does with fsync "always": while the node does not
  `wants_flush`, the flush is a sync that ends a moment later (`NodeSynced`), then
  `Synced(durable seq)` is fed; what is written meanwhile waits for the next sync;
* one timer at `next_deadline()`, re-armed whenever it changes, firing a little late;
* a paused process (SIGSTOP) queues every event and replays them on resume;
* a restart builds the node from `SimDisk.recovered()`, as storage recovery does, and feeds it
  a first `Tick`, as `Coordinator.serve` does.

The simulation's checker is told of every entry written and every step taken.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from tcpsched.core.election import ElectionTiming
from tcpsched.core.events import Close, Closed, Connected, Journal, Received, Send, Tick
from tcpsched.core.node import (
    EndOfTurn,
    Flushed,
    Node,
    NodeConfig,
    PeerClosed,
    PeerReceived,
    Reload,
    Reloaded,
    Synced,
    ToPeer,
    Truncate,
    WriteCommit,
    WriteEntries,
    WritePromise,
)
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.runtime.journal_lines import decode_entry, encode_line
from tcpsched.runtime.replicated import decode_entries
from tcpsched.testing.sim_disk import SimDisk

if TYPE_CHECKING:
    from tcpsched.core.state import JobTable
    from tcpsched.testing.sim import Simulation

WALL_EPOCH_S = 1_700_000_000.0  # the simulated wall clock starts in 2023
TIMER_LATE_S_MAX = 0.002
TURN_S_MAX = 0.002  # how long after an event the loop's turn ends (fsync included)


def address_of(node_id: int) -> str:
    return f"sim:c{node_id}"


class SimCoordinator:
    def __init__(self, sim: Simulation, node_id: int, ids: list[int]) -> None:
        self.sim = sim
        self.node_id = node_id
        self.address = address_of(node_id)
        self.peers = {j: address_of(j) for j in ids if j != node_id}
        self.disk = SimDisk(group=bool(self.peers))
        self.node: Node | None = None
        self.up = False
        self.paused = False
        self.life = 0
        self.clock_offset_s = 0.0
        self.wall_offset_s = 0.0
        self.backlog: list[Any] = []
        self._held: list[Send | Close] = []
        self._dirty = False
        self._reloads: list[int] = []
        self._turn_scheduled = False
        self._syncing = False  # a background sync is in flight (`background_sync`)
        self._sync_again = False
        self._timer_at: float | None = None
        self.ticks_at_instant = 0
        self._last_tick_now = -1.0

    # -- clocks -------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.sim.clock.now + self.clock_offset_s

    @property
    def wall(self) -> float:
        return WALL_EPOCH_S + self.sim.clock.now + self.wall_offset_s

    def jump_clock(self, seconds: float) -> None:
        """The monotonic clock leaps forward (a long stall between two timers)."""
        self.clock_offset_s += seconds
        self._timer_at = None
        if self.up:
            self._rearm()

    # -- the process ------------------------------------------------------------------------------

    def start(self) -> None:
        sim = self.sim
        cfg = sim.config
        self.life += 1
        self.up = True
        self.paused = False
        self.backlog = []
        config = NodeConfig(
            node_id=self.node_id, address=self.address, peers=self.peers,
            timing=ElectionTiming(election_timeout_s=cfg.election_timeout_s,
                                  probe_timeout_s=cfg.probe_timeout_s,
                                  hold_down_s=cfg.hold_down_s, jitter_s=cfg.jitter_s),
            beat_s=cfg.peer_heartbeat_s,
        )  # fmt: skip
        self.node = Node(config, random.Random(sim.rng.getrandbits(64)), self.now,
                         self.disk.recovered(), make_scheduler=self._make_scheduler,
                         encode_line=lambda epoch, seq, record: encode_line(seq, record, epoch),
                         decode_line=decode_entry, decode_entries=decode_entries)
        sim.checker.node_started(self)
        self.feed(Tick())

    def _make_scheduler(self, table: JobTable, epoch: int, now: float, wall: float
                        ) -> Scheduler:
        cfg = self.sim.config
        return Scheduler(
            SchedulerConfig(node_id=self.node_id, address=self.address, epoch=epoch,
                            policy=cfg.policy, heartbeat_interval_s=cfg.heartbeat_interval_s,
                            heartbeat_timeout_s=cfg.heartbeat_timeout_s, retry_base_s=0.2,
                            retry_cap_s=5.0),
            random.Random(self.sim.rng.getrandbits(64)), now, table=table, wall=wall,
        )  # fmt: skip

    def crash(self) -> int:
        """kill -9: what was not flushed may be lost; every connection resets. Returns how
        many pending writes were lost."""
        sim = self.sim
        lost = self.disk.crash(sim.rng)
        self.up = False
        self.paused = False
        self.node = None
        self.backlog = []
        self._held = []
        self._dirty = False
        self._reloads = []
        self._turn_scheduled = False
        self._syncing = self._sync_again = False
        self._timer_at = None
        sim.net.cut_node(self.node_id)
        for peer in self.peers:
            sim.schedule(sim.clock.now + sim.config.net_delay_max_s,
                         sim.events.PeerDown(self.node_id, peer))
        return lost

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        backlog, self.backlog = self.backlog, []
        for event in backlog:
            if not self.up or self.paused:
                break
            self.sim.handle_event(event)

    def deliverable(self, event: Any) -> bool:
        """Whether the process takes `event` now; a paused one queues it."""
        if not self.up:
            return False
        if self.paused:
            self.backlog.append(event)
            return False
        return True

    # -- feeding the node ---------------------------------------------------------------------

    def feed(self, event: Any) -> None:
        assert self.node is not None
        self._carry(self.node.step(event, self.now, self.wall))
        self.sim.checker.after_step(self)
        wants = (self._held or self._dirty or self._reloads or self.node.wants_flush
                 or self.node.wants_turn)
        if wants and not self._turn_scheduled:
            self._turn_scheduled = True
            sim = self.sim
            sim.schedule(sim.clock.now + sim.rng.uniform(0.0, TURN_S_MAX),
                         sim.events.NodeEndOfTurn(self.node_id, self.life))
        self._rearm()

    def _step(self, event: Any) -> None:
        assert self.node is not None
        self._carry(self.node.step(event, self.now, self.wall))
        self.sim.checker.after_step(self)

    def _carry(self, effects: list[Any]) -> None:
        sim = self.sim
        for effect in effects:
            kind = type(effect)
            if kind is Send or kind is Close:
                self._held.append(effect)
            elif kind is ToPeer:
                sim.peer_net.send(self.node_id, effect.peer, effect.msg)
            elif kind is WriteEntries:
                sim.checker.entries_written(self, effect.entries)
                self.disk.write_entries(effect.entries)
                self._dirty = True
            elif kind is WritePromise:
                sim.checker.promise_written(self, effect.epoch)
                self.disk.write_promise(effect.epoch, effect.leader)
                self._dirty = True
            elif kind is WriteCommit:
                self.disk.write_commit(effect.seq)
            elif kind is Truncate:
                sim.checker.truncated(self, effect.seq)
                self.disk.truncate_after(effect.seq)
            elif kind is Reload:
                self._reloads.append(effect.seq)
            elif kind is Journal:
                raise AssertionError(f"node {self.node_id} passed a raw record through")
            else:
                raise TypeError(f"unknown effect {effect!r}")

    def end_of_turn(self, life: int) -> None:
        """The runner's end of turn: replicate, flush, report it, reload, then send."""
        if life != self.life or not self._turn_scheduled:
            return
        assert self.node is not None
        self._turn_scheduled = False
        self._step(EndOfTurn())
        self._deliver_held()  # the node's sends are committed: out before our flush (runner)
        if self._dirty and self.sim.config.background_sync and not self.node.wants_flush:
            self._dirty = False
            self._begin_sync()
        elif self._dirty or self.node.wants_flush:
            self.disk.flush()
            self._dirty = False
            self._step(Flushed(self.disk.last_seq))
        while self._reloads and self.up:
            seq = self._reloads.pop(0)
            self._step(Reloaded(self.disk.table_upto(seq), seq))
        self._deliver_held()
        if self._dirty or self._held:
            self._turn_scheduled = True
            self.sim.schedule(self.sim.clock.now, self.sim.events.NodeEndOfTurn(self.node_id,
                                                                                self.life))
        self._rearm()

    def _begin_sync(self) -> None:
        if self._syncing:
            self._sync_again = True  # its end begins the next one
            return
        self._syncing = True
        sim = self.sim
        sim.schedule(sim.clock.now + sim.rng.uniform(0.0, sim.config.sync_s_max),
                     sim.events.NodeSynced(self.node_id, self.life, self.disk.sync_target()))

    def synced(self, life: int, target: int) -> None:
        """The background sync that began at `target` writes ended."""
        if life != self.life:
            return
        self._syncing = False
        self.disk.sync_done(target)
        again, self._sync_again = self._sync_again, False
        if again:
            self._begin_sync()
        self.feed(Synced(self.disk.durable_seq))

    def _deliver_held(self) -> None:
        held, self._held = self._held, []
        net = self.sim.net
        for effect in held:
            c = net.conns.get(effect.conn)
            if c is None or c.node != self.node_id or c.node_life != self.life:
                continue
            if isinstance(effect, Send):
                net.to_party(effect.conn, effect.msg)
            else:
                self.sim.log(f"c{self.node_id} closes conn={effect.conn} ({c.party}): "
                             f"{effect.reason}")
                net.node_close(effect.conn)

    def _rearm(self) -> None:
        assert self.node is not None
        deadline = self.node.next_deadline()
        if deadline == self._timer_at:
            return
        self._timer_at = deadline
        if deadline is not None:
            sim = self.sim
            at = max(deadline - self.clock_offset_s, sim.clock.now)
            sim.schedule(at + sim.rng.uniform(0.0, TIMER_LATE_S_MAX),
                         sim.events.NodeTimer(self.node_id, self.life, deadline))

    def timer(self, life: int, deadline: float) -> None:
        if life != self.life or deadline != self._timer_at:
            return
        self._timer_at = None
        now = self.now
        self.ticks_at_instant = self.ticks_at_instant + 1 if now == self._last_tick_now else 0
        self._last_tick_now = now
        if self.ticks_at_instant > self.sim.config.ticks_at_one_instant_max:
            self.sim.fail(f"busy loop: coordinator {self.node_id} asks for a timer at "
                          f"{deadline} again and again at {now}")
        self.feed(Tick())

    # -- what the network brings ------------------------------------------------------------------

    def peer_received(self, src: int, msg: Any) -> None:
        self.feed(PeerReceived(src, msg))

    def peer_closed(self, src: int) -> None:
        self.feed(PeerClosed(src))

    def connected(self, conn: int) -> None:
        c = self.sim.net.conns.get(conn)
        if c is None or c.node_life != self.life or c.cut or c.party_closed or c.node_closed:
            return  # the dial failed before the handshake finished; the party sees it closed
        c.node_knows = True
        self.feed(Connected(conn, "worker" if c.is_worker else "client", c.party,
                            f"sim:{c.party}"))

    def received(self, conn: int, msg: Any) -> None:
        c = self.sim.net.conns.get(conn)
        if (c is None or c.node_life != self.life or not c.node_knows or c.node_closed
                or c.cut):
            return
        self.feed(Received(conn, msg))

    def closed(self, conn: int) -> None:
        c = self.sim.net.conns.get(conn)
        if c is None or c.node_told or c.node_life != self.life:
            return
        c.node_told = True
        c.node_closed = True
        if c.node_knows:
            self.feed(Closed(conn, "closed"))
