"""A seeded simulation of a whole cluster: N coordinator cores, workers and clients, with faults.

Theory of operation (TigerBeetle's VOPR, etcd's rafttest). Every process runs its real core:
each coordinator is a `core/node.Node` (election, replication, commit, and the `Scheduler`
while it leads) in a shell that behaves like the runner (`sim_coordinator`), on a simulated
disk that loses what was not flushed (`sim_disk`); clients drive the real session core
(`sim_client`); workers speak the worker protocol (`sim_worker`). Everything happens on one
clock and one heap of typed events (`sim_events`): message deliveries, timers, the ends of
loop turns, faults. `sim_net` carries client and worker connections like TCP and peer messages
harsher than TCP (loss, duplication, reordering, one-way cuts).

A run has two phases. The fault phase lasts `steps` events (one step = one event off the heap);
faults are drawn from the seed (`sim_faults`) while clients submit jobs. Then faults stop:
everything heals and restarts, and within `leader_bound_s` a leader must be elected and within
`settle_s` every acknowledged job must finish. After every step the checker (`sim_check`) checks
the safety invariants incrementally, and every `full_check_every` steps (and at the end) in
full. One seed is one exact run: a failure names the command that replays it.

    python -m tcpsched.testing.sim --seed 17 [--verbose]
    python -m tcpsched.testing.sim --seeds 200           # seeds 0..199
    python -m tcpsched.testing.sim --scenario asymmetric --seed 3
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tcpsched.testing import sim_events as ev
from tcpsched.testing.sim_check import Checker
from tcpsched.testing.sim_client import SimClient
from tcpsched.testing.sim_coordinator import SimCoordinator, address_of
from tcpsched.testing.sim_faults import AsymmetricPartition, Faults
from tcpsched.testing.sim_net import PeerNetwork, SimClock, SimConn, SimNetwork
from tcpsched.testing.sim_schedules import add_schedules, check_schedules
from tcpsched.testing.sim_worker import SimWorker, WorkerSide

__all__ = [
    "InvariantViolation", "SimClock", "SimConfig", "SimConn", "SimNetwork", "SimWorker",
    "Simulation", "WorkerSide", "main", "run_seed",
]

TRACE_LINES = 60
SCENARIOS = ("random", "asymmetric")


class InvariantViolation(AssertionError):
    """The cluster broke a promise; the message names the seed and the replay command."""


@attrs.frozen
class SimConfig:
    coordinators: int = 3
    workers: int = 3
    slots_max: int = 3
    # Worker i holds i % (prefetch_max + 1) assignments beyond its slots (core/prefetch.py);
    # 0 keeps every seed's run as it was before prefetch existed.
    prefetch_max: int = 0
    # Leaders fsync beside the loop (runtime/syncer.py, `Synced`); False keeps every seed's
    # run as it was before.
    background_sync: bool = False
    sync_s_max: float = 0.05  # how long a background fsync takes, at most (a slow disk)
    clients: int = 2
    jobs: int = 60  # submitted in batches during the fault phase, at most this many
    steps: int = 2000  # events in the fault phase
    settle_s: float = 300.0  # after faults stop, how long every job has to finish
    leader_bound_s: float = 15.0  # after faults stop, how long until a leader is elected
    faults_per_s: float = 1.5
    submit_every_s: float = 0.4  # mean time between a client's submits
    net_delay_min_s: float = 0.0005
    net_delay_max_s: float = 0.02
    peer_loss_p: float = 0.02
    peer_dup_p: float = 0.02
    peer_slow_p: float = 0.03
    peer_slow_s_max: float = 0.3
    job_s_max: float = 3.0
    failure_p: float = 0.2
    retries_max: int = 2
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    drain_timeout_s: float = 1.0
    election_timeout_s: float = 1.0
    probe_timeout_s: float = 0.15
    hold_down_s: float = 3.0
    jitter_s: float = 0.1
    peer_heartbeat_s: float = 0.1
    policy: str = "round-robin"
    request_timeout_s: float = 5.0
    resend_acked_p: float = 0.1
    status_p: float = 0.3
    full_check_every: int = 250
    ticks_at_one_instant_max: int = 1000
    scenario: str = "random"
    schedules: int = 0  # schedules added at the start (sim_schedules.py), firing throughout


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.config = cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.events = ev
        self.net = SimNetwork(self)
        self.peer_net = PeerNetwork(self)
        self.checker = Checker(self)
        self.faults = Faults(self)
        self.trace: collections.deque[str] = collections.deque(maxlen=TRACE_LINES)
        self.verbose = False
        ids = list(range(1, cfg.coordinators + 1))
        self.coordinators = {i: SimCoordinator(self, i, ids) for i in ids}
        self._by_address = {address_of(i): c for i, c in self.coordinators.items()}
        self.coordinator_addresses = [address_of(i) for i in ids]
        self.workers = {
            # No draw for the lookahead: a seed's other draws stay as they were.
            f"w{i}": SimWorker(f"w{i}", self.rng.randint(1, cfg.slots_max),
                               prefetch=i % (cfg.prefetch_max + 1))
            for i in range(1, cfg.workers + 1)
        }
        self.clients = {f"cl{i}": SimClient(self, f"cl{i}", self.coordinator_addresses)
                        for i in range(1, cfg.clients + 1)}
        self.steps = 0
        self.in_fault_phase = True
        self.scenario = AsymmetricPartition(self) if cfg.scenario == "asymmetric" else None
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self.worker_side = ws = WorkerSide(self)
        self._worker_handlers: dict[str, Callable[[Any], None]] = {
            "worker_receive": ws.receive, "worker_closed": ws.closed, "worker_tick": ws.tick,
            "worker_dialed": ws.dialed, "worker_boot": ws.boot_named,
            "worker_drain": ws.drain_replayed, "job_done": ws.job_done, "restart": ws.restart,
            "resume": ws.resume,
        }  # fmt: skip
        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.NodeTimer: self._node_timer, ev.NodeEndOfTurn: self._node_end_of_turn,
            ev.NodeSynced: self._node_synced,
            ev.NodeRestart: self._node_restart, ev.NodeResume: self._node_resume,
            ev.PeerDeliver: self._peer_deliver, ev.PeerDown: self._peer_down,
            ev.NodeConnected: self._node_conn, ev.NodeReceive: self._node_conn,
            ev.NodeClosed: self._node_conn, ev.ClientSubmit: self._client_submit,
            ev.ClientReceive: self._client_event, ev.ClientClosed: self._client_event,
            ev.ClientTimeout: self._client_event, ev.ClientRetry: self._client_event,
            ev.Fault: self._fault, ev.Heal: lambda e: self.faults.heal(e.generation),
            ev.Scripted: lambda e: getattr(self.scenario, e.action)(),
            ev.WorkerEvent: lambda e: self._worker_handlers[e.kind](e.payload),
        }  # fmt: skip

    # -- the heap -------------------------------------------------------------------------------

    def schedule(self, t: float, event: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), event))

    def at(self, t: float, kind: str, payload: Any = None) -> None:
        """Schedule a worker-side event by kind (the interface `sim_worker` uses)."""
        self.schedule(t, ev.WorkerEvent(kind, payload))

    def handle(self, kind: str, payload: Any) -> None:
        """Run a worker-side event now (a resumed worker replays what it queued)."""
        self._worker_handlers[kind](payload)

    def handle_event(self, event: Any) -> None:
        self._handlers[type(event)](event)

    def node_at(self, address: str) -> SimCoordinator:
        return self._by_address[address]

    def leader(self) -> SimCoordinator | None:
        """The leader of the highest epoch among the nodes that believe they lead."""
        leaders = [c for c in self.coordinators.values()
                   if c.up and c.node is not None and c.node.is_leader]
        return max(leaders, key=lambda c: c.node.epoch if c.node else 0, default=None)

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.config
        rng = self.rng
        start = self.clock.now
        for coord in self.coordinators.values():
            self.schedule(start + rng.uniform(0.0, 0.3), ev.NodeRestart(coord.node_id))
        for worker in self.workers.values():
            self.at(start + rng.uniform(0.2, 1.0), "worker_boot", worker.name)
        for client in self.clients.values():
            self.schedule(start + rng.uniform(0.5, 2.0), ev.ClientSubmit(client.name))
        if cfg.schedules:
            add_schedules(self, cfg.schedules)
        fault_until = float("inf")
        if self.scenario is not None:
            fault_until = self.scenario.schedule(start)
        elif cfg.faults_per_s > 0:
            self.schedule(start + 2.0 + rng.expovariate(cfg.faults_per_s), ev.Fault())
        while self._heap and (self.steps < cfg.steps if self.scenario is None
                              else self.clock.now < fault_until):
            self._step()
        self.in_fault_phase = False
        faults_end = self.clock.now
        self.faults.stop()
        leader_at = None
        deadline = faults_end + cfg.settle_s
        while self._heap and self.clock.now < deadline:
            if leader_at is None and self.leader() is not None:
                leader_at = self.clock.now
            if self.steps % 20 == 0 and self._settled():
                break
            self._step()
        self.checker.full_check()
        self._check_liveness(faults_end, leader_at)
        if cfg.schedules:
            check_schedules(self)
        return self._summary(start, faults_end, leader_at)

    def _step(self) -> None:
        t, _, event = heapq.heappop(self._heap)
        self.clock.advance_to(t)
        self.steps += 1
        self.handle_event(event)
        if self.steps % self.config.full_check_every == 0:
            self.checker.full_check()
            self.net.forget_closed()

    def _settled(self) -> bool:
        leader = self.leader()
        if leader is None or leader.node is None:
            return False
        if any(not c.idle for c in self.clients.values()):
            return False
        jobs = leader.node.table.jobs
        if not all((job := jobs.get(j)) is not None and job.state.is_terminal
                   for j in self.checker.acked):
            return False
        commit = leader.node.log.commit_seq
        return all(c.node is not None and c.node.applied_seq >= commit
                   for c in self.coordinators.values())

    def _check_liveness(self, faults_end: float, leader_at: float | None) -> None:
        cfg = self.config
        if leader_at is None or leader_at - faults_end > cfg.leader_bound_s:
            self.fail(f"no leader elected within {cfg.leader_bound_s}s after faults stopped"
                      + (f" (took {leader_at - faults_end:.2f}s)" if leader_at else ""))
        leader = self.leader()
        if leader is None or leader.node is None:
            self.fail("no leader at the end")
            return
        busy = [c.name for c in self.clients.values() if not c.idle]
        if busy:
            self.fail(f"client(s) {busy} still wait for an answer {cfg.settle_s}s after "
                      "faults stopped")
        if len(self.checker.acked) != self.checker.jobs_submitted:
            self.fail(f"{self.checker.jobs_submitted} jobs submitted, "
                      f"{len(self.checker.acked)} acknowledged")
        jobs = leader.node.table.jobs
        stuck = sorted(j for j in self.checker.acked
                       if (job := jobs.get(j)) is None or not job.state.is_terminal)
        if stuck:
            job = jobs.get(stuck[0])
            self.fail(f"{len(stuck)} job(s) never reached a terminal state within "
                      f"{cfg.settle_s}s after faults stopped, e.g. {stuck[0]} "
                      f"{job.state.value if job else 'missing'} "
                      f"worker={job.worker if job else None}")
        behind = [c.node_id for c in self.coordinators.values()
                  if c.node is None or c.node.applied_seq < leader.node.log.commit_seq]
        if behind:
            self.fail(f"coordinator(s) {behind} never caught up with leader {leader.node_id}")

    def _summary(self, start: float, faults_end: float, leader_at: float | None
                 ) -> dict[str, Any]:
        leader = self.leader()
        assert leader is not None and leader.node is not None
        t = leader.node.table.statistics()
        summary: dict[str, Any] = {
            "seed": self.seed, "jobs": len(self.checker.acked), "steps": self.steps,
            "sim_seconds": round(self.clock.now - start, 3),
            "fault_phase_s": round(faults_end - start, 3),
            "leader_after_s": round((leader_at or faults_end) - faults_end, 3),
            "leader": leader.node_id, "epoch": leader.node.epoch,
            "elections": self.checker.elections_won,
            "commit_seq": leader.node.log.commit_seq,
            "succeeded": t.succeeded, "failed": t.failed, "cancelled": t.cancelled,
            "reassigned": t.reassigned, "retried": t.retried,
            "peer_sent": self.peer_net.sent, "peer_lost": self.peer_net.lost,
            "faults": dict(sorted(self.faults.counts.items())),
        }
        if self.scenario is not None:
            summary["scenario"] = self.scenario.report
        return summary

    # -- handlers ---------------------------------------------------------------------------------

    def _node_timer(self, e: ev.NodeTimer) -> None:
        coord = self.coordinators[e.node]
        if coord.deliverable(e):
            coord.timer(e.life, e.deadline)

    def _node_end_of_turn(self, e: ev.NodeEndOfTurn) -> None:
        coord = self.coordinators[e.node]
        if coord.deliverable(e):
            coord.end_of_turn(e.life)

    def _node_synced(self, e: ev.NodeSynced) -> None:
        coord = self.coordinators[e.node]
        if coord.deliverable(e):
            coord.synced(e.life, e.target)

    def _node_restart(self, e: ev.NodeRestart) -> None:
        coord = self.coordinators[e.node]
        if not coord.up:
            self.log(f"c{e.node} starts")
            coord.start()

    def _node_resume(self, e: ev.NodeResume) -> None:
        coord = self.coordinators[e.node]
        if coord.up and coord.life == e.life and coord.paused:
            self.log(f"c{e.node} resumes with {len(coord.backlog)} queued events")
            coord.resume()

    def _peer_deliver(self, e: ev.PeerDeliver) -> None:
        coord = self.coordinators[e.dst]
        if self.peer_net.can_deliver(e.src, e.dst) and coord.deliverable(e):
            coord.peer_received(e.src, e.msg)

    def _peer_down(self, e: ev.PeerDown) -> None:
        coord = self.coordinators[e.dst]
        if coord.deliverable(e):
            coord.peer_closed(e.src)

    def _node_conn(self, e: ev.NodeConnected | ev.NodeReceive | ev.NodeClosed) -> None:
        c = self.net.conns.get(e.conn)
        if c is None:
            return
        coord = self.coordinators[c.node]
        if not coord.deliverable(e):
            return
        if isinstance(e, ev.NodeConnected):
            coord.connected(e.conn)
        elif isinstance(e, ev.NodeReceive):
            coord.received(e.conn, e.msg)
        else:
            coord.closed(e.conn)

    def _client_submit(self, e: ev.ClientSubmit) -> None:
        cfg = self.config
        left = cfg.jobs - self.checker.jobs_submitted
        if not self.in_fault_phase or left <= 0:
            return
        self.clients[e.client].submit(min(left, self.rng.randint(1, 5)))
        self.schedule(self.clock.now + self.rng.expovariate(1.0 / cfg.submit_every_s), e)

    def _client_event(self, e: Any) -> None:
        client = self.clients[e.client]
        if isinstance(e, ev.ClientReceive):
            client.received(e.conn, e.msg)
        elif isinstance(e, ev.ClientClosed):
            client.closed(e.conn)
        elif isinstance(e, ev.ClientTimeout):
            client.timeout(e.req_id)
        else:
            client.retry()

    def _fault(self, _e: ev.Fault) -> None:
        if not self.in_fault_phase:
            return
        self.faults.inject()
        self.schedule(self.clock.now + self.rng.expovariate(self.config.faults_per_s),
                      ev.Fault())

    # -- reporting --------------------------------------------------------------------------------

    def log(self, line: str) -> None:
        """Keep a line for the trace that a failure prints."""
        text = f"t={self.clock.now:.4f} {line}"
        self.trace.append(text)
        if self.verbose:
            print(text)

    def fail(self, problem: str) -> None:
        trace = "\n  ".join(self.trace)
        scenario = "" if self.config.scenario == "random" else \
            f" --scenario {self.config.scenario}"
        raise InvariantViolation(
            f"seed {self.seed}: {problem}\n"
            f"replay: python -m tcpsched.testing.sim --seed {self.seed}{scenario}"
            f"{_config_flags(self.config)} --verbose\n"
            f"last events:\n  {trace}"
        )


NAMED_FLAGS = ("steps", "jobs", "coordinators", "workers", "slots_max", "faults_per_s")


def _config_flags(config: SimConfig) -> str:
    """The flags that reproduce `config` where it differs from the defaults (`--set` for the
    settings without a flag of their own), so the replay command is exact."""
    defaults = SimConfig()
    flags = []
    for field in attrs.fields(SimConfig):
        name = field.name
        value = getattr(config, name)
        if name == "scenario" or value == getattr(defaults, name):
            continue
        if name in NAMED_FLAGS:
            flags.append(f" --{name.replace('_', '-')} {value}")
        else:
            flags.append(f" --set {name}={value}")
    return "".join(flags)


def _with_settings(config: SimConfig, settings: list[str]) -> SimConfig:
    """`config` with `name=value` settings applied (values parsed by the field's type)."""
    changes: dict[str, Any] = {}
    defaults = SimConfig()
    for setting in settings:
        name, _, text = setting.partition("=")
        if not hasattr(defaults, name):
            raise SystemExit(f"--set: no simulation setting {name!r}")
        changes[name] = type(getattr(defaults, name))(text)
    return attrs.evolve(config, **changes)


def run_seed(seed: int, config: SimConfig | None = None, *, verbose: bool = False
             ) -> dict[str, Any]:
    """Run one seeded simulation; raises InvariantViolation on a broken promise."""
    sim = Simulation(seed, config)
    sim.verbose = verbose
    return sim.run()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcpsched.testing.sim",
                                description="Seeded simulation of a cluster with faults.")
    p.add_argument("--seed", type=int, help="run this one seed")
    p.add_argument("--seeds", type=int, default=50, help="run seeds 0..N-1 (default 50)")
    p.add_argument("--first", type=int, default=0, help="the first of --seeds (default 0)")
    defaults = SimConfig()
    p.add_argument("--scenario", choices=SCENARIOS, default=defaults.scenario)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--jobs", type=int, default=defaults.jobs)
    p.add_argument("--coordinators", type=int, default=defaults.coordinators)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--slots-max", type=int, default=defaults.slots_max)
    p.add_argument("--faults-per-s", type=float, default=defaults.faults_per_s)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any other SimConfig setting (a replay command uses it)")
    p.add_argument("--verbose", action="store_true",
                   help="print the trace and log the cores' decisions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(name)s %(message)s")
    config = SimConfig(steps=args.steps, jobs=args.jobs, workers=args.workers,
                       coordinators=args.coordinators, faults_per_s=args.faults_per_s,
                       slots_max=args.slots_max, scenario=args.scenario)
    config = _with_settings(config, args.set)
    seeds = [args.seed] if args.seed is not None else list(range(args.first,
                                                                 args.first + args.seeds))
    failures = 0
    started = time.perf_counter()
    for seed in seeds:
        try:
            summary = run_seed(seed, config, verbose=args.verbose)
        except InvariantViolation as exc:
            failures += 1
            print(f"FAIL {exc}")
            continue
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"{len(seeds) - failures}/{len(seeds)} seeds held every invariant "
          f"({time.perf_counter() - started:.1f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
