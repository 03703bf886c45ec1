"""One coordinator: its role, epoch, log and commit; the scheduler while it leads.

Theory of operation
-------------------
`Node` is the pure object the asyncio shell feeds. It owns the election (`election.py`), the
log and its replication (`replication.py`), the job table, and, only while it leads, the
scheduler, built from the table when leadership begins and dropped when it ends. Like etcd
raft's `Step`, events are handled by role: `_become_leader`, `_become_follower` and
`_become_candidate` reset that role's state, so no handler asks which role it is halfway down.

Records get their identity here: every record the scheduler emits is numbered (epoch, seq) as
the next entry of the log and turned into its journal line at once (`encode_line`); the shell
writes those bytes, and the leader ships the same bytes to its followers.

One scheduling pass per loop turn: the scheduler steps each message of a turn without placing
jobs (`dispatch_per_turn`); `EndOfTurn`, which the shell feeds once the turn's messages are
stepped and before it flushes, runs its one dispatch pass, so the start records join the turn's
write, fsync and Append, and the results of a turn refill their workers together. At low load a
turn holds one message, and the pass runs in that same turn: no added latency.

Three clocks of durability gate what leaves:
* a reply or order to a client or worker waits until everything the node had logged when it
  was made is *committed* (on a majority, durably): nothing shown can be taken back by a
  failover; sends made while nothing is pending leave at once;
* an acknowledgement to a peer (a promise, an append) waits for the next local flush;
* heartbeats, election traffic and replication itself never wait.
The shell reports local durability with `Flushed(seq)`; followers report theirs in AppendAck;
the commit seq follows from both (replication.py).

A node's own stall is not its peers' silence: a tick that comes long after it was due means the
loop itself stopped (a full collection, a slow disk, SIGSTOP), and what the peers sent meanwhile
is still unread; the election judges once that is read (`_on_tick`).

Followers apply entries to their table only once committed, so a follower's table is always a
committed state. A leader applies at once (the scheduler needs its own decisions); a leader that
is deposed with applied but uncommitted entries asks the shell to rebuild its table from disk up
to its commit seq (`Reload`). A restarted node recovers the table up to the last commit mark it
journaled; the entries after that wait in the log to be committed or cut.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from tcpsched.core import messages as m
from tcpsched.core import peer_messages as pm
from tcpsched.core.election import (
    Election,
    ElectionTiming,
    PeerSend,
    Promise,
    Pull,
    Role,
    RoleChanged,
)
from tcpsched.core.events import (
    Close,
    Closed,
    Connected,
    HigherEpoch,
    Journal,
    Received,
    Send,
    Tick,
)
from tcpsched.core.node_events import (  # noqa: F401 (the shell imports them from here)
    Compacted,
    EndOfTurn,
    Flushed,
    JournalFailed,
    NodeEffect,
    PeerClosed,
    PeerReceived,
    ReceiveSnapshot,
    Reload,
    Reloaded,
    SendSnapshot,
    SnapshotInstalled,
    Synced,
    ToPeer,
    Truncate,
    WriteCommit,
    WriteEntries,
    WritePromise,
)
from tcpsched.core.replication import (
    AppendOutcome,
    Entry,
    LeaderReplication,
    Log,
    follower_append,
)

if TYPE_CHECKING:
    import random

    from tcpsched.core.state import JobTable

log = logging.getLogger(__name__)

SNAPSHOT_RESEND_S = 30.0  # a snapshot that brought no acknowledgement by then is sent again
APPLY_BATCH_MAX = 4096  # committed entries decoded together (`decode_entries`)
TICK_LATE_S = 0.05  # a tick this late means our own loop stalled, not that peers fell silent
# After such a stall the election judges this much later: long enough for the loop to have
# read the sockets and run the tasks that step what they read (a turn or two; asyncio runs due
# timers before both), short beside the election timeout.
STALL_RECHECK_S = 0.05


class Leading(Protocol):
    """What the node needs of the scheduler it runs while leading."""

    table: JobTable
    dispatch_per_turn: bool  # dispatch once per loop turn, at EndOfTurn, not once per step

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...
    def statistics(self) -> dict[str, Any]: ...


@attrs.frozen
class NodeConfig:
    node_id: int
    address: str
    peers: Mapping[int, str]  # id -> client-facing address, for redirects
    timing: ElectionTiming = attrs.field(factory=ElectionTiming)
    beat_s: float = 0.1
    window_entries_max: int = 2_000_000  # a safety valve: compaction bounds the window


@attrs.frozen
class Recovered:
    """What the shell read from disk at start."""

    table: JobTable
    entries: tuple[Entry, ...] = ()  # the journal's entries after the snapshot (the window)
    base: tuple[int, int] = (0, 0)  # the snapshot's position
    commit_seq: int = 0
    promised_epoch: int = 0
    promised_leader: int = 0


class Node:
    def __init__(
        self,
        config: NodeConfig,
        rng: random.Random,
        now: float,
        recovered: Recovered,
        *,
        make_scheduler: Callable[[JobTable, int, float, float], Leading],
        encode_line: Callable[[int, int, dict[str, Any]], bytes],
        decode_line: Callable[[bytes], dict[str, Any]],
        decode_entries: Callable[[list[Entry]], list[dict[str, Any]]] | None = None,
    ) -> None:
        """`decode_line` reads one entry with every check (what replay does); the optional
        `decode_entries` reads a batch of committed entries at once, trusting what the leader
        made (runtime/replicated.py); it raises ValueError for a batch it cannot vouch for,
        which is then read again with `decode_line`, one entry at a time."""
        self.config = config
        self.node_id = config.node_id
        self.make_scheduler = make_scheduler
        self.encode_line = encode_line
        self.decode_line = decode_line
        self.decode_entries = decode_entries
        self.log = Log(recovered.base, commit_seq=recovered.base[1],
                       window_entries_max=config.window_entries_max)
        self.log.extend(recovered.entries)
        single = not config.peers
        # Alone, everything journaled is committed; in a group only what was marked so.
        self.log.commit_seq = self.log.last_seq if single else max(
            recovered.base[1], min(recovered.commit_seq, self.log.last_seq))
        self.table = recovered.table
        self.applied_seq = self.log.commit_seq if not single else self.log.last_seq
        self.election = Election(
            config.node_id, [config.node_id, *config.peers], config.timing, rng, now,
            promised_epoch=recovered.promised_epoch, promised_leader=recovered.promised_leader,
        )
        self.scheduler: Leading | None = None
        self.replication: LeaderReplication | None = None
        self.flushed_seq = self.log.last_seq
        self._held_commit: deque[tuple[int, Any]] = deque()
        self._held_flush: list[Any] = []
        self._ack_owed: tuple[int, int, int] | None = None  # (leader, epoch, matched seq)
        self._pulling = 0
        self._reloading = False
        self._conn_roles: dict[int, Connected] = {}
        self._effects: list[Any] = []
        self._commit_marked = self.log.commit_seq
        self._last_beat = -1.0
        self._wall = now
        self._recheck_at: float | None = None  # the election's judgement, put off by a stall
        self.stalls_excused = 0

    # -- queries ------------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.election.role

    @property
    def is_leader(self) -> bool:
        return self.scheduler is not None

    @property
    def epoch(self) -> int:
        return self.election.epoch

    @property
    def wants_flush(self) -> bool:
        """Something waits for the next local flush (a promise's or an append's ack)."""
        return bool(self._held_flush) or self._ack_owed is not None

    @property
    def wants_turn(self) -> bool:
        """The scheduler stepped this turn and owes its dispatch pass at the turn's end."""
        return self.scheduler is not None and getattr(self.scheduler, "dispatch_due", False)

    def leader_address(self) -> str | None:
        leader = self.election.leader_hint()
        if leader == self.node_id:
            return self.config.address
        return self.config.peers.get(leader)

    def snapshot_point(self) -> tuple[int, int] | None:
        """(seq, epoch) the table stands at, if a snapshot may stand there: only while the
        table holds nothing that is not committed."""
        seq = self.applied_seq
        if self._reloading or seq > self.log.commit_seq:
            return None
        epoch = self.log.epoch_at(seq)
        return None if epoch is None else (seq, epoch)

    def next_deadline(self) -> float | None:
        # Asked after every event the runner feeds (a heartbeat among them): no list built.
        # A recheck after a stall stands for the election's deadline, which may have passed.
        deadline = self.election.next_deadline() if self._recheck_at is None else (
            self._recheck_at)
        if self.scheduler is not None:
            beat = self._last_beat + self.config.beat_s
            if beat < deadline:  # noqa: PLR1730 (min() costs more than the rest of this method)
                deadline = beat
            scheduled = self.scheduler.next_deadline()
            if scheduled is not None and scheduled < deadline:
                deadline = scheduled
        return deadline

    def statistics(self, now: float) -> dict[str, Any]:
        e = self.election.statistics(now)
        last_epoch, last_seq = self.log.last
        return {
            "node": self.node_id, "role": e.role, "epoch": e.epoch, "leader": e.leader,
            "last_epoch": last_epoch, "last_seq": last_seq, "commit_seq": self.log.commit_seq,
            "elections": e.elections, "reach": e.reach,
        }

    def coordinators(self, now: float) -> list[dict[str, Any]]:
        """Every configured coordinator as this node sees it (exact for itself)."""
        horizon = now - self.config.timing.election_timeout_s
        lag = self.replication.lag() if self.replication is not None else {}
        progress = self.replication.progress if self.replication is not None else {}
        heard = self.election.heard_at()
        rows = []
        last_seq = self.log.last_seq
        for node_id in sorted([self.node_id, *self.config.peers]):
            if node_id == self.node_id:
                rows.append({"id": node_id, "address": self.config.address,
                             "role": self.role.value, "epoch": self.epoch, "last_seq": last_seq,
                             "commit_seq": self.log.commit_seq, "lag": 0, "reachable": True})
                continue
            reachable = heard.get(node_id, -1.0) >= horizon
            leader = self.election.leader_hint()
            role = "leader" if node_id == leader else ("follower" if reachable else "unknown")
            match = progress[node_id].match if node_id in progress else None
            rows.append({"id": node_id, "address": self.config.peers[node_id], "role": role,
                         "epoch": self.epoch if role != "unknown" else None,
                         "last_seq": match,
                         "commit_seq": None if match is None else min(match, self.log.commit_seq),
                         "lag": lag.get(node_id), "reachable": reachable})
        return rows

    # -- the sans-I/O interface ---------------------------------------------------------------

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Any]:
        """One event at monotonic `now` (and Unix time `wall`, for the times on records)."""
        self._effects = []
        self._wall = now if wall is None else wall
        if type(event) is Received:  # most events are (heartbeats among them): asked first
            self._on_connection(event, now)
        elif isinstance(event, PeerReceived):
            self._on_peer(event.peer, event.msg, now)
        elif isinstance(event, Flushed):
            self._on_flushed(event.seq, now)
        elif isinstance(event, Synced):
            self.flushed_seq = max(self.flushed_seq, min(event.seq, self.log.last_seq))
            if self.replication is not None and self.replication.on_flushed(self.flushed_seq):
                self._committed(now)
        elif isinstance(event, EndOfTurn):
            if self.scheduler is not None and self.wants_turn:
                self._run_scheduler(event, now)  # the turn's one dispatch pass, logged first
            if self.replication is not None:
                self._send_appends(now, heartbeat=False)
        elif isinstance(event, Tick):
            self._on_tick(now)
        elif isinstance(event, PeerClosed):
            self._election(self.election.peer_down(event.peer, now), now)
        elif isinstance(event, Connected | Received | Closed):
            self._on_connection(event, now)
        elif isinstance(event, Compacted):
            if event.seq <= min(self.applied_seq, self.log.commit_seq):
                self.log.trim_through(event.seq)
        elif isinstance(event, SnapshotInstalled):
            self._on_snapshot_installed(event, now)
        elif isinstance(event, JournalFailed):
            self._on_journal_failed(event.reason)
        elif isinstance(event, Reloaded):
            self.table = event.table
            self.applied_seq = event.seq
            self._reloading = False
            self._apply_committed()
        else:
            raise TypeError(f"unknown event {event!r}")
        effects, self._effects = self._effects, []
        return effects

    # -- connections of clients and workers -----------------------------------------------------

    def _on_connection(self, event: Connected | Received | Closed, now: float) -> None:
        if (isinstance(event, Received) and isinstance(event.msg, m.Coordinators)
                and (self.scheduler is not None or not self.election.leader_hint())):
            # The leader knows every follower's progress, so it answers; without a leader
            # anyone does, so a group that cannot elect can still be looked at.
            self._effects.append(Send(event.conn, m.Reply(req_id=event.msg.req_id,
                                                          value=self.coordinators(now))))
            return
        if isinstance(event, Connected):
            self._conn_roles[event.conn] = event
        elif isinstance(event, Closed):
            self._conn_roles.pop(event.conn, None)
        if self.scheduler is not None:
            self._run_scheduler(event, now)
        elif isinstance(event, Received):
            self._redirect(event.conn, event.msg)

    def _redirect(self, conn: int, msg: Any) -> None:
        """Not the leader: say who is, so the sender goes there by itself."""
        hint = self.leader_address()
        req_id = getattr(msg, "req_id", None)
        if isinstance(msg, m.Register):
            # The worker dials the leader next (or, with no hint, the next coordinator).
            self._effects.append(Send(conn, m.Redirect(leader=hint, epoch=self.epoch)))
            self._effects.append(Close(conn, f"not the leader (leader: {hint or 'none yet'})"))
        elif req_id is not None:
            text = f"coordinator {self.node_id} is not the leader" + (
                f"; the leader is {hint}" if hint else "; no leader is elected yet")
            self._effects.append(Send(conn, m.ErrorReply(req_id=req_id, kind="not_leader",
                                                         message=text, leader_hint=hint)))
        else:
            self._effects.append(Close(conn, f"not the leader (leader: {hint or 'none yet'})"))

    def _run_scheduler(self, event: Any, now: float) -> None:
        assert self.scheduler is not None
        higher = 0
        for effect in self.scheduler.step(event, now, self._wall):
            if isinstance(effect, Journal):
                self._log_record(effect.record)
            elif isinstance(effect, Send | Close):
                self._hold_for_commit(effect)
            elif isinstance(effect, HigherEpoch):
                log.warning("node=%d epoch=%d %s", self.node_id, self.epoch, effect.reason)
                higher = max(higher, effect.epoch)
            else:
                self._effects.append(effect)
        if higher:
            # A worker has seen a later epoch than ours: we are behind (a deposed leader, or
            # one started on a fresh or restored data dir). Step down; the next election
            # announces an epoch above it. Alone, that is this node again at once.
            self._election(self.election.observe_epoch(higher, now), now)

    def _log_record(self, record: dict[str, Any]) -> None:
        seq = self.log.last_seq + 1
        entry = self.log.append(self.epoch, self.encode_line(self.epoch, seq, record))
        self.applied_seq = entry.seq
        self._effects.append(WriteEntries((entry,)))

    def _hold_for_commit(self, effect: Any) -> None:
        needed = self.log.last_seq
        if needed <= self.log.commit_seq and not self._held_commit:
            self._effects.append(effect)
        else:
            self._held_commit.append((needed, effect))

    def _release_committed(self) -> None:
        held = self._held_commit
        commit = self.log.commit_seq
        while held and held[0][0] <= commit:
            self._effects.append(held.popleft()[1])

    # -- durability -------------------------------------------------------------------------------

    def _on_flushed(self, seq: int, now: float) -> None:
        self.flushed_seq = max(self.flushed_seq, min(seq, self.log.last_seq))
        released, self._held_flush = self._held_flush, []
        self._effects.extend(released)
        if self._ack_owed is not None:
            leader, epoch, matched = self._ack_owed
            if self.flushed_seq >= matched or matched <= self.log.commit_seq:
                self._ack_owed = None
                self._effects.append(ToPeer(leader, pm.AppendAck(
                    src=self.node_id, epoch=epoch, ok=True,
                    match_seq=min(matched, self.flushed_seq), commit_seq=self.log.commit_seq)))
        if self.replication is not None and self.replication.on_flushed(self.flushed_seq):
            self._committed(now)

    def _on_journal_failed(self, reason: str) -> None:
        """Nothing held will ever be committed here: a reply becomes an error saying it was
        not acknowledged; errors and closes go; orders to workers and peer acks are dropped."""
        held, self._held_commit = self._held_commit, deque()
        self._held_flush = []
        self._ack_owed = None
        for _seq, effect in held:
            if isinstance(effect, Close) or (
                    isinstance(effect, Send) and isinstance(effect.msg, m.ErrorReply)):
                self._effects.append(effect)
            elif isinstance(effect, Send) and isinstance(effect.msg, m.Reply):
                self._effects.append(Send(effect.conn, m.ErrorReply(
                    req_id=effect.msg.req_id, kind="unavailable",
                    message=f"not acknowledged: the coordinator's journal failed ({reason}) "
                            "and it is stopping; retry once it is back")))

    def _committed(self, now: float) -> None:
        self._release_committed()
        if self.log.commit_seq > self._commit_marked and self.config.peers:
            self._commit_marked = self.log.commit_seq
            self._effects.append(WriteCommit(self.log.commit_seq))

    # -- peers ------------------------------------------------------------------------------------

    def _on_peer(self, peer: int, msg: Any, now: float) -> None:
        if peer not in self.config.peers:
            return
        self.election.peer_heard(peer, now)
        if isinstance(msg, pm.Append):
            self._on_append(peer, msg, now)
        elif isinstance(msg, pm.AppendAck):
            self._on_append_ack(peer, msg, now)
        elif isinstance(msg, pm.InstallSnapshot):
            self._on_install(peer, msg, now)
        elif isinstance(msg, pm.Fetch):
            self._on_fetch(peer, msg)
        elif isinstance(msg, pm.FetchReply):
            self._on_fetch_reply(peer, msg, now)
        else:
            self._election(self.election.on_message(peer, msg, now, self.log.last), now)

    def _accept_leader(self, peer: int, epoch: int, now: float) -> bool:
        """Whether `peer` leads `epoch` for us; if not (fenced), it hears our higher epoch."""
        accepted, outs = self.election.leader_contact(peer, epoch, now)
        self._election(outs, now)
        if not accepted:
            self._effects.append(ToPeer(peer, pm.AppendAck(
                src=self.node_id, epoch=max(self.epoch, epoch), ok=False, match_seq=0,
                commit_seq=self.log.commit_seq)))
        return accepted

    def _take(self, outcome: AppendOutcome) -> None:
        """Journal what an accepted append (or a pull) changed in our log: a cut, new entries."""
        if outcome.truncate_after is not None:
            self.flushed_seq = min(self.flushed_seq, outcome.truncate_after)
            self._effects.append(Truncate(outcome.truncate_after))
        if outcome.appended:
            self._effects.append(WriteEntries(outcome.appended))

    def _on_append(self, peer: int, msg: pm.Append, now: float) -> None:
        if not self._accept_leader(peer, msg.epoch, now):
            return
        before_commit = self.log.commit_seq
        outcome = follower_append(self.log, msg)
        if not outcome.ok:
            self._effects.append(ToPeer(peer, pm.AppendAck(
                src=self.node_id, epoch=msg.epoch, ok=False, match_seq=0,
                commit_seq=self.log.commit_seq)))
            return
        self._take(outcome)
        if self.log.commit_seq > before_commit:
            self._apply_committed()
            self._committed(now)
        if outcome.matched_seq <= self.flushed_seq:
            self._effects.append(ToPeer(peer, pm.AppendAck(
                src=self.node_id, epoch=msg.epoch, ok=True, match_seq=outcome.matched_seq,
                commit_seq=self.log.commit_seq)))
        else:
            self._ack_owed = (peer, msg.epoch, outcome.matched_seq)

    def _on_install(self, peer: int, msg: pm.InstallSnapshot, now: float) -> None:
        if not self._accept_leader(peer, msg.epoch, now):
            return
        if msg.snap_seq <= self.log.commit_seq:
            # We hold all of it already (a resend, or it crossed our own catching up).
            if msg.done:
                self._effects.append(ToPeer(peer, pm.AppendAck(
                    src=self.node_id, epoch=msg.epoch, ok=True,
                    match_seq=min(self.flushed_seq, self.log.last_seq),
                    commit_seq=self.log.commit_seq)))
            return
        self._effects.append(ReceiveSnapshot(peer, msg))

    def _on_snapshot_installed(self, event: SnapshotInstalled, now: float) -> None:
        log.info("node=%d epoch=%d installed the snapshot of leader %d at seq=%d",
                 self.node_id, self.epoch, event.leader, event.snap_seq)
        self.log.reset((event.snap_epoch, event.snap_seq), event.snap_seq)
        self.table = event.table
        self.applied_seq = self.flushed_seq = self._commit_marked = event.snap_seq
        self._ack_owed = None
        self._reloading = False
        self._effects.append(ToPeer(event.leader, pm.AppendAck(
            src=self.node_id, epoch=event.epoch, ok=True, match_seq=event.snap_seq,
            commit_seq=event.snap_seq)))

    def _on_append_ack(self, peer: int, msg: pm.AppendAck, now: float) -> None:
        if msg.epoch > self.epoch:
            self._election(self.election.observe_epoch(msg.epoch, now), now)
            return
        if self.replication is None:
            return
        if self.replication.on_ack(peer, msg, now):
            self._committed(now)
        if not msg.ok:
            self._send_appends(now, heartbeat=False)

    def _on_fetch(self, peer: int, msg: pm.Fetch) -> None:
        """A candidate pulls what it lacks before it announces itself."""
        prev_epoch = self.log.epoch_at(msg.after_seq)
        entries = self.log.entries_after(msg.after_seq) if prev_epoch is not None else None
        if entries is None or prev_epoch is None:
            self._effects.append(ToPeer(peer, pm.FetchReply(
                src=self.node_id, ok=False, prev_epoch=0, prev_seq=msg.after_seq, entries=(),
                epochs=(), more=False)))
            return
        more = bool(entries) and entries[-1].seq < self.log.last_seq
        self._effects.append(ToPeer(peer, pm.FetchReply(
            src=self.node_id, ok=True, prev_epoch=prev_epoch, prev_seq=msg.after_seq,
            entries=tuple(e.data for e in entries), epochs=tuple(e.epoch for e in entries),
            more=more)))

    def _on_fetch_reply(self, peer: int, msg: pm.FetchReply, now: float) -> None:
        if peer != self._pulling or self.role is not Role.CANDIDATE:
            return
        if msg.ok:
            outcome = follower_append(self.log, pm.Append(
                src=peer, epoch=self.epoch, prev_epoch=msg.prev_epoch, prev_seq=msg.prev_seq,
                entries=msg.entries, epochs=msg.epochs, commit_seq=0))
            if outcome.ok:
                self._take(outcome)
                if msg.more:
                    self._effects.append(ToPeer(peer, pm.Fetch(src=self.node_id,
                                                               after_seq=self.log.last_seq)))
                    return
        self._pulling = 0
        self._election(self.election.caught_up(now, self.log.last), now)

    # -- election outputs and roles ------------------------------------------------------------

    def _election(self, outs: list[Any], now: float) -> None:
        for out in outs:
            if isinstance(out, Promise):
                self._effects.append(WritePromise(out.epoch, out.leader))
            elif isinstance(out, PeerSend):
                effect = ToPeer(out.peer, out.msg)
                if out.durable:
                    self._held_flush.append(effect)
                else:
                    self._effects.append(effect)
            elif isinstance(out, Pull):
                self._pulling = out.peer
                self._effects.append(ToPeer(out.peer, pm.Fetch(
                    src=self.node_id, after_seq=self.log.commit_seq)))
            elif isinstance(out, RoleChanged):
                if out.role is Role.LEADER:
                    self._become_leader(now)
                elif self.scheduler is not None:
                    self._stop_leading(now)

    def _become_leader(self, now: float) -> None:
        self._apply_all()
        self.replication = LeaderReplication(self.node_id, self.config.peers, self.epoch,
                                             self.log, now, beat_s=self.config.beat_s)
        self.replication.on_flushed(self.flushed_seq)
        self.scheduler = self.make_scheduler(self.table, self.epoch, now, self._wall)
        self.scheduler.dispatch_per_turn = True
        # The epoch's first entry: committing it commits everything before it (Raft's rule),
        # and it is where the epoch lives in the log.
        self._log_record({"op": "epoch", "epoch": self.epoch, "leader": self.node_id})
        for connected in list(self._conn_roles.values()):
            if connected.role == "client":
                self._run_scheduler(connected, now)
            else:
                # Workers that dialled us while we followed were redirected; any left reconnect.
                self._effects.append(Close(connected.conn, "leader changed; register again"))
        self._send_appends(now, heartbeat=True)

    def _stop_leading(self, now: float) -> None:
        log.info("node=%d epoch=%d stops leading", self.node_id, self.epoch)
        self.scheduler = None
        self.replication = None
        # What was never committed is never acknowledged; its senders ask again elsewhere.
        self._held_commit.clear()
        for conn in list(self._conn_roles):
            self._effects.append(Close(conn, "this coordinator is no longer the leader"))
        if self.applied_seq > self.log.commit_seq:
            self._reloading = True
            self._effects.append(Reload(self.log.commit_seq))

    def _apply_committed(self) -> None:
        """Followers apply committed entries only; the table is always a committed state."""
        if self._reloading or self.scheduler is not None:
            return
        self._apply_through(self.log.commit_seq)

    def _apply_all(self) -> None:
        self._apply_through(self.log.last_seq)

    def _apply_through(self, seq: int) -> None:
        while self.applied_seq < seq:
            batch = self._entries_to_apply(seq)
            if not batch:  # behind the window: the shell must reload from disk
                self._reloading = True
                self._effects.append(Reload(seq))
                return
            records: list[dict[str, Any]] | None = None
            if self.decode_entries is not None:
                try:
                    records = self.decode_entries(batch)
                except (ValueError, KeyError, TypeError):
                    records = None  # read again one by one, where the full reader names it
            for i, entry in enumerate(batch):
                try:
                    record = self.decode_line(entry.data) if records is None else records[i]
                    if record.get("op") != "epoch":
                        self.table.apply(record)
                except (ValueError, KeyError, TypeError) as exc:
                    # A committed entry that cannot be applied: this node's table stops there
                    # (it serves nothing stale: only a leader serves), loudly.
                    log.critical("node=%d cannot apply committed entry %d: %s; the table stays "
                                 "at seq=%d", self.node_id, entry.seq, exc, self.applied_seq)
                    self._reloading = True
                    return
                self.applied_seq = entry.seq

    def _entries_to_apply(self, seq: int) -> list[Entry]:
        """The window's entries after the applied seq, up to `seq` (bounded: one decode each
        batch); empty when the next one is no longer in the window."""
        first = self.applied_seq + 1
        last = min(seq, first + APPLY_BATCH_MAX - 1)
        out = []
        for s in range(first, last + 1):
            entry = self.log.entry(s)
            if entry is None:
                break
            out.append(entry)
        return out

    # -- time -----------------------------------------------------------------------------------

    def _on_tick(self, now: float) -> None:
        recheck = self._recheck_at
        if recheck is None:
            due = self.next_deadline()
            late_s = 0.0 if due is None else now - due
            # Alone, nothing can be waiting unread from a peer: a late tick is judged at once.
            judge = late_s <= TICK_LATE_S or not self.config.peers
            if not judge:
                # Our own loop stalled (a long turn, a full collection, a slow disk,
                # SIGSTOP): what the peers sent meanwhile is still unread, and the loop runs
                # due timers before it reads sockets. Judged now, a silence that was ours
                # would pass for the leader's (or a leader's majority's) and start an
                # election or a step-down for nothing. So the election judges once the
                # reads are in; a recheck that is late in turn is judged as it is, so a loop
                # that keeps stalling still elects.
                self._recheck_at = now + STALL_RECHECK_S
                self.stalls_excused += 1
                log.info("node=%d epoch=%d own loop stalled %.2fs; reading what arrived "
                         "before judging the %s", self.node_id, self.epoch, late_s,
                         "majority" if self.scheduler is not None else "leader")
        else:
            judge = now >= recheck  # a scheduler's tick meanwhile leaves the election be
            if judge:
                self._recheck_at = None
        if judge:
            caught_up = self.applied_seq >= self.log.commit_seq and self.log.last_seq >= (
                self.log.commit_seq)
            self._election(self.election.on_tick(now, self.log.last, caught_up), now)
        if self.scheduler is not None:
            if now - self._last_beat >= self.config.beat_s:
                self._send_appends(now, heartbeat=True)
            self._run_scheduler(Tick(), now)

    def _send_appends(self, now: float, *, heartbeat: bool) -> None:
        assert self.replication is not None
        if heartbeat:
            self._last_beat = now
        for peer, append in self.replication.appends(now, heartbeat=heartbeat):
            self._effects.append(ToPeer(peer, append))
        for peer in self.replication.snapshots_due(now, SNAPSHOT_RESEND_S):
            log.info("node=%d epoch=%d peer %d is behind our log window: sending a snapshot",
                     self.node_id, self.epoch, peer)
            self._effects.append(SendSnapshot(peer))
