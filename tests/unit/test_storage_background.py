"""The journal's fsync beside the event loop (`Storage.flush_background`, runtime/syncer.py):
on a real loop with a real data directory, the sync thread's fdatasync held or failed at will.
What is reported durable must be durable: never a seq written after the sync began, never
after a failure, never past a cut."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tcpsched.errors import JournalError
from tcpsched.runtime import syncer
from tcpsched.runtime.journal import recover
from tcpsched.runtime.storage import Storage, StorageConfig

FORGET = {"op": "forget", "ids": []}
BESIDE = StorageConfig(background_fsync_s=0.0)  # every fsync beside the loop


class HeldSync:
    """Replaces the sync thread's fdatasync: each call waits until released (and fails if told
    to), and counts; the loop thread's own synchronous ones go through untouched."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.fail = fail
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            if threading.current_thread() is threading.main_thread():
                return real(fd)
            self.calls += 1
            self.started.set()
            self.release.wait(10)
            if self.fail:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(fd)

        monkeypatch.setattr(syncer.os, "fdatasync", fdatasync)


async def until(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_written_records_are_reported_durable_once_the_background_sync_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records are written at once; `synced(seq)` comes only after the fdatasync ended,
    and what was written while it ran goes into the next sync, reported after that one."""
    storage, _ = Storage.open(tmp_path, BESIDE)
    held = HeldSync(monkeypatch)
    loop = asyncio.get_running_loop()
    reports: list[int | None] = []
    storage.append(FORGET)
    storage.append(FORGET)
    assert storage.flush_background(loop.call_soon_threadsafe, reports.append) is True
    assert storage.writes == 1  # written now, before the fsync
    await asyncio.to_thread(held.started.wait, 10)
    storage.append(FORGET)  # written while the first sync runs
    assert storage.flush_background(loop.call_soon_threadsafe, reports.append) is True
    assert reports == [] and storage.durable_seq == 0
    held.release.set()
    await until(lambda: len(reports) >= 2 and reports[-1] == 3, "the second sync")
    assert reports[0] == 2  # the first sync covered the first two records only
    assert held.calls == 2 and storage.durable_seq == 3 and storage.fsyncs == 2
    assert storage.flush_background(loop.call_soon_threadsafe, reports.append) is False
    storage.close()
    assert recover(tmp_path, read_only=True).last_seq == 3


async def test_a_failed_background_fsync_reports_none_and_stops_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fdatasync on the sync thread is the journal's failure: `synced(None)`, told
    once to `on_failure`, nothing reported durable, and every later flush raises."""
    storage, _ = Storage.open(tmp_path, BESIDE)
    held = HeldSync(monkeypatch, fail=True)
    held.release.set()
    reasons: list[str] = []
    storage.on_failure = reasons.append
    reports: list[int | None] = []
    storage.append(FORGET)
    loop = asyncio.get_running_loop()
    assert storage.flush_background(loop.call_soon_threadsafe, reports.append) is True
    await until(lambda: reports, "the sync's end")
    assert reports == [None] and storage.durable_seq == 0
    assert len(reasons) == 1 and "cannot fsync the journal" in reasons[0]
    assert storage.failure == reasons[0]
    storage.append(FORGET)
    with pytest.raises(JournalError):
        storage.flush_background(loop.call_soon_threadsafe, reports.append)
    with pytest.raises(JournalError):
        storage.flush()
    storage.close()


async def test_a_synchronous_flush_and_a_cut_wait_for_the_sync_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability wanted now (a flush, a cut of the tail) first lets the background sync end:
    the fd it syncs is never closed under it, and the durable seq never passes the cut."""
    storage, _ = Storage.open(tmp_path, BESIDE)
    held = HeldSync(monkeypatch)
    loop = asyncio.get_running_loop()
    reports: list[int | None] = []
    for _ in range(4):
        storage.append(FORGET)
    storage.flush_background(loop.call_soon_threadsafe, reports.append)
    await asyncio.to_thread(held.started.wait, 10)
    threading.Timer(0.05, held.release.set).start()
    storage.truncate_after(2)  # waits for the sync, then cuts and syncs durably itself
    assert held.release.is_set()
    assert storage.seq == 2 and storage.durable_seq == 2
    await until(lambda: reports, "the posted completion")
    assert reports == [2]  # what is durable now, not the 4 the sync began with
    storage.close()
    assert recover(tmp_path, read_only=True).last_seq == 2


async def test_fsyncs_go_beside_the_loop_only_while_they_are_slow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default threshold a fast fsync stays in the loop (the flush is synchronous:
    nothing to wait for); once fsyncs take longer on average they run on the thread, and
    when they are fast again, in the loop again."""
    storage, _ = Storage.open(tmp_path, StorageConfig(background_fsync_s=0.01))
    loop = asyncio.get_running_loop()
    reports: list[int | None] = []
    delay = {"s": 0.0}
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        threading.Event().wait(delay["s"])
        real(fd)

    monkeypatch.setattr(syncer.os, "fdatasync", fdatasync)

    def flush() -> bool:
        storage.append(FORGET)
        return storage.flush_background(loop.call_soon_threadsafe, reports.append)

    assert flush() is False and storage.durable_seq == storage.seq  # fast: in the loop
    delay["s"] = 0.03
    while not flush():  # slow ones, in the loop, until the average passes the threshold
        pass
    await until(lambda: reports and reports[-1] == storage.seq, "the background sync")
    delay["s"] = 0.0
    for _ in range(40):
        if not flush():
            break
        await until(lambda: reports and reports[-1] == storage.seq, "a background sync")
    assert flush() is False  # fast again: back in the loop
    storage.close()
