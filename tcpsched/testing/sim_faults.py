"""What goes wrong in the cluster simulation (`tcpsched.testing.sim`), drawn from the seed.

Theory of operation. During the fault phase a `Fault` event fires at random times (a Poisson
process of `faults_per_s`) and `Faults.inject` draws one fault:

* coordinators: crash (kill -9: unflushed writes may be lost; restarted later), pause
  (SIGSTOP, resumed later: everything that reached it is handled late, in a burst), a
  monotonic clock jump (every timer of that node late at once), a wall clock step (either way);
* the peer network: a partition, one of: isolate a coordinator (optionally from its clients and
  workers too), cut one direction, the asymmetric triangle (two coordinators cannot see each
  other, both see the third), or a random set of directions; healed later or replaced by the
  next partition; on top of the per-message loss, duplication and reordering of `PeerNetwork`;
* client and worker connections: resets;
* workers: crash, hang (shorter or longer than the heartbeat timeout), drain (SIGTERM),
  restart.

`stop` ends the phase: it heals everything, resumes and restarts every process and calms the
network, so the liveness bound is measured from one clear instant.

`AsymmetricPartition` is the issue's named scenario, scripted rather than drawn: node 3 leads,
then 3 and 2 lose sight of each other while both still reach 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcpsched.testing import sim_events as ev

if TYPE_CHECKING:
    from tcpsched.testing.sim import Simulation

FAULT_WEIGHTS = {
    "crash": 2.0, "pause": 1.5, "clock_jump": 1.0, "wall_jump": 0.5, "partition": 3.0,
    "heal": 1.0, "cut_conn": 1.0, "worker_crash": 1.0, "worker_hang": 1.0,
    "worker_drain": 0.7, "worker_cut": 1.0,
}  # fmt: skip


class Faults:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.cut_off: set[int] = set()  # coordinators their clients and workers cannot reach
        self.generation = 0
        self.active = True
        self.counts: dict[str, int] = {}
        self._kinds = list(FAULT_WEIGHTS)
        self._weights = list(FAULT_WEIGHTS.values())

    def is_cut_off(self, node_id: int) -> bool:
        return node_id in self.cut_off

    def inject(self) -> None:
        sim = self.sim
        rng = sim.rng
        kind = rng.choices(self._kinds, self._weights)[0]
        done = getattr(self, f"_{kind}")()
        if done:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            sim.log(f"FAULT {kind} {done}")

    # -- coordinators ---------------------------------------------------------------------------

    def _pick_coordinator(self, *, up: bool = True) -> Any:
        choices = [c for c in self.sim.coordinators.values() if c.up == up]
        return self.sim.rng.choice(choices) if choices else None

    def _crash(self) -> str:
        sim = self.sim
        coord = self._pick_coordinator()
        if coord is None:
            return ""
        lost = coord.crash()
        sim.schedule(sim.clock.now + sim.rng.uniform(0.3, 6.0), ev.NodeRestart(coord.node_id))
        return f"c{coord.node_id} (lost {lost} unflushed write(s))"

    def _pause(self) -> str:
        sim = self.sim
        coord = self._pick_coordinator()
        if coord is None or coord.paused:
            return ""
        coord.pause()
        timeout = sim.config.election_timeout_s
        length = sim.rng.choice((sim.rng.uniform(0.05, timeout * 0.8),
                                 sim.rng.uniform(timeout * 1.2, timeout * 4)))
        sim.schedule(sim.clock.now + length, ev.NodeResume(coord.node_id, coord.life))
        return f"c{coord.node_id} for {length:.2f}s"

    def _clock_jump(self) -> str:
        coord = self._pick_coordinator()
        if coord is None:
            return ""
        jump = self.sim.rng.uniform(0.2, 3.0 * self.sim.config.election_timeout_s)
        coord.jump_clock(jump)
        return f"c{coord.node_id} +{jump:.2f}s"

    def _wall_jump(self) -> str:
        coord = self._pick_coordinator()
        if coord is None:
            return ""
        step = self.sim.rng.uniform(-30.0, 30.0)
        coord.wall_offset_s += step
        return f"c{coord.node_id} {step:+.1f}s"

    # -- the peer network -------------------------------------------------------------------------

    def _partition(self) -> str:
        sim = self.sim
        rng = sim.rng
        ids = sorted(sim.coordinators)
        self._heal_now()
        shape = rng.choice(("isolate", "one_way", "triangle", "random"))
        pairs: list[tuple[int, int]] = []
        if shape == "isolate" or len(ids) < 3:
            k = rng.choice(ids)
            pairs = [p for j in ids if j != k for p in ((k, j), (j, k))]
            if rng.random() < 0.5:
                self.cut_off.add(k)
                sim.net.cut_node(k)
            shape = f"isolate c{k}" + (" (and its parties)" if k in self.cut_off else "")
        elif shape == "one_way":
            a, b = rng.sample(ids, 2)
            pairs = [(a, b)]
            shape = f"one way c{a}->c{b}"
        elif shape == "triangle":
            a, b = rng.sample(ids, 2)
            pairs = [(a, b), (b, a)]
            shape = f"triangle: c{a} and c{b} cannot see each other"
        else:
            pairs = [(a, b) for a in ids for b in ids if a != b and rng.random() < 0.3]
            shape = "random " + ",".join(f"{a}->{b}" for a, b in pairs)
        for a, b in pairs:
            sim.peer_net.block(a, b)
        self.generation += 1
        sim.schedule(sim.clock.now + rng.uniform(0.5, 8.0), ev.Heal(self.generation))
        return shape

    def _heal(self) -> str:
        if not self.sim.peer_net.blocked and not self.cut_off:
            return ""
        self._heal_now()
        return "everything"

    def _heal_now(self) -> None:
        self.sim.peer_net.heal()
        self.cut_off.clear()

    def heal(self, generation: int) -> None:
        if generation == self.generation and self.active:
            self._heal_now()
            self.sim.log("partition healed")

    def _cut_conn(self) -> str:
        sim = self.sim
        live = [c for c in sim.net.conns.values() if not c.cut and not c.party_closed
                and not c.node_closed]
        if not live:
            return ""
        c = sim.rng.choice(sorted(live, key=lambda c: c.conn))
        sim.net.cut(c.conn)
        return f"conn={c.conn} {c.party}<->c{c.node}"

    # -- workers ----------------------------------------------------------------------------------

    def _worker(self) -> Any:
        sim = self.sim
        return sim.workers[sim.rng.choice(sorted(sim.workers))]

    def _worker_crash(self) -> str:
        sim = self.sim
        w = self._worker()
        if not w.up:
            sim.worker_side.restart(w.name)
            return f"restart {w.name}"
        sim.worker_side.stop(w, reset=True)
        sim.at(sim.clock.now + sim.rng.uniform(0.2, 6.0), "restart", w.name)
        return w.name

    def _worker_hang(self) -> str:
        sim = self.sim
        w = self._worker()
        if not w.up or w.hung:
            return ""
        timeout = sim.config.heartbeat_timeout_s
        length = sim.rng.choice((sim.rng.uniform(0.1, timeout * 0.8),
                                 sim.rng.uniform(timeout * 1.2, timeout * 3)))
        w.hung = True
        sim.at(sim.clock.now + length, "resume", (w.name, w.life))
        return f"{w.name} for {length:.2f}s"

    def _worker_drain(self) -> str:
        sim = self.sim
        w = self._worker()
        if not w.up or w.hung or w.draining:
            return ""
        # SIGTERM: the worker core drains and exits; the shell restarts it later, as a
        # supervisor would.
        sim.worker_side.drain(w)
        return w.name

    def _worker_cut(self) -> str:
        sim = self.sim
        w = self._worker()
        if not w.up or w.conn is None or w.hung:
            return ""
        sim.net.cut(w.conn)
        return w.name

    # -- the end of the phase ----------------------------------------------------------------------

    def stop(self) -> None:
        """Faults stop: heal, resume and restart everything, calm the network."""
        sim = self.sim
        self.active = False
        self._heal_now()
        sim.peer_net.lossy = False
        for coord in sim.coordinators.values():
            if coord.up and coord.paused:
                coord.resume()
            if not coord.up:
                coord.start()
        sim.worker_side.restart(None)
        sim.log("faults stop: everything healed and restarted")


class AsymmetricPartition:
    """The issue's scenario: 3 leads; then 3 reaches 1, 2 reaches 1, 3 and 2 cannot see each
    other. Quorum intersection at 1 must keep one leader, and 1 refusing 2 while it hears live
    leader 3 must keep the group from flapping."""

    START_S = 4.0
    LENGTH_S = 20.0

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leader_at_start = 0
        self.epoch_at_start = 0
        self.elections_at_start = 0
        self.acked_at_start = 0
        self.report: dict[str, Any] = {}

    def schedule(self, start: float) -> float:
        """Arm the scenario; returns when its fault phase ends."""
        sim = self.sim
        sim.schedule(start + self.START_S, ev.Scripted("cut"))
        sim.schedule(start + self.START_S + self.LENGTH_S, ev.Scripted("heal"))
        return start + self.START_S + self.LENGTH_S + 0.001

    def cut(self) -> None:
        sim = self.sim
        leader = sim.leader()
        if leader is None or leader.node_id != 3:
            sim.fail(f"the scenario needs node 3 leading, but the leader is "
                     f"{leader.node_id if leader else 'nobody'}")
        assert leader is not None and leader.node is not None
        self.leader_at_start = 3
        self.epoch_at_start = leader.node.epoch
        self.elections_at_start = sim.checker.elections_won
        self.acked_at_start = len(sim.checker.acked)
        sim.peer_net.block(2, 3)
        sim.peer_net.block(3, 2)
        sim.log("SCENARIO 3 and 2 cannot see each other; both reach 1")

    def heal(self) -> None:
        sim = self.sim
        leader = sim.leader()
        self.report = {
            "leader_at_start": self.leader_at_start,
            "leader_at_end": leader.node_id if leader else 0,
            "epoch_at_start": self.epoch_at_start,
            "epoch_at_end": leader.node.epoch if leader and leader.node else 0,
            "elections_during": sim.checker.elections_won - self.elections_at_start,
            "acked_during": len(sim.checker.acked) - self.acked_at_start,
            "epochs_seen": {i: c.node.epoch for i, c in sim.coordinators.items()
                            if c.node is not None},
        }
        sim.peer_net.heal()
        sim.log("SCENARIO healed")
