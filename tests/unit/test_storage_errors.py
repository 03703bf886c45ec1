"""Storage errors on real files, the failing system call simulated: a failed journal write or
fsync is fatal and leaves the journal exactly as acknowledged; a failed compaction is not; a
failed durable write leaves no temporary file."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime import snapshot as snapshot_module
from tcpsched.runtime import storage as storage_module
from tcpsched.runtime.journal import recover
from tcpsched.runtime.journal_lines import list_segments
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, SNAPSHOT_TMP_NAME
from tcpsched.runtime.storage import Storage, StorageConfig
from tests.unit.test_state import table_state
from tests.unit.test_storage import fill, make_records

FORGET = {"op": "forget", "ids": []}


def disk_full(path: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def test_a_write_failing_part_way_is_cut_off_and_stops_every_later_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal write that fails half-way (a full disk) is cut back off the segment, so the
    journal holds exactly the records written before it; the failure is reported once, and
    every later flush raises."""
    storage, _ = Storage.open(tmp_path)
    reasons: list[str] = []
    storage.on_failure = reasons.append
    storage.append(FORGET)
    storage.flush()
    before = storage.segment_path.read_bytes()

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise disk_full()

    monkeypatch.setattr(storage_module, "write_all", half_then_full)
    storage.append(FORGET)
    storage.append(FORGET)
    with pytest.raises(JournalError, match=r"cannot write the journal .*No space left on device"):
        storage.flush()
    assert storage.segment_path.read_bytes() == before
    assert len(reasons) == 1 and storage.failure == reasons[0]
    storage.append(FORGET)
    with pytest.raises(JournalError):
        storage.flush()
    assert len(reasons) == 1
    storage.close()
    result = recover(tmp_path)
    assert result.last_seq == 1 and result.warnings == []


def test_a_failed_fsync_is_fatal_and_reported(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `always`, a failed fdatasync fails the flush (so no reply can follow) and is
    reported once; nothing is written after it."""
    storage, _ = Storage.open(tmp_path)
    reasons: list[str] = []
    storage.on_failure = reasons.append

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    storage.append(FORGET)
    with pytest.raises(JournalError, match=r"cannot fsync the journal .*Input/output error"):
        storage.flush()
    assert len(reasons) == 1
    writes = storage.writes
    storage.append(FORGET)
    with pytest.raises(JournalError):
        storage.flush()
    assert storage.writes == writes
    storage.close()


def test_a_batch_fsync_failing_on_its_timer_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `batch` the fsync that fails may run from its timer, with no flush to raise:
    the failure is still reported, and the next flush raises."""
    timers: list[Any] = []

    class Timer:
        def __init__(self, callback: Any) -> None:
            self.callback = callback

        def cancel(self) -> None:
            pass

    def call_later(delay: float, callback: Any) -> Timer:
        timers.append(Timer(callback))
        return timers[-1]

    storage, _ = Storage.open(tmp_path, StorageConfig(fsync="batch", batch_interval_s=60),
                              call_later=call_later)
    reasons: list[str] = []
    storage.on_failure = reasons.append
    storage.append(FORGET)
    storage.flush()

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    timers.pop().callback()
    assert len(reasons) == 1 and "cannot fsync the journal" in reasons[0]
    storage.append(FORGET)
    with pytest.raises(JournalError):
        storage.flush()
    storage.close()


def test_compaction_without_an_inode_keeps_appending_and_retries_a_threshold_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the next segment cannot be created (no inode, no space), compaction is logged as
    failed and the journal goes on in the current segment (no flush fails, nothing is held);
    it is tried again one threshold later and succeeds once files can be created again."""
    caplog.set_level(logging.ERROR, logger="tcpsched.runtime.storage")
    storage, _ = Storage.open(tmp_path, StorageConfig(compact_records=5,
                                                      background_compaction=False))
    real_open = os.open
    blocked = True

    def open_(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        name = Path(path).name
        if blocked and name.startswith("journal-") and Path(path) != storage.segment_path:
            raise disk_full(str(path))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    records = make_records(4, 30)
    for record in records[:12]:
        storage.table.apply(record)
        storage.append(record)
        storage.flush()
    failures = [r.getMessage() for r in caplog.records if "compaction failed" in r.getMessage()]
    assert len(failures) == 2, failures  # at 5 records, then 5 later: not at every flush
    assert "No space left on device" in failures[0]
    assert storage.compactions == 0 and storage.failure is None
    assert len(list_segments(tmp_path)) == 1 and storage.segment_records == 12

    blocked = False
    fill(storage, records[12:])
    assert storage.compactions >= 1 and (tmp_path / SNAPSHOT_NAME).exists()
    expected = table_state(storage.table)
    storage.close()
    result = recover(tmp_path)
    assert table_state(result.table) == expected and result.last_seq == len(records)


def test_a_snapshot_that_cannot_be_written_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot write that meets a full disk removes its half-written temporary file (the
    space goes back to the journal) and the old snapshot stays."""
    table = JobTable()
    for record in make_records(6, 50):
        table.apply(record)
    snapshot_module.write_snapshot(tmp_path, 50, table.image())
    old = (tmp_path / SNAPSHOT_NAME).read_bytes()
    real_write_all = snapshot_module.write_all
    calls = 0

    def write_all(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise disk_full()
        real_write_all(fd, data)

    monkeypatch.setattr(snapshot_module, "write_all", write_all)
    with pytest.raises(OSError, match="No space left on device"):
        snapshot_module.write_snapshot(tmp_path, 60, table.image())
    assert not (tmp_path / SNAPSHOT_TMP_NAME).exists()
    assert (tmp_path / SNAPSHOT_NAME).read_bytes() == old


def test_a_promise_on_a_full_disk_is_a_journal_error_and_the_old_one_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journaling a new promise (a new epoch) on a full disk raises one JournalError naming the
    file and the cause; the failed write is cut off, so a restart finds the previous promise."""
    storage, _ = Storage.open(tmp_path)
    storage.write_promise(1, 1)
    storage.flush()

    def write_all(fd: int, data: bytes) -> None:
        raise disk_full()

    monkeypatch.setattr(storage_module, "write_all", write_all)
    storage.write_promise(2, 1)
    with pytest.raises(JournalError, match="No space left on device"):
        storage.flush()
    monkeypatch.undo()
    storage.close()
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == []
    _, recovery = Storage.open(tmp_path)
    assert recovery.promise == (1, 1)
