"""The node core: election, replication and commit gating together, without I/O.

A small synchronous harness runs several `Node`s with a stand-in scheduler (each client
message becomes one journal record and one reply), a disk per node that keeps what was flushed,
and a network whose links can be cut. The seeded cluster simulation (tests/sim) drives the real
scheduler; these tests pin the node's own rules.
"""

from __future__ import annotations

import json
import random
from collections import deque
from typing import Any

from tcpsched.core.election import ElectionTiming, Role
from tcpsched.core.events import Close, Connected, HigherEpoch, Journal, Received, Send, Tick
from tcpsched.core.node import (
    STALL_RECHECK_S,
    EndOfTurn,
    Flushed,
    Node,
    NodeConfig,
    PeerClosed,
    PeerReceived,
    Recovered,
    Reload,
    Reloaded,
    Synced,
    ToPeer,
    Truncate,
    WriteCommit,
    WriteEntries,
    WritePromise,
)
from tcpsched.core.replication import Entry

TIMING = ElectionTiming(election_timeout_s=1.0, probe_timeout_s=0.15, hold_down_s=3.0,
                        jitter_s=0.1)


class FakeTable:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def apply(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def values(self) -> list[Any]:
        return [r["x"] for r in self.records if r.get("op") == "put"]


class FakeScheduler:
    """Each client message ("put", x) becomes a record and a reply ("ok", x)."""

    def __init__(self, table: FakeTable, epoch: int, now: float, wall: float) -> None:
        self.table = table
        self.epoch = epoch

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Any]:
        if isinstance(event, Received) and event.msg[0] == "behind":
            return [HigherEpoch(event.msg[1], "a worker has seen a later epoch")]
        if isinstance(event, Received) and event.msg[0] == "put":
            record = {"op": "put", "x": event.msg[1]}
            self.table.apply(record)
            return [Journal(record), Send(event.conn, ("ok", event.msg[1]))]
        return []

    def next_deadline(self) -> float | None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {}


def encode(epoch: int, seq: int, record: dict[str, Any]) -> bytes:
    return json.dumps({"seq": seq, "epoch": epoch, "rec": record}).encode()


def decode(data: bytes) -> dict[str, Any]:
    return json.loads(data)["rec"]


class Disk:
    """What a node wrote, and what of it is durable (all of it at each flush)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.promise = (0, 0)
        self.commit = 0

    def recovered(self) -> Recovered:
        table = FakeTable()
        for entry in self.entries:
            if entry.seq <= self.commit:
                rec = decode(entry.data)
                if rec["op"] != "epoch":
                    table.apply(rec)
        return Recovered(table=table, entries=tuple(self.entries), base=(0, 0),  # type: ignore[arg-type]
                         commit_seq=self.commit, promised_epoch=self.promise[0],
                         promised_leader=self.promise[1])


class Cluster:
    def __init__(self, ids: list[int], seed: int = 1) -> None:
        self.ids = ids
        self.now = 0.0
        self.seed = seed
        self.disks = {i: Disk() for i in ids}
        self.nodes: dict[int, Node] = {}
        self.up: set[int] = set()
        for i in ids:
            self.start(i)
        self.cut: set[tuple[int, int]] = set()
        self.queue: deque[tuple[int, int, Any]] = deque()
        self.replies: dict[tuple[int, int], list[Any]] = {}
        self.closed: list[tuple[int, int]] = []
        self.stalled: set[int] = set()  # loops that run nothing: their messages wait unread
        self.unread: list[tuple[int, int, Any]] = []

    def start(self, i: int) -> None:
        peers = {j: f"n{j}" for j in self.ids if j != i}
        config = NodeConfig(node_id=i, address=f"n{i}", peers=peers, timing=TIMING)
        self.nodes[i] = Node(config, random.Random(self.seed * 10 + i), self.now,
                             self.disks[i].recovered(), make_scheduler=FakeScheduler,  # type: ignore[arg-type]
                             encode_line=encode, decode_line=decode)
        self.up.add(i)

    def crash(self, i: int) -> None:
        self.up.discard(i)
        for j in self.up:
            self.feed(j, PeerClosed(i))

    def feed(self, i: int, event: Any) -> None:
        if i not in self.up:
            return
        effects = self.nodes[i].step(event, self.now)
        self.carry(i, effects)
        # End of turn: replicate, then flush (all written is durable), then report it.
        self.carry(i, self.nodes[i].step(EndOfTurn(), self.now))
        disk = self.disks[i]
        self.carry(i, self.nodes[i].step(Flushed(disk.entries[-1].seq if disk.entries else 0),
                                         self.now))

    def carry(self, i: int, effects: list[Any]) -> None:
        disk = self.disks[i]
        for effect in effects:
            if isinstance(effect, WriteEntries):
                for entry in effect.entries:
                    assert entry.seq == (disk.entries[-1].seq + 1 if disk.entries else 1)
                    disk.entries.append(entry)
            elif isinstance(effect, Truncate):
                disk.entries = [e for e in disk.entries if e.seq <= effect.seq]
            elif isinstance(effect, WritePromise):
                disk.promise = (effect.epoch, effect.leader)
            elif isinstance(effect, WriteCommit):
                disk.commit = max(disk.commit, effect.seq)
            elif isinstance(effect, ToPeer):
                if (i, effect.peer) not in self.cut:
                    self.queue.append((i, effect.peer, effect.msg))
            elif isinstance(effect, Send):
                self.replies.setdefault((i, effect.conn), []).append(effect.msg)
            elif isinstance(effect, Close):
                self.closed.append((i, effect.conn))
            elif isinstance(effect, Reload):
                table = FakeTable()
                for entry in disk.entries:
                    if entry.seq <= effect.seq and decode(entry.data)["op"] != "epoch":
                        table.apply(decode(entry.data))
                self.feed(i, Reloaded(table, effect.seq))  # type: ignore[arg-type]

    def deliver(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.popleft()
            if dst in self.stalled:
                self.unread.append((src, dst, msg))
            else:
                self.feed(dst, PeerReceived(src, msg))

    def resume(self, i: int) -> None:
        """End node i's stall as an event loop does: due timers first, then the reads."""
        self.stalled.discard(i)
        self.feed(i, Tick())
        unread = [u for u in self.unread if u[1] == i]
        self.unread = [u for u in self.unread if u[1] != i]
        for src, dst, msg in unread:
            self.feed(dst, PeerReceived(src, msg))

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for i in sorted(self.up - self.stalled):
                deadline = self.nodes[i].next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.feed(i, Tick())
            self.deliver()

    def leader(self) -> int:
        leaders = [i for i in self.up if self.nodes[i].is_leader]
        assert len(leaders) <= 1, leaders
        return leaders[0] if leaders else 0

    def put(self, i: int, conn: int, x: int) -> None:
        self.feed(i, Connected(conn, "client", "c", "addr"))
        self.feed(i, Received(conn, ("put", x)))


def test_group_elects_the_highest_id_and_commits_through_a_majority() -> None:
    """A reply leaves only once its record is on a majority; followers apply committed ones."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    assert cluster.leader() == 3
    cluster.cut = {(3, 1), (3, 2)}  # nobody gets our appends: nothing can commit
    cluster.put(3, 1, 10)
    cluster.deliver()
    assert cluster.replies.get((3, 1)) is None
    cluster.cut = set()
    cluster.run(0.2)
    assert cluster.replies[(3, 1)] == [("ok", 10)]
    # Followers learn the commit seq with the next entries or the next beat (0.1 s).
    cluster.run(0.11)
    for i in (1, 2):
        assert cluster.nodes[i].table.values() == [10]  # type: ignore[attr-defined]


def test_a_failover_keeps_every_acknowledged_record() -> None:
    """Kill the leader after acknowledgements: the next leader holds every one of them."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    for x in range(5):
        cluster.put(3, 1, x)
    cluster.run(0.2)
    assert cluster.replies[(3, 1)] == [("ok", x) for x in range(5)]
    cluster.crash(3)
    cluster.run(1.0)
    assert cluster.leader() == 2
    assert cluster.nodes[2].epoch > cluster.nodes[3].epoch
    assert cluster.nodes[2].scheduler.table.values() == list(range(5))  # type: ignore[union-attr]


def test_a_deposed_leaders_unreplicated_tail_is_cut_and_never_acknowledged() -> None:
    """An isolated leader's records never commit; after the heal they are cut everywhere."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    cluster.put(3, 1, 1)
    cluster.run(0.2)
    cluster.cut = {(3, 1), (3, 2), (1, 3), (2, 3)}
    cluster.put(3, 1, 99)
    cluster.run(2.0)
    assert cluster.replies[(3, 1)] == [("ok", 1)]  # 99 was never acknowledged
    assert cluster.nodes[2].is_leader
    cluster.put(2, 7, 2)
    cluster.run(0.2)
    cluster.cut = set()
    cluster.run(1.0)
    assert cluster.leader() == 2
    assert cluster.nodes[3].role is Role.FOLLOWER
    assert cluster.nodes[3].table.values() == [1, 2]  # type: ignore[attr-defined]
    assert all(decode(e.data).get("x") != 99 for e in cluster.disks[3].entries)


def test_restarted_highest_id_catches_up_then_takes_over() -> None:
    """A restart of the highest id follows first, then leads with the state intact."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    cluster.crash(3)
    cluster.run(1.0)
    for x in range(3):
        cluster.put(2, 1, x)
    cluster.run(0.2)
    cluster.start(3)
    cluster.run(1.0)
    assert cluster.leader() == 2
    cluster.run(TIMING.hold_down_s + 1.0)
    assert cluster.leader() == 3
    assert cluster.nodes[3].scheduler.table.values() == [0, 1, 2]  # type: ignore[union-attr]


def test_a_followers_own_stall_is_not_taken_for_the_leaders_silence() -> None:
    """A tick far later than it was due means our own loop stalled (a full collection, a slow
    disk, SIGSTOP) and what the leader sent meanwhile is unread: the follower reads it before
    it judges the leader, so it starts no election (and no epoch) for its own pause."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    assert cluster.leader() == 3
    elections, epoch = cluster.nodes[2].election.elections, cluster.nodes[2].epoch
    cluster.stalled.add(2)
    cluster.run(1.5)  # past the election timeout; the leader beats on, unread by node 2
    cluster.resume(2)
    cluster.run(0.5)
    node = cluster.nodes[2]
    assert node.role is Role.FOLLOWER and node.election.leader == 3
    assert node.election.elections == elections and node.epoch == epoch
    assert node.stalls_excused == 1
    assert cluster.leader() == 3


def test_after_its_own_stall_a_follower_still_judges_a_silent_leader_at_once() -> None:
    """The stall puts the verdict off only until what arrived is read: a leader that fell
    silent meanwhile is judged as soon as the follower's loop has read, one turn later."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    elections = cluster.nodes[2].election.elections
    cluster.stalled.add(2)
    cluster.cut = {(3, 2)}  # the leader falls silent to 2 (no close) while 2 is stalled
    cluster.run(1.5)
    cluster.resume(2)
    assert cluster.nodes[2].election.elections == elections  # not on the late tick itself
    cluster.run(STALL_RECHECK_S + 0.01)  # once the loop has read what arrived
    assert cluster.nodes[2].election.elections == elections + 1
    cluster.run(1.0)
    assert cluster.leader() == 3  # node 1 still hears 3: followed, not challenged


def test_a_lone_coordinators_late_tick_is_judged_at_once() -> None:
    """Alone, nothing can wait unread from a peer: however late its first tick (a slow
    start), a lone coordinator leads on it, with no recheck."""
    cluster = Cluster([1])
    cluster.now = 5.0
    cluster.feed(1, Tick())
    assert cluster.nodes[1].is_leader and cluster.nodes[1].stalls_excused == 0


def test_a_follower_redirects_clients_to_the_leader() -> None:
    """A request to a follower is answered not_leader with the leader's address."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    cluster.feed(1, Connected(5, "client", "c", "addr"))
    from tcpsched.core import messages as m

    cluster.feed(1, Received(5, m.Stats(req_id=4)))
    reply = cluster.replies[(1, 5)][0]
    assert reply.kind == "not_leader" and reply.leader_hint == "n3"


def test_single_coordinator_leads_at_once_and_commits_on_its_own_flush() -> None:
    """Alone, a coordinator is its own majority."""
    cluster = Cluster([1])
    cluster.run(0.05)
    assert cluster.leader() == 1
    cluster.put(1, 1, 5)
    assert cluster.replies[(1, 1)] == [("ok", 5)]


def test_all_crash_and_restart_keeps_acknowledged_records() -> None:
    """Kill every coordinator at once after acknowledgements; restarted, nothing is lost."""
    cluster = Cluster([1, 2, 3])
    cluster.run(1.0)
    for x in range(4):
        cluster.put(3, 1, x)
    cluster.run(0.2)
    for i in (1, 2, 3):
        cluster.crash(i)
    for i in (1, 2, 3):
        cluster.start(i)
    cluster.run(1.5)
    leader = cluster.leader()
    assert leader
    assert cluster.nodes[leader].scheduler.table.values() == [0, 1, 2, 3]  # type: ignore[union-attr]


def test_a_lone_coordinator_behind_its_workers_takes_an_epoch_above_theirs() -> None:
    """A HigherEpoch from the scheduler (a worker saw a later epoch) deposes the leader; alone,
    it is elected again at once with an epoch above the one seen, journaled as a promise."""
    cluster = Cluster([1])
    cluster.run(0.05)
    assert cluster.nodes[1].epoch == 1
    cluster.feed(1, Connected(2, "worker", "w", "addr"))
    cluster.feed(1, Received(2, ("behind", 7)))
    cluster.run(0.05)
    assert cluster.leader() == 1 and cluster.nodes[1].epoch == 8
    assert cluster.disks[1].promise == (8, 1)


def test_a_background_sync_releases_a_reply_only_once_it_covers_the_record() -> None:
    """`Synced(seq)` (an fsync that ran beside the loop) commits a lone leader's records up to
    seq: a reply waits for the Synced that covers its record, not for an earlier one."""
    disk = Disk()
    config = NodeConfig(node_id=1, address="n1", peers={}, timing=TIMING)
    node = Node(config, random.Random(1), 0.0, disk.recovered(),
                make_scheduler=FakeScheduler,  # type: ignore[arg-type]
                encode_line=encode, decode_line=decode)
    node.step(Tick(), 0.05)
    node.step(Flushed(node.log.last_seq), 0.05)  # the election record
    assert node.is_leader
    before = node.log.last_seq
    node.step(Connected(7, "client", "c", "addr"), 0.1)
    effects = node.step(Received(7, ("put", 1)), 0.1) + node.step(EndOfTurn(), 0.1)
    assert not [e for e in effects if isinstance(e, Send)]
    assert not [e for e in node.step(Synced(before), 0.1) if isinstance(e, Send)]
    released = [e.msg for e in node.step(Synced(before + 1), 0.1) if isinstance(e, Send)]
    assert released == [("ok", 1)]


def test_a_background_sync_never_releases_a_followers_ack() -> None:
    """A follower's AppendAck waits for `Flushed` (a synchronous flush after the entries were
    written): a `Synced` from an fsync that may have begun before them does not send it."""
    cluster = Cluster([1, 2, 3])
    cluster.run(2.0)
    leader = cluster.leader()
    follower = next(i for i in cluster.ids if i != leader)
    node = cluster.nodes[follower]
    # Feed an Append by hand and step only the part before the flush.
    cluster.put(leader, 1, 9)
    appends = [(src, dst, msg) for src, dst, msg in cluster.queue if dst == follower
               and type(msg).__name__ == "Append" and msg.entries]
    assert appends
    cluster.queue.clear()
    src, _, msg = appends[0]
    effects = node.step(PeerReceived(src, msg), cluster.now)
    effects += node.step(EndOfTurn(), cluster.now)
    effects += node.step(Synced(node.log.last_seq), cluster.now)
    acks = [e for e in effects if isinstance(e, ToPeer) and type(e.msg).__name__ == "AppendAck"
            and e.msg.ok and e.msg.match_seq >= msg.entries[-1].seq]
    assert acks == []
    assert node.wants_flush
    flushed = node.step(Flushed(node.log.last_seq), cluster.now)
    assert [e for e in flushed if isinstance(e, ToPeer) and type(e.msg).__name__ == "AppendAck"]
