"""The bully election, one test per rule (in the manner of etcd raft's raft_paper_test.go).

Each test quotes the rule it pins from `tcpsched/core/election.py`. A tiny synchronous network
drives several `Election` objects: messages are delivered in order, links can be cut one way,
and a leader's beats are `leader_contact` calls, as the node core makes them.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import peer_messages as pm
from tcpsched.core.election import (
    Election,
    ElectionTiming,
    PeerSend,
    Promise,
    Pull,
    Role,
)

TIMING = ElectionTiming(election_timeout_s=1.0, probe_timeout_s=0.15, hold_down_s=3.0,
                        jitter_s=0.1)
BEAT_S = 0.1


class Net:
    """Elections on a network of one-way links that can be cut; time advances in small steps."""

    def __init__(self, ids: list[int], seed: int = 1, pos: dict[int, tuple[int, int]] | None = None
                 ) -> None:
        self.now = 0.0
        self.nodes = {i: Election(i, ids, TIMING, random.Random(seed * 100 + i), self.now)
                      for i in ids}
        self.pos = {i: (0, 0) for i in ids} | (pos or {})
        self.promises: dict[int, list[tuple[int, int]]] = {i: [] for i in ids}
        self.leaders_by_epoch: dict[int, set[int]] = {}
        self.cut: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.queue: deque[tuple[int, int, Any]] = deque()
        self.next_beat = 0.0

    def isolate(self, a: int, b: int) -> None:
        self.cut |= {(a, b), (b, a)}

    def handle(self, i: int, outs: list[Any]) -> None:
        for out in outs:
            if isinstance(out, Promise):
                self.promises[i].append((out.epoch, out.leader))
            elif isinstance(out, PeerSend):
                if (i, out.peer) not in self.cut and out.peer not in self.down:
                    self.queue.append((i, out.peer, out.msg))
            elif isinstance(out, Pull):
                self.pos[i] = max(self.pos[i], self.pos[out.peer])
                self.handle(i, self.nodes[i].caught_up(self.now, self.pos[i]))
        node = self.nodes[i]
        if node.is_leader:
            self.leaders_by_epoch.setdefault(node.epoch, set()).add(i)

    def deliver(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.popleft()
            if dst in self.down:
                continue
            self.handle(dst, self.nodes[dst].on_message(src, msg, self.now, self.pos[dst]))

    def beat(self) -> None:
        for i, node in self.nodes.items():
            if i in self.down or not node.is_leader:
                continue
            for j in node.peers:
                if (i, j) in self.cut or j in self.down:
                    continue
                ok, outs = self.nodes[j].leader_contact(i, node.epoch, self.now)
                self.handle(j, outs)
                if ok:
                    self.pos[j] = max(self.pos[j], self.pos[i])
                    node.peer_heard(j, self.now)
                elif (j, i) not in self.cut:
                    self.handle(i, node.observe_epoch(self.nodes[j].epoch, self.now))

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            if self.now >= self.next_beat:
                self.next_beat = self.now + BEAT_S
                self.beat()
            for i, node in self.nodes.items():
                if i not in self.down and node.next_deadline() <= self.now:
                    caught_up = node.leader == 0 or self.pos[i] >= self.pos[node.leader]
                    self.handle(i, node.on_tick(self.now, self.pos[i], caught_up))
            self.deliver()

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.is_leader and i not in self.down]


def ack(node: Election, src: int, epoch: int, *, last: tuple[int, int] = (0, 0),
        now: float = 0.0, pos: tuple[int, int] = (0, 0)) -> tuple[list[Any], pm.CoordinatorAck]:
    outs = node.on_message(src, pm.Coordinator(src=src, epoch=epoch, last_epoch=last[0],
                                               last_seq=last[1]), now, pos)
    acks = [o.msg for o in outs if isinstance(o, PeerSend)]
    assert len(acks) == 1 and isinstance(acks[0], pm.CoordinatorAck)
    return outs, acks[0]


def test_highest_reachable_id_with_a_majority_leads() -> None:
    """Rule: the winner is the highest id among the coordinators it can reach."""
    net = Net([1, 2, 3])
    net.run(2.0)
    assert net.leaders() == [3]
    assert all(net.nodes[i].leader == 3 for i in (1, 2))
    assert {n.epoch for n in net.nodes.values()} == {1}


def test_no_leader_without_a_majority() -> None:
    """Rule: a coordinator leads only if it can reach a majority of all configured ones."""
    net = Net([1, 2, 3])
    net.down = {1, 2}
    net.run(5.0)
    assert net.leaders() == []
    assert net.nodes[3].role is Role.CANDIDATE


def test_lower_id_leads_when_the_highest_is_down() -> None:
    """Rule: the highest *live* id that reaches a majority leads (2 of 3 is a majority)."""
    net = Net([1, 2, 3])
    net.down = {3}
    net.run(2.0)
    assert net.leaders() == [2]


def test_acknowledges_at_most_one_leader_per_epoch() -> None:
    """Rule: a coordinator acknowledges at most one leader per epoch."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0)
    _, first = ack(node, 2, 5)
    _, second = ack(node, 3, 5)
    assert first.ok and not second.ok
    assert "already acknowledged" in second.reason


def test_never_acknowledges_below_its_highest_promise() -> None:
    """Rule: never acknowledge a leader below the highest epoch already acknowledged."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0, promised_epoch=5,
                    promised_leader=3)
    _, reply = ack(node, 3, 4)
    assert not reply.ok and reply.promised_epoch == 5


def test_a_resent_coordinator_is_acknowledged_again() -> None:
    """Rule: the same epoch with the same leader is a resend and is acknowledged again."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0)
    ack(node, 3, 2)
    outs, reply = ack(node, 3, 2)
    assert reply.ok and not any(isinstance(o, Promise) for o in outs)


def test_refuses_a_candidate_whose_log_is_behind() -> None:
    """Rule: refuse a candidate whose log position is behind our own (election restriction)."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0)
    _, behind = ack(node, 2, 3, last=(2, 9), pos=(2, 10))
    _, newer_epoch = ack(node, 2, 4, last=(3, 1), pos=(2, 10))
    assert not behind.ok and "behind" in behind.reason
    assert newer_epoch.ok


def test_the_promise_is_journaled_before_the_acknowledgement() -> None:
    """Rule: the promise is durable before any acknowledgement leaves."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0)
    outs, _ = ack(node, 3, 1)
    assert isinstance(outs[0], Promise) and outs[0] == Promise(1, 3)
    sends = [o for o in outs if isinstance(o, PeerSend)]
    assert all(s.durable for s in sends)
    assert outs.index(outs[0]) < outs.index(sends[0])


def test_announced_epoch_exceeds_every_epoch_seen() -> None:
    """Rule: every COORDINATOR carries an epoch strictly greater than any epoch seen."""
    node = Election(3, [1, 2, 3], TIMING, random.Random(1), 0.0, promised_epoch=2)
    node.on_tick(1.0, (0, 0), True)
    answers = [pm.Answer(src=1, epoch=4, last_epoch=0, last_seq=0, leader=0, reach=1),
               pm.Answer(src=2, epoch=7, last_epoch=0, last_seq=0, leader=0, reach=1)]
    outs: list[Any] = []
    for a in answers:
        outs += node.on_message(a.src, a, 1.01, (0, 0))
    coordinators = [o.msg for o in outs if isinstance(o, PeerSend)
                    and isinstance(o.msg, pm.Coordinator)]
    assert coordinators and {c.epoch for c in coordinators} == {8}


def test_candidate_pulls_from_the_most_up_to_date_before_announcing() -> None:
    """Rule: before announcing, the winner pulls every record it lacks from the most up to date."""
    node = Election(3, [1, 2, 3], TIMING, random.Random(1), 0.0)
    node.on_tick(1.0, (1, 5), True)
    outs = node.on_message(1, pm.Answer(src=1, epoch=1, last_epoch=1, last_seq=9, leader=0,
                                        reach=1), 1.01, (1, 5))
    outs += node.on_message(2, pm.Answer(src=2, epoch=1, last_epoch=1, last_seq=7, leader=0,
                                         reach=1), 1.02, (1, 5))
    assert Pull(1) in outs
    assert not any(isinstance(o, PeerSend) and isinstance(o.msg, pm.Coordinator) for o in outs)
    after = node.caught_up(1.05, (1, 9))
    assert any(isinstance(o, PeerSend) and isinstance(o.msg, pm.Coordinator) for o in after)


def test_leadership_takes_effect_only_with_a_majority_of_acknowledgements() -> None:
    """Rule: COORDINATOR takes effect only once a majority has acknowledged it."""
    node = Election(5, [1, 2, 3, 4, 5], TIMING, random.Random(1), 0.0)
    node.on_tick(1.0, (0, 0), True)
    for src in (1, 2):
        node.on_message(src, pm.Answer(src=src, epoch=0, last_epoch=0, last_seq=0, leader=0,
                                       reach=2), 1.01, (0, 0))
    node.on_tick(1.2, (0, 0), True)  # probe round over: 3 of 5 reached
    epoch = node.epoch
    node.on_message(1, pm.CoordinatorAck(src=1, epoch=epoch, ok=True, promised_epoch=epoch,
                                         last_epoch=0, last_seq=0), 1.21, (0, 0))
    assert not node.is_leader
    node.on_message(2, pm.CoordinatorAck(src=2, epoch=epoch, ok=True, promised_epoch=epoch,
                                         last_epoch=0, last_seq=0), 1.22, (0, 0))
    assert node.is_leader


def test_replication_from_a_lower_epoch_is_refused() -> None:
    """Rule: a coordinator refuses replication from any epoch below its promise."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0, promised_epoch=4,
                    promised_leader=2)
    ok, _ = node.leader_contact(3, 3, 0.5)
    assert not ok
    ok, outs = node.leader_contact(3, 5, 0.6)
    assert ok and Promise(5, 3) in outs and node.leader == 3


def test_a_candidate_that_lost_its_epoch_follows_that_epochs_leader() -> None:
    """Rule: replication of our own epoch from another leader than the one we promised is
    accepted: only the node a majority acknowledged replicates in an epoch (a candidate that
    promised itself epoch 3 and lost it to node 2 refused 2 forever; found by the simulation)."""
    node = Election(3, [1, 2, 3], TIMING, random.Random(1), 0.0, promised_epoch=2,
                    promised_leader=2)
    node.on_tick(5.0, (2, 10), caught_up=True)  # leader 2 silent: an election
    node.on_message(1, pm.Answer(src=1, epoch=2, last_epoch=2, last_seq=10, leader=0, reach=1),
                    5.01, (2, 10))
    node.on_message(2, pm.Answer(src=2, epoch=2, last_epoch=2, last_seq=10, leader=0, reach=1),
                    5.02, (2, 10))
    assert node.promised_epoch == 3 and node.promised_leader == 3  # it announced itself
    ok, outs = node.leader_contact(2, 3, 5.1)  # but 1 acknowledged 2 for epoch 3 first
    assert ok and Promise(3, 2) in outs
    assert node.role is Role.FOLLOWER and node.leader == 2
    ok, _ = node.leader_contact(1, 2, 5.2)  # a lower epoch is still refused
    assert not ok


def test_leader_steps_down_on_seeing_a_higher_epoch() -> None:
    """Rule: a deposed leader steps down the moment it sees a higher epoch."""
    net = Net([1, 2, 3])
    net.run(2.0)
    leader = net.nodes[3]
    leader.observe_epoch(leader.epoch + 1, net.now)
    assert leader.role is Role.FOLLOWER


def test_leader_without_a_majority_steps_down() -> None:
    """Rule: a leader that loses its majority stops leading (check quorum)."""
    net = Net([1, 2, 3])
    net.run(2.0)
    net.down = {1, 2}
    net.run(1.5)
    assert net.nodes[3].role is not Role.LEADER


def test_a_leaders_deadline_stays_ahead_of_the_clock() -> None:
    """Rule: a leader checks its majority on a timer; once checked, the next check is in the
    future (a deadline left in the past made the runner fire the leader's timer in a busy loop;
    found by the simulation)."""
    net = Net([1, 2, 3])
    net.run(3.0)
    leader = net.nodes[3]
    assert leader.is_leader
    now = net.now
    leader.on_tick(now, (0, 0), True)
    assert leader.next_deadline() > now
    assert leader.next_deadline() <= now + TIMING.election_timeout_s + 0.01


def test_follower_elects_after_the_election_timeout() -> None:
    """Rule: a follower that misses the leader's heartbeats for the timeout starts an election."""
    net = Net([1, 2, 3])
    net.run(2.0)
    net.cut |= {(3, 1), (3, 2)}  # 3 still hears the others, but nobody hears 3
    net.run(1.5)
    assert net.nodes[2].is_leader
    assert net.nodes[2].epoch > 1


def test_closed_leader_connection_starts_an_election_at_once() -> None:
    """Rule: a follower whose connection to the leader closes does not wait for the timeout."""
    net = Net([1, 2, 3])
    net.run(2.0)
    net.down = {3}
    for i in (1, 2):
        net.nodes[i].peer_down(3, net.now)
    net.run(0.5)
    assert net.leaders() == [2]


def test_a_live_leader_is_followed_not_challenged() -> None:
    """Rule: a restarted node that finds a live leader follows it instead of taking over."""
    net = Net([1, 2, 3])
    net.down = {3}
    net.run(2.0)
    assert net.leaders() == [2]
    epoch = net.nodes[2].epoch
    net.down = set()
    net.nodes[3] = Election(3, [1, 2, 3], TIMING, random.Random(9), net.now)
    net.run(1.0)
    assert net.leaders() == [2] and net.nodes[2].epoch == epoch
    assert net.nodes[3].leader == 2


def test_higher_id_takes_over_only_after_the_hold_down_and_catching_up() -> None:
    """Rule: a restarted higher id catches up, stays healthy for the hold-down, then takes over."""
    net = Net([1, 2, 3])
    net.down = {3}
    net.run(2.0)
    net.pos[2] = (net.nodes[2].epoch, 50)
    net.down = set()
    net.nodes[3] = Election(3, [1, 2, 3], TIMING, random.Random(9), net.now)
    net.run(TIMING.hold_down_s - 0.5)
    assert net.leaders() == [2]
    net.run(1.5)
    assert net.leaders() == [3]
    assert net.pos[3] >= (1, 50)


def test_no_takeover_while_not_caught_up() -> None:
    """Rule: the hold-down counts only while the follower is caught up."""
    node = Election(3, [1, 2, 3], TIMING, random.Random(1), 0.0)
    node.leader_contact(2, 1, 0.1)
    for t in range(1, 60):
        now = 0.1 + t * 0.1
        node.leader_contact(2, 1, now)
        node.on_tick(now, (1, 0), caught_up=False)
    assert node.role is Role.FOLLOWER and node.leader == 2


def test_refuses_a_lower_candidate_while_hearing_a_higher_live_leader() -> None:
    """Rule: do not acknowledge a candidate while a live leader with a higher id is heard."""
    node = Election(1, [1, 2, 3], TIMING, random.Random(1), 0.0)
    node.leader_contact(3, 1, 0.5)
    _, reply = ack(node, 2, 2, now=0.6)
    assert not reply.ok and "live leader 3" in reply.reason
    _, later = ack(node, 2, 2, now=2.0)  # 3 has been silent past the timeout
    assert later.ok


def test_asymmetric_partition_keeps_one_leader_per_epoch_without_flapping() -> None:
    """Rule: quorum intersection: 3 reaches 1, 2 reaches 1, 3 and 2 cut: one leader per epoch."""
    net = Net([1, 2, 3])
    net.run(2.0)
    assert net.leaders() == [3]
    net.isolate(2, 3)
    epoch = net.nodes[3].epoch
    net.run(10.0)
    assert all(len(ls) == 1 for ls in net.leaders_by_epoch.values())
    assert net.leaders() == [3] and net.nodes[3].epoch == epoch
    assert net.nodes[2].leader_hint() == 3


def test_single_coordinator_leads_alone() -> None:
    """Rule: one configured coordinator is its own majority."""
    net = Net([1])
    net.run(0.5)
    assert net.leaders() == [1]


@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5), st.floats(0, 8), st.floats(0, 4)),
                  max_size=8),
)
def test_at_most_one_leader_per_epoch_under_random_one_way_cuts(
    seed: int, cuts: list[tuple[int, int, float, float]]
) -> None:
    """Safety: whatever links fail, and in whichever direction, no epoch has two leaders."""
    net = Net([1, 2, 3, 4, 5], seed=seed)
    events = sorted((start, (a, b), length) for a, b, start, length in cuts if a != b)
    for start, link, length in events:
        if start > net.now:
            net.run(start - net.now, step=0.02)
        net.cut.add(link)
        net.run(length, step=0.02)
        net.cut.discard(link)
    net.run(4.0, step=0.02)
    assert all(len(ls) == 1 for ls in net.leaders_by_epoch.values()), net.leaders_by_epoch
    for node in net.nodes.values():
        epochs = [e for e, _ in net.promises[node.node_id]]
        assert epochs == sorted(epochs)
    assert len(net.leaders()) == 1


def test_a_leaders_next_deadline_is_its_next_quorum_check() -> None:
    """Rule: a leader with its majority wakes next when that majority could lapse (the peer
    completing it heard an election timeout ago), never at a deadline already past."""
    net = Net([1, 2, 3])
    net.run(3.0)
    leader = net.nodes[3]
    assert leader.is_leader
    ticks = 0
    for _ in range(200):  # 2 s of 10 ms steps, with beats every 100 ms
        net.run(0.01)
        assert leader.next_deadline() > net.now
        ticks += leader.next_deadline() <= net.now + 0.01
    assert leader.is_leader
    assert ticks < 40, ticks
    last_heard = max(leader.heard_at().values())
    assert leader.next_deadline() <= last_heard + TIMING.election_timeout_s + 0.01
