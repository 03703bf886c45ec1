"""Log replication and commit, one test per rule of `tcpsched/core/replication.py`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import peer_messages as pm
from tcpsched.core.replication import Entry, LeaderReplication, Log, entries_of, follower_append


def leader_with(entries: list[tuple[int, bytes]], epoch: int, peers: tuple[int, ...] = (1, 2)
                ) -> LeaderReplication:
    log = Log()
    for e, data in entries:
        log.append(e, data)
    return LeaderReplication(3, peers, epoch, log, 0.0)


def ack(peer: int, epoch: int, match: int, *, ok: bool = True, commit: int = 0) -> pm.AppendAck:
    return pm.AppendAck(src=peer, epoch=epoch, ok=ok, match_seq=match, commit_seq=commit)


def append(prev: tuple[int, int], entries: list[tuple[int, bytes]], commit: int = 0,
           epoch: int = 1) -> pm.Append:
    return pm.Append(src=3, epoch=epoch, prev_epoch=prev[0], prev_seq=prev[1],
                     entries=tuple(d for _, d in entries), epochs=tuple(e for e, _ in entries),
                     commit_seq=commit)


def test_commit_needs_a_majority_holding_the_entry_durably() -> None:
    """Rule: a record is committed once a majority (leader included) has it durably."""
    leader = leader_with([(1, b"a"), (1, b"b")], epoch=1)
    assert not leader.on_flushed(2)
    assert leader.log.commit_seq == 0
    assert leader.on_ack(1, ack(1, 1, 1), 0.1)
    assert leader.log.commit_seq == 1
    leader.on_ack(2, ack(2, 1, 2), 0.2)
    assert leader.log.commit_seq == 2


def test_the_leaders_copy_counts_only_once_flushed() -> None:
    """Rule: the leader's own match is its flushed seq, not what it has appended."""
    leader = leader_with([(1, b"a")], epoch=1, peers=(1, 2, 4, 5))
    leader.on_ack(1, ack(1, 1, 1), 0.1)
    leader.on_ack(2, ack(2, 1, 1), 0.1)
    assert leader.log.commit_seq == 0  # 2 of 5 hold it: the leader's copy is not durable yet
    assert leader.on_flushed(1)
    assert leader.log.commit_seq == 1


def test_entries_of_an_older_epoch_commit_only_under_a_current_one() -> None:
    """Rule: count a majority only for an entry of the leader's own epoch (Raft's rule)."""
    leader = leader_with([(1, b"old")], epoch=2)
    leader.on_flushed(1)
    leader.on_ack(1, ack(1, 2, 1), 0.1)
    assert leader.log.commit_seq == 0
    leader.log.append(2, b"election")
    leader.on_flushed(2)
    leader.on_ack(1, ack(1, 2, 2), 0.2)
    assert leader.log.commit_seq == 2


def test_acks_of_another_epoch_are_ignored() -> None:
    """Rule: an acknowledgement counts only for the epoch it was given in."""
    leader = leader_with([(2, b"a")], epoch=2)
    leader.on_flushed(1)
    assert not leader.on_ack(1, ack(1, 1, 1), 0.1)
    assert leader.log.commit_seq == 0


def test_follower_refuses_an_append_whose_prev_it_lacks() -> None:
    """Rule: a follower that does not hold prev refuses, with its commit seq."""
    log = Log()
    log.append(1, b"a")
    log.commit_seq = 1
    outcome = follower_append(log, append((1, 5), [(1, b"x")]))
    assert not outcome.ok and outcome.commit_seq == 1
    assert log.last == (1, 1)


def test_leader_resends_from_the_followers_commit_after_a_refusal() -> None:
    """Rule: a refusal moves next back to the follower's commit seq + 1."""
    leader = leader_with([(1, b"a"), (1, b"b"), (1, b"c")], epoch=1)
    leader.appends(0.0)
    assert leader.progress[1].next == 4
    leader.on_ack(1, ack(1, 1, 0, ok=False, commit=1), 0.1)
    assert leader.progress[1].next == 2
    sends = dict(leader.appends(0.2))
    assert sends[1].prev_seq == 1 and sends[1].entries == (b"b", b"c")


def test_follower_cuts_a_conflicting_tail_and_appends() -> None:
    """Rule: entries past prev that conflict are cut away with everything after them."""
    log = Log()
    for data in (b"a", b"stale1", b"stale2"):
        log.append(1, data)
    log.commit_seq = 1
    outcome = follower_append(log, append((1, 1), [(2, b"b"), (2, b"c")], commit=2, epoch=2))
    assert outcome.ok and outcome.truncate_after == 1
    assert [e.data for e in log.entries] == [b"a", b"b", b"c"]
    assert log.last == (2, 3) and log.commit_seq == 2


def test_a_resent_append_changes_nothing() -> None:
    """Rule: entries the follower already holds (same seq, same epoch) are not written again."""
    log = Log()
    follower_append(log, append((0, 0), [(1, b"a"), (1, b"b")]))
    outcome = follower_append(log, append((0, 0), [(1, b"a"), (1, b"b")]))
    assert outcome.ok and outcome.appended == () and outcome.truncate_after is None
    assert len(log.entries) == 2


def test_follower_commit_is_the_leaders_bounded_by_what_matched() -> None:
    """Rule: a follower commits min(leader's commit seq, last entry known to match)."""
    log = Log()
    for data in (b"a", b"b", b"c"):
        log.append(1, data)
    outcome = follower_append(log, append((1, 1), [], commit=3))
    assert outcome.ok and log.commit_seq == 1


def test_a_committed_entry_is_never_cut() -> None:
    """Rule: no committed record is ever changed: an Append contradicting one is refused."""
    log = Log()
    log.append(1, b"a")
    log.append(1, b"b")
    log.commit_seq = 2
    outcome = follower_append(log, append((1, 1), [(2, b"other")], epoch=2))
    assert not outcome.ok
    assert [e.data for e in log.entries] == [b"a", b"b"]


def test_a_follower_behind_the_window_needs_a_snapshot() -> None:
    """Rule: a follower that lags behind the leader's window is sent a snapshot instead."""
    log = Log(window_entries_max=3)
    for i in range(10):
        log.append(1, b"%d" % i)
    leader = LeaderReplication(3, (1, 2), 1, log, 0.0)
    leader.progress[1].next = 2
    sends = dict(leader.appends(0.0))
    assert 1 not in sends and leader.progress[1].needs_snapshot
    leader.snapshot_installed(1, 10)
    assert not leader.progress[1].needs_snapshot and leader.progress[1].next == 11


def test_heartbeats_only_when_due() -> None:
    """Rule: with nothing to send, a follower gets an empty Append once per beat interval."""
    leader = leader_with([], epoch=1)
    assert len(leader.appends(0.0, heartbeat=True)) == 2
    assert leader.appends(0.05, heartbeat=True) == []
    beats = leader.appends(0.2, heartbeat=True)
    assert len(beats) == 2 and all(a.entries == () for _, a in beats)


def test_a_new_commit_seq_rides_on_the_next_entries_or_the_next_beat() -> None:
    """Rule: an ack that moves the commit seq sends nothing on its own (under load, such
    commit-only Appends were half of all Appends); followers hear the commit seq with the next
    entries, or at the next beat when there are none, even within the beat interval."""
    leader = leader_with([], epoch=1)
    leader.log.append(1, b"a")
    leader.on_flushed(1)
    assert [(a.entries, a.commit_seq) for _, a in leader.appends(0.0)] == [((b"a",), 0)] * 2
    assert leader.on_ack(1, ack(1, 1, 1), 0.01) and leader.log.commit_seq == 1
    leader.on_ack(2, ack(2, 1, 1), 0.01)
    assert leader.appends(0.02) == []
    leader.log.append(1, b"b")
    assert [(a.entries, a.commit_seq) for _, a in leader.appends(0.03)] == [((b"b",), 1)] * 2
    leader.on_flushed(2)
    leader.on_ack(1, ack(1, 1, 2), 0.04)
    assert leader.log.commit_seq == 2 and leader.appends(0.05) == []
    # A beat tick before the interval has passed since the last send: only the follower that
    # holds seq 2 without knowing it is committed gets an (empty) Append.
    beats = leader.appends(0.06, heartbeat=True)
    assert [(peer, a.entries, a.commit_seq) for peer, a in beats] == [(1, (), 2)]


def test_new_entries_wait_while_two_appends_are_unacknowledged() -> None:
    """Rule: while APPENDS_IN_FLIGHT_MAX (2) Appends of entries to a follower are
    unacknowledged, new entries wait, then go in one Append once an ack comes (the follower
    fsyncs once per turn whatever it reads, so more on their way only add Appends); a beat
    sends what waits, and a refusal ends the wait."""
    leader = leader_with([], epoch=1, peers=(1,))
    leader.log.append(1, b"a")
    assert [a.entries for _, a in leader.appends(0.0)] == [(b"a",)]
    leader.log.append(1, b"b")
    assert [a.entries for _, a in leader.appends(0.01)] == [(b"b",)]
    leader.log.append(1, b"c")
    assert leader.appends(0.02) == []
    leader.log.append(1, b"d")
    assert leader.appends(0.02) == []
    leader.on_ack(1, ack(1, 1, 1), 0.03)  # a is in: one place frees
    assert [(a.prev_seq, a.entries) for _, a in leader.appends(0.03)] == [(2, (b"c", b"d"))]
    leader.log.append(1, b"e")
    assert leader.appends(0.04) == []
    # The Appends of b and of c, d are lost: the beat sends e after them, which is refused.
    beat = leader.appends(0.2, heartbeat=True)
    assert [(a.prev_seq, a.entries) for _, a in beat] == [(4, (b"e",))]
    leader.on_ack(1, ack(1, 1, 0, ok=False, commit=1), 0.21)
    assert [(a.prev_seq, a.entries) for _, a in leader.appends(0.21)] == [
        (1, (b"b", b"c", b"d", b"e"))]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4), st.booleans()), max_size=40))
def test_followers_converge_on_the_leaders_log(ops: list[tuple[int, int, bool]]) -> None:
    """Log matching: whatever appends are lost, re-sent appends leave each follower a prefix of
    the leader's log, and the commit seq never passes what a majority holds."""
    leader = leader_with([], epoch=1, peers=(1, 2))
    followers = {1: Log(), 2: Log()}
    for count, peer_bits, lose in ops:
        for _ in range(count):
            leader.log.append(1, b"x")
        leader.on_flushed(leader.log.last_seq)
        for peer, msg in leader.appends(1.0, heartbeat=True):
            if lose and peer_bits & peer:
                continue
            outcome = follower_append(followers[peer], msg)
            leader.on_ack(peer, pm.AppendAck(
                src=peer, epoch=1, ok=outcome.ok, match_seq=outcome.matched_seq,
                commit_seq=followers[peer].commit_seq), 1.0)
    for log in followers.values():
        for entry in log.entries:
            assert leader.log.entry(entry.seq) == entry
        assert log.commit_seq <= leader.log.commit_seq
    holders = sum(1 for log in followers.values() if log.last_seq >= leader.log.commit_seq) + 1
    assert holders >= 2


@given(sizes=st.lists(st.integers(0, 9), max_size=30), entries_max=st.integers(1, 12),
       bytes_max=st.integers(0, 40), base=st.integers(0, 5))
def test_a_restarts_window_is_what_appends_one_by_one_keep(
        sizes: list[int], entries_max: int, bytes_max: int, base: int) -> None:
    """Rule: the window a restart extends in one pass (entries built by `entries_of`) holds
    what appending its entries one by one holds: the same entries, base and size, within
    both caps."""
    triples = [(base + i + 1, 1 + i // 4, b"x" * size) for i, size in enumerate(sizes)]
    built = entries_of(triples)
    assert built == [Entry(epoch, seq, data) for seq, epoch, data in triples]
    assert [repr(e) for e in built] == [repr(Entry(e, s, d)) for s, e, d in triples]
    logs = [Log((1, base), window_entries_max=entries_max, window_bytes_max=bytes_max)
            for _ in range(2)]
    logs[0].extend(built)
    for _, epoch, data in triples:
        logs[1].append(epoch, data)
    for log in logs:
        assert len(log.entries) <= entries_max and log._bytes <= bytes_max
    one_pass, one_by_one = ((log.entries, log.base_epoch, log.base_seq, log._bytes)
                            for log in logs)
    assert one_pass == one_by_one
