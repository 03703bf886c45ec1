"""Log replication and commit: the leader's progress per follower, and the follower's append rule.

Theory of operation
-------------------
The log numbers entries 1, 2, ... (seq); each was written in one epoch. `Log` holds a node's
position (the epoch and seq of its last entry), its commit seq, and a bounded window of recent
entries kept for followers that lag (older ones live only in the journal and the snapshot; a
follower that needs them is sent a snapshot instead).

The leader appends entries and keeps one small `Progress` per follower, like etcd raft: `match`,
the highest seq the follower holds durably, and `next`, the next seq to send. Sending is
optimistic (entries stream without waiting for acknowledgements); a refusal moves `next` back to
the follower's commit seq + 1, a point both logs are sure to share, since committed entries are
never changed. The commit seq is derived, never counted on the side: the highest seq that a
majority holds durably (the leader's own match is its flushed seq), counted only when the entry
there belongs to the leader's epoch. That is Raft's rule: an entry of an older epoch becomes
committed only by committing a newer entry above it, which is why a new leader appends an
election record at once.

A follower accepts an Append whose (prev_epoch, prev_seq) is in its log: entries past prev that
conflict with the leader's (another epoch at the same seq) are cut away with everything after
them, the others are appended, and once they are durable it acknowledges its match. A follower
that does not hold prev refuses, with its commit seq.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

import attrs

from tcpsched.core import peer_messages as pm

Position = tuple[int, int]
ENTRIES_PER_APPEND_MAX = 4096
APPENDS_IN_FLIGHT_MAX = 2  # Appends of entries a follower may have unacknowledged
APPEND_BYTES_MAX = 4 * 1024 * 1024


@attrs.frozen
class Entry:
    epoch: int
    seq: int
    data: bytes


# The slots' own setters, which a frozen class's `__setattr__` does not stand in front of.
_new_entry = object.__new__
_set_epoch = Entry.__dict__["epoch"].__set__
_set_seq = Entry.__dict__["seq"].__set__
_set_data = Entry.__dict__["data"].__set__


def entries_of(triples: Iterable[tuple[int, int, bytes]]) -> list[Entry]:
    """`Entry(epoch, seq, data)` of each (seq, epoch, data) triple (a restart's window, read
    from the journal, 100,000 entries and more), its slots filled through their setters:
    attrs' frozen `__init__` looks up and calls `object.__setattr__` for each, twice the
    time."""
    out: list[Entry] = []
    append = out.append
    for seq, epoch, data in triples:
        entry = _new_entry(Entry)
        _set_epoch(entry, epoch)
        _set_seq(entry, seq)
        _set_data(entry, data)
        append(entry)
    return out


class Log:
    """Position, commit seq and a window of the newest entries (bounded by count and bytes)."""

    def __init__(self, base: Position = (0, 0), *, commit_seq: int = 0,
                 window_entries_max: int = 2_000_000,
                 window_bytes_max: int = 512 * 1024 * 1024
                 ) -> None:
        # `base` is the position just before the window's first entry (a snapshot's position,
        # or the last entry dropped from the window); entries are contiguous after it.
        self.base_epoch, self.base_seq = base
        self.entries: deque[Entry] = deque()
        self.commit_seq = commit_seq
        self.window_entries_max = window_entries_max
        self.window_bytes_max = window_bytes_max
        self._bytes = 0

    @property
    def last(self) -> Position:
        if self.entries:
            e = self.entries[-1]
            return e.epoch, e.seq
        return self.base_epoch, self.base_seq

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else self.base_seq

    def epoch_at(self, seq: int) -> int | None:
        """The epoch of entry `seq`, or None when it is not known here (outside the window)."""
        if seq == self.base_seq:
            return self.base_epoch
        if self.base_seq < seq <= self.last_seq:
            return self.entries[seq - self.base_seq - 1].epoch
        return None

    def append(self, epoch: int, data: bytes) -> Entry:
        entry = Entry(epoch, self.last_seq + 1, data)
        self._push(entry)
        return entry

    def extend(self, entries: Sequence[Entry]) -> None:
        """Append entries that follow the last one (a restart's window: 100,000 entries and
        more), in one pass; the caps then keep what `append` one by one would keep (the
        longest suffix within them)."""
        first = self.last_seq + 1
        assert [e.seq for e in entries] == list(range(first, first + len(entries))), first
        self.entries.extend(entries)
        self._bytes += sum([len(e.data) for e in entries])
        self._trim()

    def _push(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._bytes += len(entry.data)
        self._trim()

    def _trim(self) -> None:
        while self.entries and (len(self.entries) > self.window_entries_max
                                or self._bytes > self.window_bytes_max):
            old = self.entries.popleft()
            self._bytes -= len(old.data)
            self.base_epoch, self.base_seq = old.epoch, old.seq

    def truncate_after(self, seq: int) -> None:
        """Cut every entry after `seq`: a deposed leader's or stale follower's unreplicated tail."""
        assert seq >= self.commit_seq, "a committed entry is never cut"
        while self.entries and self.entries[-1].seq > seq:
            self._bytes -= len(self.entries.pop().data)
        self.base_seq = min(self.base_seq, seq)

    def trim_through(self, seq: int) -> None:
        """Drop the entries up to `seq` (a snapshot now covers them): a follower that needs
        them gets that snapshot instead. Compaction bounds the window this way; the count
        and byte caps are only a safety valve."""
        while self.entries and self.entries[0].seq <= seq:
            old = self.entries.popleft()
            self._bytes -= len(old.data)
            self.base_epoch, self.base_seq = old.epoch, old.seq

    def reset(self, base: Position, commit_seq: int) -> None:
        """Start over from a snapshot at `base`: nothing before it is kept here."""
        self.entries.clear()
        self._bytes = 0
        self.base_epoch, self.base_seq = base
        self.commit_seq = commit_seq

    def entries_after(self, seq: int, *, count_max: int = ENTRIES_PER_APPEND_MAX,
                      bytes_max: int = APPEND_BYTES_MAX) -> list[Entry] | None:
        """Entries from seq + 1 on (bounded), or None when the window no longer reaches back."""
        if seq < self.base_seq:
            return None
        out: list[Entry] = []
        size = 0
        start = seq - self.base_seq
        for i in range(start, min(len(self.entries), start + count_max)):
            entry = self.entries[i]
            if out and size + len(entry.data) > bytes_max:
                break
            out.append(entry)
            size += len(entry.data)
        return out

    def entry(self, seq: int) -> Entry | None:
        if self.base_seq < seq <= self.last_seq:
            return self.entries[seq - self.base_seq - 1]
        return None


@attrs.define
class Progress:
    """What the leader knows of one follower."""

    match: int = 0
    next: int = 1
    needs_snapshot: bool = False
    snapshot_sent_at: float | None = None  # a snapshot is on its way since then
    last_sent_at: float = -1.0
    sent_commit: int = 0
    # The last seq of each Append of entries sent and not yet acknowledged, oldest first:
    # while `APPENDS_IN_FLIGHT_MAX` are on their way, new entries wait (see `appends`).
    in_flight: list[int] = attrs.field(factory=list)


class LeaderReplication:
    """The leader's side: stream entries, track matches, derive the commit seq."""

    def __init__(self, node_id: int, peers: Iterable[int], epoch: int, log: Log, now: float,
                 *, beat_s: float = 0.1) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.log = log
        self.beat_s = beat_s
        self.progress = {p: Progress(match=0, next=log.last_seq + 1) for p in peers}
        self.majority = (len(self.progress) + 1) // 2 + 1
        self.flushed_seq = 0

    def on_flushed(self, seq: int) -> bool:
        """Our own entries up to `seq` are durable. True if the commit seq moved."""
        self.flushed_seq = max(self.flushed_seq, seq)
        return self._advance_commit()

    def on_ack(self, peer: int, ack: pm.AppendAck, now: float) -> bool:
        """A follower answered. True if the commit seq moved."""
        progress = self.progress.get(peer)
        if progress is None or ack.epoch != self.epoch:
            return False
        if ack.ok:
            if ack.match_seq > progress.match:
                progress.match = min(ack.match_seq, self.log.last_seq)
            progress.next = max(progress.next, progress.match + 1)
            if progress.in_flight:
                _acknowledged(progress)
            return self._advance_commit()
        # Its log does not hold what we sent after: go back to what is surely shared.
        progress.match = min(progress.match, ack.commit_seq)
        progress.next = min(progress.next, ack.commit_seq + 1)
        progress.in_flight.clear()
        return False

    def _advance_commit(self) -> bool:
        matches = sorted([self.flushed_seq, *(p.match for p in self.progress.values())],
                         reverse=True)
        candidate = matches[self.majority - 1]
        if candidate > self.log.commit_seq and self.log.epoch_at(candidate) == self.epoch:
            self.log.commit_seq = candidate
            return True
        return False

    def appends(self, now: float, *, heartbeat: bool = False) -> list[tuple[int, pm.Append]]:
        """One Append per follower that has entries waiting (or is due a heartbeat)."""
        out: list[tuple[int, pm.Append]] = []
        for peer, progress in self.progress.items():
            # New entries, or a beat. A commit seq the follower has not heard rides on the next
            # entries or the next beat: sent on its own after every ack, it was half of all
            # Appends under load, each one a decode, a step and an ack on both sides. New
            # entries also wait while `APPENDS_IN_FLIGHT_MAX` Appends are unacknowledged: the
            # follower journals and fsyncs what it reads in one turn together, so two on their
            # way keep it busy (the next one is there when its fsync ends) and more only add
            # Appends; at low load, when acks come back before the next entries, nothing
            # waits. A beat sends whatever waits, so a lost Append is found (refused) within a
            # beat, as before.
            waiting = (progress.next <= self.log.last_seq
                       and len(progress.in_flight) < APPENDS_IN_FLIGHT_MAX)
            due = heartbeat and (
                now - progress.last_sent_at >= self.beat_s
                or progress.sent_commit < min(self.log.commit_seq, progress.match))
            if not waiting and not due:
                continue
            prev = progress.next - 1
            prev_epoch = self.log.epoch_at(prev)
            entries = self.log.entries_after(prev) if prev_epoch is not None else None
            if entries is None or prev_epoch is None:
                progress.needs_snapshot = True
                continue
            progress.needs_snapshot = False
            progress.snapshot_sent_at = None
            progress.last_sent_at = now
            progress.sent_commit = self.log.commit_seq
            if entries:
                progress.next = entries[-1].seq + 1
                progress.in_flight.append(entries[-1].seq)
            out.append((peer, pm.Append(
                src=self.node_id, epoch=self.epoch, prev_epoch=prev_epoch, prev_seq=prev,
                entries=tuple(e.data for e in entries), epochs=tuple(e.epoch for e in entries),
                commit_seq=self.log.commit_seq,
            )))
        return out

    def snapshot_installed(self, peer: int, seq: int) -> None:
        progress = self.progress[peer]
        progress.match = max(progress.match, seq)
        progress.next = max(progress.next, seq + 1)
        _acknowledged(progress)
        progress.needs_snapshot = False
        progress.snapshot_sent_at = None

    def snapshots_due(self, now: float, resend_s: float) -> list[int]:
        """Followers that need a snapshot and have none on its way (or one given up on)."""
        due = []
        for peer, progress in self.progress.items():
            if progress.needs_snapshot and (progress.snapshot_sent_at is None
                                            or now - progress.snapshot_sent_at > resend_s):
                progress.snapshot_sent_at = now
                due.append(peer)
        return due

    def lag(self) -> dict[int, int]:
        return {p: self.log.last_seq - pr.match for p, pr in self.progress.items()}


def _acknowledged(progress: Progress) -> None:
    """Forget the Appends on their way to a follower that its match now covers."""
    in_flight = progress.in_flight
    while in_flight and in_flight[0] <= progress.match:
        del in_flight[0]


@attrs.frozen
class AppendOutcome:
    """What a follower does with an Append: cut its log after `truncate_after` (None: nothing to
    cut), then journal `appended`; `ok` False: refuse, answering with our commit seq."""

    ok: bool
    truncate_after: int | None = None
    appended: tuple[Entry, ...] = ()
    matched_seq: int = 0
    commit_seq: int = 0


def follower_append(log: Log, msg: pm.Append) -> AppendOutcome:
    """The follower's rule, applied to `log` in place (the node journals what it returns)."""
    if log.epoch_at(msg.prev_seq) != msg.prev_epoch:
        if msg.prev_seq < log.base_seq and msg.prev_seq <= log.commit_seq:
            # Older than our window but committed here: committed entries match everywhere.
            pass
        else:
            return AppendOutcome(ok=False, commit_seq=log.commit_seq)
    truncate: int | None = None
    new: list[Entry] = []
    seq = msg.prev_seq
    for data, epoch in zip(msg.entries, msg.epochs, strict=True):
        seq += 1
        if seq <= log.base_seq:
            continue
        if truncate is None and not new:
            have = log.epoch_at(seq)
            if have == epoch:
                continue  # already held (a resend)
            if have is not None:
                truncate = seq - 1
                if truncate < log.commit_seq:
                    # Only a broken leader sends something else where we committed: refuse.
                    return AppendOutcome(ok=False, commit_seq=log.commit_seq)
                log.truncate_after(truncate)
        new.append(Entry(epoch, seq, data))
    log.extend(new)
    matched = msg.prev_seq + len(msg.entries)
    log.commit_seq = max(log.commit_seq, min(msg.commit_seq, matched))
    return AppendOutcome(ok=True, truncate_after=truncate, appended=tuple(new),
                         matched_seq=matched, commit_seq=log.commit_seq)
