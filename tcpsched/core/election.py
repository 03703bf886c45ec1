"""Bully election with epochs and a majority: who leads, and since which epoch.

Theory of operation
-------------------
Coordinators have unique integer ids. Each keeps a *promise*: the highest epoch it has
acknowledged and the leader it acknowledged for it. The promise is journaled (an election
record) before any acknowledgement leaves, so it survives a crash: `Promise` outputs are written
first, and a `PeerSend(durable=True)` waits until they are on disk.

A follower hears from its leader (the node reports every valid contact with `leader_contact`).
When it has not for `election_timeout_s`, or the leader's connection closed, it becomes a
candidate. A candidate runs rounds:

1. probe: ELECTION (its promise and last log position) to every peer; each live peer answers
   ANSWER (its promise, position, the leader it hears now, how many peers it hears). The round
   ends when every peer answered or after `probe_timeout_s`.
2. judge: the reachable set is the candidate and those that answered. Fewer than a majority of
   all configured coordinators (itself included): retry later, never lead. A live leader that
   others still hear is followed, not challenged (a restart never disrupts a working leader). A
   higher id that answered and hears enough peers to win outranks us (bully): we wait for its
   COORDINATOR; if none comes within the election timeout, the next round passes over it.
3. catch up: if an answer shows a later log position than ours, the node pulls the missing
   records from the most up-to-date peer and calls `caught_up`.
4. announce: COORDINATOR with an epoch one above every epoch seen in the round and our own. It
   takes effect once a majority (ourselves included) acknowledged it.

Acknowledging. A node acknowledges COORDINATOR(e, c) only if e is above its promise (or equal,
with the same leader: a resend), c's log position is at least its own, and it does not hear a
live leader with a higher id than c. It then promises (e, c) durably and follows c. It refuses
replication from any epoch below its promise (`leader_contact` answers False). Replication of
its own epoch from another leader than the one it promised is accepted (and the promise moved
to it): only the one node a majority acknowledged for e replicates in e.

Why two leaders in one epoch are impossible: a leader of epoch e needs acknowledgements from a
majority, each node acknowledges at most one leader per epoch, and any two majorities of the same
configuration share a node. This holds under any partition, asymmetric ones included: with three
nodes where 3 reaches 1, 2 reaches 1, and 3 and 2 cannot see each other, both 3 and 2 can reach a
majority ({1, 3} and {1, 2}), but node 1 is in both and acknowledges one of them per epoch; and as
long as 1 hears live leader 3 it refuses 2 (a lower id) altogether, so the group does not flap.

Why the new leader holds every committed record: a committed record is durable on a majority;
the acknowledging majority shares a node with it; that node refuses a candidate whose position is
behind its own (Raft's election restriction), and once it promised epoch e it refuses replication
from lower epochs, so nothing can be committed behind the new leader's back.

A leader steps down when fewer than a majority (itself included) were heard within an election
timeout (check quorum), or when it sees a higher promise. A follower that follows a leader with a
lower id takes over only after following it, caught up, for `hold_down_s`: a restart of the
highest id catches up first, and a rejoin never flaps.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import peer_messages as pm

if TYPE_CHECKING:
    import random

log = logging.getLogger(__name__)

CHECK_QUORUM_SLACK_S = 1e-3  # a leader looks at its majority this long after it could drop

Position = tuple[int, int]
"""(epoch, seq) of a node's last record; tuples compare epoch first: the up-to-date order."""


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@attrs.frozen
class ElectionTiming:
    election_timeout_s: float = 1.0
    probe_timeout_s: float = 0.15
    hold_down_s: float = 3.0
    jitter_s: float = 0.1


# -- outputs ----------------------------------------------------------------------------------


@attrs.frozen
class PeerSend:
    """Send `msg` to coordinator `peer`; `durable`: only once every Promise before it is on disk."""

    peer: int
    msg: Any
    durable: bool = False


@attrs.frozen
class Promise:
    """Journal this election record (and make it durable) before any durable send after it."""

    epoch: int
    leader: int


@attrs.frozen
class Pull:
    """Fetch the records we lack from `peer`, then call `Election.caught_up`."""

    peer: int


@attrs.frozen
class RoleChanged:
    role: Role
    epoch: int
    leader: int  # 0: none known


Output = PeerSend | Promise | Pull | RoleChanged


@attrs.frozen
class ElectionStatistics:
    node_id: int
    role: str
    epoch: int
    leader: int
    phase: str
    elections: int
    reach: int


class Election:
    def __init__(
        self,
        node_id: int,
        ids: list[int] | tuple[int, ...] | set[int],
        timing: ElectionTiming,
        rng: random.Random,
        now: float,
        *,
        promised_epoch: int = 0,
        promised_leader: int = 0,
    ) -> None:
        self.node_id = node_id
        self.ids = tuple(sorted(set(ids) | {node_id}))
        self.peers = tuple(i for i in self.ids if i != node_id)
        self.majority = len(self.ids) // 2 + 1
        self.timing = timing
        self.rng = rng
        self.promised_epoch = promised_epoch
        self.promised_leader = promised_leader
        self.max_epoch_seen = promised_epoch
        self.role = Role.FOLLOWER
        self.leader = 0
        self.elections = 0
        self._heard: dict[int, float] = {}
        self._leader_heard_at = -1.0
        self._holddown_at: float | None = None
        # Start soon: a live leader, if any, is found by the probe and followed. Alone, at once.
        self._deadline = now + rng.uniform(0.0, timing.jitter_s) + timing.probe_timeout_s
        if not self.peers:
            self._deadline = now
        self._phase = "wait"
        self._takeover = False
        self._answers: dict[int, pm.Answer] = {}
        self._acks: set[int] = set()
        self._replied: set[int] = set()
        self._skip: set[int] = set()
        self._deferred_to = 0
        self._deferred_hinted = False
        self._proposed = 0
        self._out: list[Output] = []

    # -- queries ------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def epoch(self) -> int:
        return self.promised_epoch

    def leader_hint(self) -> int:
        """Whom to send clients and workers to: the leader we follow, or the one we wait for."""
        if self.role is Role.CANDIDATE and self._phase == "defer":
            return self._deferred_to
        return self.leader

    def reach(self, now: float) -> int:
        horizon = now - self.timing.election_timeout_s
        return sum(1 for t in self._heard.values() if t >= horizon)

    def heard_at(self) -> dict[int, float]:
        """When each peer was last heard (a copy)."""
        return dict(self._heard)

    def live_leader(self, now: float) -> int:
        if self.role is Role.LEADER:
            return self.node_id
        if (self.role is Role.FOLLOWER and self.leader
                and now - self._leader_heard_at <= self.timing.election_timeout_s):
            return self.leader
        return 0

    def next_deadline(self) -> float:
        if self._holddown_at is not None:
            return min(self._deadline, self._holddown_at)
        return self._deadline

    def statistics(self, now: float) -> ElectionStatistics:
        return ElectionStatistics(
            node_id=self.node_id, role=self.role.value, epoch=self.promised_epoch,
            leader=self.leader_hint(), phase=self._phase if self.role is Role.CANDIDATE else "",
            elections=self.elections, reach=self.reach(now),
        )

    # -- inputs -------------------------------------------------------------------------------

    def peer_heard(self, peer: int, now: float) -> None:
        """Any message from `peer` arrived: it is reachable (check quorum, ANSWER's reach)."""
        if peer in self.peers:
            self._heard[peer] = now

    def peer_down(self, peer: int, now: float) -> list[Output]:
        """The connection we hear `peer` on closed: a dead leader is replaced without waiting."""
        self._heard.pop(peer, None)
        if self.role is Role.FOLLOWER and peer == self.leader:
            self._leader_heard_at = -1.0
            self._deadline = min(self._deadline, now + self.rng.uniform(0.0, self.timing.jitter_s))
        return []

    def observe_epoch(self, epoch: int, now: float) -> list[Output]:
        """Somebody refused us with a higher promise: a newer leader exists; step down."""
        self._out = []
        self.max_epoch_seen = max(self.max_epoch_seen, epoch)
        if epoch > self.promised_epoch and self.role is not Role.FOLLOWER:
            log.info("node=%d epoch=%d saw epoch %d", self.node_id, self.promised_epoch, epoch)
            self._become_follower(0, now)
        return self._flush()

    def leader_contact(self, leader: int, epoch: int, now: float) -> tuple[bool, list[Output]]:
        """A leader's replication or heartbeat arrived. False: it is fenced (refuse it)."""
        self._out = []
        if epoch < self.promised_epoch:
            return False, []
        if epoch > self.promised_epoch or leader != self.promised_leader:
            # Same epoch, another leader than the one we promised (ourselves, as a fellow
            # candidate, or a candidate that lost): only a node a majority acknowledged
            # replicates, and one epoch has one such node, so this is that epoch's leader.
            # Refusing it would leave us out for good: the leader never moves to a new epoch
            # on our account, and we would defer to it, unheard, forever.
            self._promise(epoch, leader)
        self.peer_heard(leader, now)
        if self.role is not Role.FOLLOWER or self.leader != leader:
            self._become_follower(leader, now)
        self._leader_heard_at = now
        self._arm_follower(now)
        return True, self._flush()

    def caught_up(self, now: float, pos: Position) -> list[Output]:
        """The pull asked for by `Pull` finished: announce if we are still the one to lead."""
        self._out = []
        if self.role is Role.CANDIDATE and self._phase == "catch_up":
            best = max(((a.last_epoch, a.last_seq) for a in self._answers.values()), default=pos)
            if pos >= best:
                self._announce(now, pos)
            else:
                self._retry(now, "the pull did not bring us up to date")
        return self._flush()

    def on_message(self, src: int, msg: Any, now: float, pos: Position) -> list[Output]:
        self._out = []
        self.peer_heard(src, now)
        if isinstance(msg, pm.Election):
            self._see(msg.epoch, now)
            self._on_election(src, now, pos)
        elif isinstance(msg, pm.Answer):
            self._see(msg.epoch, now)
            self._on_answer(src, msg, now, pos)
        elif isinstance(msg, pm.Coordinator):
            self.max_epoch_seen = max(self.max_epoch_seen, msg.epoch)
            self._on_coordinator(src, msg, now, pos)
        elif isinstance(msg, pm.CoordinatorAck):
            self._see(msg.promised_epoch, now)
            self._on_ack(src, msg, now, pos)
        return self._flush()

    def on_tick(self, now: float, pos: Position, caught_up: bool) -> list[Output]:
        """The clock moved; `caught_up`: our log holds everything our leader has committed."""
        self._out = []
        if self.role is Role.LEADER:
            # Check quorum: a leader nobody answers may already be replaced on the other side.
            if self.reach(now) + 1 < self.majority:
                log.info("node=%d epoch=%d lost its majority; stepping down",
                         self.node_id, self.promised_epoch)
                self._become_follower(0, now)
            else:
                self._arm_check_quorum(now)
        elif self.role is Role.FOLLOWER:
            if self.leader and now - self._leader_heard_at > self.timing.election_timeout_s:
                log.info("node=%d epoch=%d lost leader %d", self.node_id, self.promised_epoch,
                         self.leader)
                self._start(now, pos, takeover=False)
            elif not self.leader and now >= self._deadline:
                self._start(now, pos, takeover=False)
            elif self._holddown_at is not None and now >= self._holddown_at:
                if not caught_up:
                    self._holddown_at = now + self.timing.probe_timeout_s
                    return self._flush()
                log.info("node=%d epoch=%d caught up with leader %d for %.1fs; taking over",
                         self.node_id, self.promised_epoch, self.leader, self.timing.hold_down_s)
                self._start(now, pos, takeover=True)
        elif now >= self._deadline:
            if self._phase == "probe":
                self._judge(now, pos)
            elif self._phase == "defer":
                if not self._deferred_hinted:
                    self._skip.add(self._deferred_to)
                self._start(now, pos, takeover=self._takeover)
            else:  # wait, catch_up or announce ran out of time
                self._start(now, pos, takeover=self._takeover)
        return self._flush()

    # -- message handlers -----------------------------------------------------------------------

    def _on_election(self, src: int, now: float, pos: Position) -> None:
        self._send(src, pm.Answer(
            src=self.node_id, epoch=self.promised_epoch, last_epoch=pos[0], last_seq=pos[1],
            leader=self.live_leader(now), reach=self.reach(now),
        ))
        # Bully: a lower id looking for a leader means we should be the one, unless a live
        # leader exists (then the asker learns it from our answer).
        if self.role is Role.FOLLOWER and src < self.node_id and not self.live_leader(now):
            self._start(now, pos, takeover=False)

    def _on_answer(self, src: int, msg: pm.Answer, now: float, pos: Position) -> None:
        if self.role is not Role.CANDIDATE or self._phase != "probe":
            return
        self._answers[src] = msg
        if len(self._answers) == len(self.peers):
            self._judge(now, pos)

    def _on_coordinator(self, src: int, msg: pm.Coordinator, now: float, pos: Position) -> None:
        reason = self._refusal(src, msg.epoch, (msg.last_epoch, msg.last_seq), now, pos)
        if reason:
            log.debug("node=%d refuses node %d for epoch %d: %s", self.node_id, src, msg.epoch,
                      reason)
            self._send(src, pm.CoordinatorAck(
                src=self.node_id, epoch=msg.epoch, ok=False, promised_epoch=self.promised_epoch,
                last_epoch=pos[0], last_seq=pos[1], reason=reason,
            ))
            return
        if msg.epoch != self.promised_epoch:
            self._promise(msg.epoch, src)
        if self.role is not Role.FOLLOWER or self.leader != src:
            self._become_follower(src, now)
        self._leader_heard_at = now
        self._arm_follower(now)
        self._send(src, pm.CoordinatorAck(
            src=self.node_id, epoch=msg.epoch, ok=True, promised_epoch=self.promised_epoch,
            last_epoch=pos[0], last_seq=pos[1],
        ), durable=True)

    def _refusal(self, src: int, epoch: int, their: Position, now: float, pos: Position) -> str:
        if epoch < self.promised_epoch:
            return f"epoch {epoch} is below my promise {self.promised_epoch}"
        if epoch == self.promised_epoch and src != self.promised_leader:
            return f"epoch {epoch} already acknowledged for node {self.promised_leader}"
        if their < pos:
            return f"its log {their} is behind mine {pos}"
        live = self.live_leader(now)
        if live and live != src and live > src:
            return f"live leader {live} has a higher id"
        return ""

    def _on_ack(self, src: int, msg: pm.CoordinatorAck, now: float, pos: Position) -> None:
        if (self.role is not Role.CANDIDATE or self._phase != "announce"
                or msg.epoch != self._proposed):
            return
        self._replied.add(src)
        if msg.ok:
            self._acks.add(src)
            if len(self._acks) + 1 >= self.majority:
                self._become_leader(now)
            return
        log.debug("node=%d epoch=%d refused by %d: %s", self.node_id, msg.epoch, src, msg.reason)
        if len(self._replied) == len(self.peers):
            self._retry(now, "no majority acknowledged")

    # -- transitions ----------------------------------------------------------------------------

    def _start(self, now: float, pos: Position, *, takeover: bool) -> None:
        if self.role is not Role.CANDIDATE:
            self.role = Role.CANDIDATE
            self.leader = 0
            self._holddown_at = None
            log.info("node=%d epoch=%d became candidate", self.node_id, self.promised_epoch)
            self._out.append(RoleChanged(Role.CANDIDATE, self.promised_epoch, 0))
        self.elections += 1
        self._takeover = takeover
        self._phase = "probe"
        self._answers = {}
        self._deadline = now + self.timing.probe_timeout_s
        for peer in self.peers:
            self._send(peer, pm.Election(
                src=self.node_id, epoch=self.promised_epoch, last_epoch=pos[0], last_seq=pos[1],
            ))
        if not self.peers:
            self._judge(now, pos)

    def _judge(self, now: float, pos: Position) -> None:
        if len(self._answers) + 1 < self.majority:
            self._retry(now, f"reached {len(self._answers) + 1} of {len(self.ids)} coordinators")
            return
        hints = {a.leader for a in self._answers.values() if a.leader and a.leader != self.node_id}
        if self._takeover:
            hints = {h for h in hints if h > self.node_id}
        if hints:
            self._defer(max(hints), now, hinted=True)
            return
        higher = [
            j for j, a in self._answers.items()
            if j > self.node_id and j not in self._skip and a.reach + 1 >= self.majority
        ]
        if higher:
            self._defer(max(higher), now, hinted=False)
            return
        best_peer, best = 0, pos
        for j, a in self._answers.items():
            if (a.last_epoch, a.last_seq) > best:
                best_peer, best = j, (a.last_epoch, a.last_seq)
        if best_peer:
            self._phase = "catch_up"
            self._deadline = now + self.timing.election_timeout_s
            self._out.append(Pull(best_peer))
            return
        self._announce(now, pos)

    def _defer(self, peer: int, now: float, *, hinted: bool) -> None:
        self._phase = "defer"
        self._deferred_to = peer
        self._deferred_hinted = hinted
        self._deadline = now + self.timing.election_timeout_s + self._jitter()

    def _retry(self, now: float, why: str) -> None:
        log.debug("node=%d election round failed: %s", self.node_id, why)
        self._phase = "wait"
        self._deadline = now + self.timing.election_timeout_s / 2 + self._jitter()

    def _announce(self, now: float, pos: Position) -> None:
        seen = [a.epoch for a in self._answers.values()]
        epoch = max([self.promised_epoch, self.max_epoch_seen, *seen]) + 1
        self._promise(epoch, self.node_id)
        self._proposed = epoch
        self._phase = "announce"
        self._acks = set()
        self._replied = set()
        self._deadline = now + 2 * self.timing.probe_timeout_s
        for peer in self.peers:
            self._send(peer, pm.Coordinator(
                src=self.node_id, epoch=epoch, last_epoch=pos[0], last_seq=pos[1],
            ), durable=True)
        if self.majority == 1:
            self._become_leader(now)

    def _become_leader(self, now: float) -> None:
        self.role = Role.LEADER
        self.leader = self.node_id
        self._phase = ""
        self._skip.clear()
        self._holddown_at = None
        for peer in self._acks:
            self._heard[peer] = now
        self._arm_check_quorum(now)
        log.info("node=%d epoch=%d became leader", self.node_id, self.promised_epoch)
        self._out.append(RoleChanged(Role.LEADER, self.promised_epoch, self.node_id))

    def _become_follower(self, leader: int, now: float) -> None:
        self.role = Role.FOLLOWER
        self.leader = leader
        self._phase = ""
        # A higher id following a lower one takes over once caught up for the hold-down.
        self._holddown_at = (now + self.timing.hold_down_s
                             if leader and leader < self.node_id else None)
        self._skip.clear()
        self._arm_follower(now)
        if not self.peers:
            self._deadline = now  # alone: elect ourselves again at once, at a higher epoch
        if leader:
            log.info("node=%d epoch=%d became follower of %d", self.node_id, self.promised_epoch,
                     leader)
        else:
            log.info("node=%d epoch=%d became follower", self.node_id, self.promised_epoch)
        self._out.append(RoleChanged(Role.FOLLOWER, self.promised_epoch, leader))

    def _arm_check_quorum(self, now: float) -> None:
        """A leader's next look at its majority: when the peer that completes it has been
        silent for the election timeout. Without re-arming, the deadline set when it became
        leader stays in the past and every timer fires at once, forever (a busy loop)."""
        timeout = self.timing.election_timeout_s
        heard = sorted(self._heard.values(), reverse=True)
        needed = self.majority - 1  # peers besides ourselves
        if needed <= 0 or len(heard) < needed:
            self._deadline = now + timeout
        else:
            # Just past the instant it drops out of `reach` (which counts t >= now - timeout).
            self._deadline = max(now, heard[needed - 1] + timeout) + CHECK_QUORUM_SLACK_S

    def _arm_follower(self, now: float) -> None:
        self._deadline = now + self.timing.election_timeout_s + self._jitter()

    def _promise(self, epoch: int, leader: int) -> None:
        self.promised_epoch = epoch
        self.promised_leader = leader
        self.max_epoch_seen = max(self.max_epoch_seen, epoch)
        self._out.append(Promise(epoch, leader))

    def _see(self, epoch: int, now: float) -> None:
        self.max_epoch_seen = max(self.max_epoch_seen, epoch)
        if epoch > self.promised_epoch and self.role is Role.LEADER:
            log.info("node=%d epoch=%d saw epoch %d; stepping down", self.node_id,
                     self.promised_epoch, epoch)
            self._become_follower(0, now)

    def _send(self, peer: int, msg: Any, *, durable: bool = False) -> None:
        self._out.append(PeerSend(peer, msg, durable))

    def _jitter(self) -> float:
        return self.rng.uniform(0.0, self.timing.jitter_s)

    def _flush(self) -> list[Output]:
        out, self._out = self._out, []
        return out
