"""A follower's cheap reading of replicated entries: the same records the full reader gives, a
refusal of any line that is not the entry it claims to be, and a node that then falls back to
the full reader and stops its table at the bad entry."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import peer_messages as pm
from tcpsched.core.node import Node, NodeConfig, PeerReceived, Recovered
from tcpsched.core.replication import Entry
from tcpsched.core.state import JobTable
from tcpsched.runtime.journal_lines import decode_entry, encode_line
from tcpsched.runtime.replicated import decode_entries
from tests.unit.test_state import Driver, operations, table_state


def _entries(records: list[dict[str, Any]], epoch: int = 2, first: int = 1) -> list[Entry]:
    return [Entry(epoch, seq, encode_line(seq, record, epoch))
            for seq, record in enumerate(records, first)]


def _scheduler_records(ops: list[tuple[Any, ...]], seed: int) -> list[dict[str, Any]]:
    driver = Driver(seed)
    for op in ops:
        driver.run(op)
    return [{"op": "epoch", "epoch": 2, "leader": 3}, *driver.records]


@settings(max_examples=100, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**16), batch=st.integers(1, 40))
def test_a_batch_reads_as_the_full_reader_reads_each_line(ops: list[tuple[Any, ...]],
                                                          seed: int, batch: int) -> None:
    """Any run of a scheduler's records, read in batches of any size, gives exactly the
    records `decode_entry` gives line by line, and applying them builds the same table."""
    entries = _entries(_scheduler_records(ops, seed))
    fast: list[dict[str, Any]] = []
    for i in range(0, len(entries), batch):
        fast += decode_entries(entries[i : i + batch])
    full = [decode_entry(e.data) for e in entries]
    assert fast == full
    tables = JobTable(), JobTable()
    for table, records in zip(tables, (fast, [decode_entry(e.data) for e in entries]),
                              strict=True):
        for record in records:
            if record["op"] != "epoch":
                table.apply(record)
    assert table_state(tables[0]) == table_state(tables[1])


def test_bytes_and_wide_integers_come_back_exactly() -> None:
    """User values JSON cannot carry as they are (bytes, integers past 64 bits) survive."""
    record = {"op": "finish", "id": "a" * 12, "attempt": 1, "state": "succeeded", "at": 5.0,
              "result": [b"\x00\xff", 2**70, -(2**65), 1.5]}
    (entry,) = _entries([record])
    assert decode_entries([entry]) == [decode_entry(entry.data)]
    assert decode_entries([entry])[0]["result"] == [b"\x00\xff", 2**70, -(2**65), 1.5]
    # A line recovered from disk comes without its newline; an old line has no epoch.
    bare = Entry(entry.epoch, entry.seq, entry.data.rstrip(b"\n"))
    old = Entry(0, 1, encode_line(1, record))
    assert decode_entries([bare]) == decode_entries([old]) == [decode_entry(entry.data)]


@pytest.mark.parametrize("result", [
    {"$t": 1}, {"$t": b"x", "k": "v"}, ['"$t"', "\\u0024t"], {"caf\u00e9": "$t"}, "plain",
])
def test_tag_like_user_values_read_as_the_full_reader_reads_them(result: Any) -> None:
    """Whether a batch holds a tagged value or only text that looks like one, the records
    are exactly what `decode_entry` gives."""
    records = [{"op": "finish", "id": "a" * 12, "attempt": 1, "state": "succeeded",
                "at": 5.0, "result": result}, {"op": "forget", "ids": []}]
    entries = [Entry(2, seq, encode_line(seq, r, 2))
               for seq, r in enumerate(records, 1)]
    assert decode_entries(entries) == [decode_entry(e.data) for e in entries]
    assert decode_entries(entries)[0]["result"] == result


def _altered(entry: Entry, old: bytes, new: bytes) -> Entry:
    assert old in entry.data
    return Entry(entry.epoch, entry.seq, entry.data.replace(old, new, 1))


@pytest.mark.parametrize("change", ["payload", "seq", "epoch", "torn", "merged"])
def test_a_line_that_is_not_its_entry_is_refused(change: str) -> None:
    """An altered record, a line of another position or epoch, a cut line: ValueError."""
    entries = _entries([{"op": "forget", "ids": ["a" * 12]}, {"op": "forget", "ids": []}])
    first, second = entries
    if change == "payload":
        bad = [_altered(first, b"a" * 12, b"b" * 12), second]
    elif change == "seq":
        bad = [first, Entry(second.epoch, 3, second.data)]
    elif change == "epoch":
        bad = [first, Entry(5, second.seq, second.data)]
    elif change == "torn":
        bad = [Entry(first.epoch, first.seq, first.data[:-3]), second]
    else:  # one line cut so that it swallows the next one: still one count short
        bad = [Entry(first.epoch, first.seq, first.data[:-3] + b"," + second.data), second]
    with pytest.raises(ValueError):
        decode_entries(bad)
    assert decode_entries(entries) == [decode_entry(e.data) for e in entries]


def _follower() -> Node:
    config = NodeConfig(node_id=1, address="n1", peers={2: "n2", 3: "n3"})
    return Node(config, random.Random(1), 0.0, Recovered(table=JobTable()),
                make_scheduler=None,  # type: ignore[arg-type]
                encode_line=lambda epoch, seq, record: encode_line(seq, record, epoch),
                decode_line=decode_entry, decode_entries=decode_entries)


def _append(entries: list[Entry], prev: int, commit: int) -> PeerReceived:
    return PeerReceived(3, pm.Append(
        src=3, epoch=2, prev_epoch=2 if prev else 0, prev_seq=prev,
        entries=tuple(e.data for e in entries), epochs=tuple(e.epoch for e in entries),
        commit_seq=commit))


def test_a_follower_applies_committed_batches_as_a_replay_would() -> None:
    """Entries committed in batches leave the follower's table equal to a line-by-line replay."""
    driver = Driver(7)
    for op in [("register", "w1", 2), ("submit", 0, 1, 0), ("submit", 1, b"x", 1),
               ("result", 0, "succeeded", 2**70), ("submit", 2, "y", 0), ("advance", 0.7),
               ("result", 1, "failed", None), ("cancel", 0)]:
        driver.run(op)
    records = [{"op": "epoch", "epoch": 2, "leader": 3}, *driver.records]
    entries = _entries(records)
    node = _follower()
    node.step(_append(entries[:3], 0, 0), 1.0)
    node.step(_append(entries[3:], 3, 3), 1.1)
    assert node.applied_seq == 3
    node.step(_append([], len(entries), len(entries)), 1.2)
    assert node.applied_seq == len(entries)
    replayed = JobTable()
    for entry in entries[1:]:
        replayed.apply(decode_entry(entry.data))
    assert table_state(node.table) == table_state(replayed)
    assert table_state(node.table) == table_state(driver.sched.table)


def test_a_bad_committed_entry_stops_the_table_just_before_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """The batch is refused, the full reader names the entry, and the entries before it are
    applied: the table stays at the last good seq, loudly."""
    entries = _entries([{"op": "epoch", "epoch": 2, "leader": 3},
                        {"op": "forget", "ids": []}, {"op": "forget", "ids": []},
                        {"op": "forget", "ids": []}])
    entries[2] = _altered(entries[2], b'"ids":[]', b'"ids":[1]')
    node = _follower()
    with caplog.at_level(logging.CRITICAL, logger="tcpsched.core.node"):
        node.step(_append(entries, 0, 4), 1.0)
    assert node.applied_seq == 2
    assert "cannot apply committed entry 3" in caplog.text
