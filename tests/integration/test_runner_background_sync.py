"""The runner with a node core and a real `Storage`, on the real event loop, its fsync held on
the sync thread: the loop goes on taking requests while the disk syncs, and a reply leaves only
once a sync that began after its record was written has ended (runtime/syncer.py)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from tcpsched.core.election import ElectionTiming
from tcpsched.core.events import Connected, Journal, Received, Send, Tick
from tcpsched.core.node import Node, NodeConfig, Recovered
from tcpsched.core.replication import Entry
from tcpsched.runtime.journal import recover
from tcpsched.runtime.journal_lines import decode_entry, encode_line
from tcpsched.runtime.runner import Runner
from tcpsched.runtime.storage import Storage, StorageConfig
from tests.integration.test_runner_durability import RecordingConnection
from tests.unit.test_storage_background import HeldSync, until

CLIENT = 1


class RequestScheduler:
    """Each ("put", x) request journals one record (a no-op `forget`) and answers ("ok", x)."""

    def __init__(self, table: Any, epoch: int, now: float, wall: float) -> None:
        self.table = table

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Any]:
        if isinstance(event, Received) and event.msg[0] == "put":
            record = {"op": "forget", "ids": []}
            self.table.apply(record)
            return [Journal(record), Send(event.conn, ("ok", event.msg[1]))]
        return []

    def next_deadline(self) -> float | None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {}


def start_node(tmp_path: Path) -> tuple[Storage, Node, Runner, RecordingConnection]:
    storage, r = Storage.open(tmp_path, StorageConfig(background_fsync_s=0.0), group=False)
    node = Node(NodeConfig(node_id=1, address="n1", peers={},
                           timing=ElectionTiming(election_timeout_s=1.0)),
                random.Random(1), 0.0,
                Recovered(table=r.table, entries=tuple(Entry(e, s, line) for s, e, line in
                                                       r.entries),
                          base=(r.snapshot_epoch, r.snapshot_seq), commit_seq=r.commit_seq,
                          promised_epoch=r.promise[0], promised_leader=r.promise[1]),
                make_scheduler=RequestScheduler,  # type: ignore[arg-type]
                encode_line=lambda epoch, seq, record: encode_line(seq, record, epoch),
                decode_line=decode_entry)
    conn = RecordingConnection()
    runner = Runner(node, storage, {CLIENT: conn},  # type: ignore[dict-item]
                    peer_send=lambda peer, msg: None)
    return storage, node, runner, conn


async def test_replies_wait_for_the_background_fsync_while_the_loop_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests in two turns while the first fsync is held: neither is answered; once it
    ends the first is, the second only after the next sync; both are on disk."""
    held = HeldSync(monkeypatch)
    storage, _node, runner, conn = start_node(tmp_path)
    runner.feed(Tick())  # alone: leader at once (its epoch record in the first sync)
    await asyncio.sleep(0)
    runner.feed(Connected(CLIENT, "client", "c", "addr"))
    runner.feed(Received(CLIENT, ("put", 1)))
    await asyncio.sleep(0.02)  # the end of turn: written, the sync held
    runner.feed(Received(CLIENT, ("put", 2)))  # the loop still takes requests meanwhile
    # The sync thread reaches its (held) fdatasync in its own time: awaited, not slept on,
    # so a loaded machine that schedules the thread late cannot fail the check below.
    await until(held.started.is_set, "the sync thread's held fdatasync")
    await asyncio.sleep(0.02)
    assert conn.sent == [] and held.calls >= 1
    held.release.set()
    await until(lambda: len(conn.sent) == 2, "both replies")
    assert conn.sent == [("ok", 1), ("ok", 2)]
    assert storage.durable_seq == storage.seq
    runner.stop()
    storage.close()
    assert recover(tmp_path, read_only=True).last_seq == storage.seq


async def test_a_failed_background_fsync_answers_nothing_and_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync thread's fdatasync fails: the journal has failed, the held request is refused
    with an error (never acknowledged), and so is every later one."""
    held = HeldSync(monkeypatch, fail=True)
    storage, _node, runner, conn = start_node(tmp_path)
    reported: list[str] = []
    runner.on_journal_failure = reported.append
    runner.feed(Tick())
    await asyncio.sleep(0)
    runner.feed(Connected(CLIENT, "client", "c", "addr"))
    runner.feed(Received(CLIENT, ("put", 1)))
    await asyncio.sleep(0.02)
    held.release.set()
    await until(lambda: reported, "the failure")
    assert "cannot fsync the journal" in reported[0]
    assert ("ok", 1) not in conn.sent
    runner.feed(Received(CLIENT, ("put", 2)))
    runner.flush_now()
    assert not [msg for msg in conn.sent if isinstance(msg, tuple)]
    runner.stop()
    storage.close()
