"""The runner's group commit when the journal fails: in process, on the real event loop, with a
real `Storage` (its fsync failing) or a sink that raises, and connections that record what
would have been sent. A reply must never leave before its record is durable, on any path."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tcpsched.core import messages as m
from tcpsched.core.events import Close, Effect, Journal, Received, Send
from tcpsched.runtime.runner import Runner
from tcpsched.runtime.storage import Storage

FORGET = {"op": "forget", "ids": []}
CLIENT, WORKER = 1, 2


class RecordingConnection:
    """Stands for a Connection: keeps what was sent and whether it was closed."""

    def __init__(self) -> None:
        self.peer = "127.0.0.1:1"
        self.sent: list[Any] = []
        self.closed: str | None = None

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def flush(self) -> None:
        pass

    def close(self, reason: str = "", abort: bool = False) -> None:
        self.closed = reason


class RequestCore:
    """Each request (a Received whose msg is a req_id) journals one record and answers with a
    Reply, an ErrorReply for a second request, an order to a worker, and a close."""

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Effect]:
        if not isinstance(event, Received):
            return []
        req_id = event.msg
        return [Journal(FORGET), Send(event.conn, m.Reply(req_id=req_id, value="done")),
                Send(event.conn, m.ErrorReply(req_id=req_id + 1, kind="not_found",
                                              message="no job")),
                Send(WORKER, m.ResultAck(job_id="j1", attempt=1, epoch=1)), Close(3, "bye")]

    def next_deadline(self) -> float | None:
        return None


class FailingSink:
    """A journal sink whose flush raises a plain OSError, as a full disk does."""

    def __init__(self) -> None:
        self.flushes = 0

    def append(self, record: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        self.flushes += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def make_runner(journal: Any) -> tuple[Runner, dict[int, RecordingConnection], list[str]]:
    connections = {n: RecordingConnection() for n in (CLIENT, WORKER, 3)}
    runner = Runner(RequestCore(), journal, connections)  # type: ignore[arg-type]
    reported: list[str] = []
    runner.on_journal_failure = reported.append
    return runner, connections, reported


def assert_refused(sent: list[Any], req_id: int) -> None:
    """The request's reply became an `unavailable` error; the error reply went as it was."""
    assert [type(msg) for msg in sent] == [m.ErrorReply, m.ErrorReply], sent
    refusal, error = sent
    assert refusal.req_id == req_id and refusal.kind == "unavailable"
    assert "not acknowledged" in refusal.message
    assert error.kind == "not_found"


async def test_a_failed_fsync_sends_no_reply_at_the_turn_or_at_shutdown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The turn whose fsync fails answers its request with an error, sends no order to a
    worker, and the shutdown's flush_now afterwards sends no held reply either."""
    storage, _ = Storage.open(tmp_path)

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    runner, connections, reported = make_runner(storage)
    runner.feed(Received(CLIENT, 10))
    await asyncio.sleep(0)  # one loop turn: the end of turn runs
    runner.flush_now()  # the shutdown path
    assert_refused(connections[CLIENT].sent, 10)
    assert connections[WORKER].sent == []
    assert connections[3].closed == "bye"
    assert len(reported) == 1 and "Input/output error" in reported[0]
    assert runner.journal_failure == reported[0]
    runner.stop()
    storage.close()


async def test_after_a_journal_failure_every_later_request_is_refused_too(
        tmp_path: Path) -> None:
    """A plain OSError from the sink takes the same path; later turns do not try the journal
    again and refuse their requests as well; the failure is reported once."""
    sink = FailingSink()
    runner, connections, reported = make_runner(sink)
    runner.feed(Received(CLIENT, 10))
    await asyncio.sleep(0)
    runner.feed(Received(CLIENT, 20))
    runner.flush_now()
    sent = connections[CLIENT].sent
    assert_refused(sent[:2], 10)
    assert_refused(sent[2:], 20)
    assert connections[WORKER].sent == [] and sink.flushes == 1
    assert reported == ["No space left on device"]
    runner.stop()
