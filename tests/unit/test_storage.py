"""The data directory on real files: journal lines, cuts, corruption, compaction, fsync policy."""

from __future__ import annotations

import bisect
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime import snapshot as snapshot_module
from tcpsched.runtime.journal import recover, scan_segment
from tcpsched.runtime.journal_lines import decode_line, encode_line, list_segments, segment_name
from tcpsched.runtime.snapshot import SNAPSHOT_NAME
from tcpsched.runtime.storage import Storage, StorageConfig, check
from tests.unit.test_state import WORKERS, Driver, table_state

RECORDS = 1000


def fingerprint(table: JobTable) -> tuple[Any, ...]:
    """The table's whole state as a value (jobs are immutable, so tuples of them suffice)."""
    return (tuple(table.jobs.items()), tuple(table.keys.items()), tuple(table.counts.items()),
            tuple(table.counters.items()), table.next_seq, tuple(table.finished_order.items()))


def make_records(seed: int, count: int) -> list[dict[str, Any]]:
    """`count` real records from a scheduler under a random workload (bytes payloads too)."""
    rng = random.Random(seed)
    driver = Driver(seed)
    payloads = [None, 7, "x", b"\x00\xff\n", {"$t": b"y"}]
    while len(driver.records) < count:
        roll = rng.random()
        if roll < 0.35:
            driver.run(("submit", rng.randint(-1, 1), rng.choice(payloads), rng.randint(0, 1)))
        elif roll < 0.45:
            driver.run(("register", rng.choice(WORKERS), rng.randint(1, 3)))
        elif roll < 0.8:
            driver.run(("result", rng.randint(0, 9),
                        rng.choice(["succeeded", "failed", "cancelled"]), rng.choice(payloads)))
        elif roll < 0.85:
            driver.run(("cancel", rng.randint(0, 30)))
        elif roll < 0.9:
            driver.run(("close", rng.choice(WORKERS)))
        else:
            driver.run(("advance", rng.choice([0.3, 2.5])))
    return driver.records[:count]


@pytest.fixture(scope="module")
def journal() -> tuple[bytes, list[int], list[tuple[Any, ...]]]:
    """A 1,000-record journal, the byte offset where each line starts, and the table state
    after each number of records (built once for the whole module)."""
    records = make_records(11, RECORDS)
    lines = [encode_line(seq, record) for seq, record in enumerate(records, 1)]
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    table = JobTable()
    states = [fingerprint(table)]
    for record in records:
        table.apply(record)
        states.append(fingerprint(table))
    return b"".join(lines), starts, states


def test_journal_lines_carry_seq_crc_and_exact_bytes() -> None:
    """A line is one JSON object with seq, crc and the record; bytes come back as bytes."""
    record = {"op": "finish", "id": "a", "attempt": 1, "state": "succeeded", "at": 1.0,
              "result": {"$t": [b"\x00"]}}
    line = encode_line(42, record)
    assert line.startswith(b'{"seq":42,"crc":') and line.endswith(b"}\n")
    assert decode_line(line[:-1], 42) == record


def test_cut_at_every_line_and_inside_it_restores_exactly_the_complete_records(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """Cut after each of the 1,000 lines (and part way into the next): a full recovery from
    disk restores exactly the complete records and reports the torn rest."""
    data, starts, states = journal
    segment = tmp_path / segment_name(1)
    for k in range(RECORDS + 1):
        line_bytes = starts[k + 1] - starts[k] if k < RECORDS else 0
        torn = (k * 37) % line_bytes if line_bytes else 0  # 0..len-1 bytes of line k+1
        segment.write_bytes(data[: starts[k] + torn])
        result = recover(tmp_path, read_only=True)
        assert result.replayed == k and result.last_seq == k
        assert fingerprint(result.table) == states[k]
        assert bool(result.warnings) == bool(torn)


def test_every_byte_offset_of_the_journal_is_a_clean_cut_or_a_torn_last_line(
        journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """For every byte offset, the segment scanner keeps every complete line before it and
    classifies what follows as a torn last line, never as corruption."""
    data, starts, _ = journal

    def must_not_apply(record: dict[str, Any], built: Any = None) -> None:
        raise AssertionError("a line before the cut was parsed again")

    for offset in range(len(data) + 1):
        k = bisect.bisect_right(starts, offset) - 1  # complete lines before the cut
        scan = scan_segment(data[:offset], k + 1, k + 1, must_not_apply, start=starts[k],
                            start_lineno=k + 1)
        assert scan.good_bytes == starts[k] and scan.replayed == 0
        if offset == starts[k]:
            assert scan.bad is None
        else:
            assert scan.bad is not None and scan.bad_is_torn_tail
            assert scan.bad[:2] == (k + 1, starts[k])


def test_torn_last_line_is_cut_with_a_copy_kept_and_appending_goes_on(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """Opening a journal with a torn tail cuts it, keeps the cut bytes beside it, warns once,
    and the next records follow the last complete one."""
    data, starts, states = journal
    segment = tmp_path / segment_name(1)
    segment.write_bytes(data[: starts[RECORDS - 1] + 10])
    storage, result = Storage.open(tmp_path)
    assert len(result.warnings) == 1 and f"{segment}:{RECORDS}:" in result.warnings[0]
    assert segment.stat().st_size == starts[RECORDS - 1]
    (kept,) = tmp_path.glob("*.cut-at-*")
    assert kept.read_bytes() == data[starts[RECORDS - 1] : starts[RECORDS - 1] + 10]
    assert storage.seq == RECORDS - 1
    storage.append({"op": "forget", "ids": []})
    storage.close()
    again = recover(tmp_path)
    assert again.warnings == [] and again.last_seq == RECORDS
    assert fingerprint(again.table) == states[RECORDS - 1]


def test_bad_checksum_on_the_last_line_is_cut(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """A complete last line whose CRC does not match is cut like a torn one."""
    data, starts, states = journal
    broken = bytearray(data)
    broken[starts[RECORDS - 1] + 40] ^= 0x01
    (tmp_path / segment_name(1)).write_bytes(bytes(broken))
    result = recover(tmp_path)
    assert "checksum mismatch" in result.warnings[0]
    assert fingerprint(result.table) == states[RECORDS - 1]


@pytest.mark.parametrize("last", [
    encode_line(RECORDS, {"op": "submit", "job": {"id": "j-high", "seq": 9999, "state": "pending",
                                                  "submitted_at": 1.0, "kind": "call",
                                                  "function": "m:f", "priority": "high"}}),
    encode_line(RECORDS, {"op": "cancel", "id": "no-such-job", "at": 1.0}),
    encode_line(RECORDS + 7, {"op": "epoch"}, 1),
    # An integer too large for a float where a time belongs (math.isfinite raises on it).
    encode_line(RECORDS, {"op": "submit", "job": {"id": "j-huge", "seq": 9999, "state": "pending",
                                                  "submitted_at": 10**400, "kind": "call",
                                                  "function": "m:f"}}),
    encode_line(RECORDS, {"op": "submit", "job": {"id": "j-huge", "seq": 9999, "state": "pending",
                                                  "submitted_at": 10**400, "kind": "call",
                                                  "function": "m:f", "tags": ["t"]}}),
], ids=["invalid-record", "unknown-job", "wrong-seq", "huge-time-plain", "huge-time"])
def test_a_whole_last_line_that_does_not_check_is_refused_not_cut(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]],
        last: bytes) -> None:
    """A last line whose frame and CRC hold was written whole, not torn by a crash: its record
    may have been acknowledged, so a record that does not check or apply there is refused like
    corruption anywhere else (cutting it would lose it), and --repair keeps the prefix."""
    data, starts, states = journal
    segment = tmp_path / segment_name(1)
    segment.write_bytes(data[: starts[RECORDS - 1]] + last)
    with pytest.raises(JournalError) as info:
        Storage.open(tmp_path)
    assert f"{segment}:{RECORDS}:" in str(info.value) and "refusing to start" in str(info.value)
    assert segment.read_bytes() == data[: starts[RECORDS - 1]] + last
    code, _ = check(tmp_path)
    assert code == 1
    result = recover(tmp_path, repair=True)
    assert fingerprint(result.table) == states[RECORDS - 1] and "repaired" in result.warnings[0]


def test_any_flipped_byte_in_a_middle_line_is_refused_naming_file_and_line(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """Changing any one byte of line 500 makes recovery refuse with file:500, and --check
    exits 1 with one error line; nothing is modified."""
    data, starts, _ = journal
    segment = tmp_path / segment_name(1)
    for position in range(starts[499], starts[500]):
        broken = bytearray(data)
        broken[position] ^= 0x20 if broken[position] != 0x0A else 0x01
        segment.write_bytes(bytes(broken))
        with pytest.raises(JournalError) as info:
            Storage.open(tmp_path)
        assert f"{segment}:500:" in str(info.value) and "\n" not in str(info.value)
        code, lines = check(tmp_path)
        assert code == 1 and sum(line.startswith("error:") for line in lines) == 1
        assert segment.read_bytes() == bytes(broken)


def test_repair_keeps_the_good_prefix_and_moves_the_rest_aside(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """--repair starts from the 499 records before a bad line 500, keeping the rest beside."""
    data, starts, states = journal
    broken = bytearray(data)
    broken[starts[499] + 30] ^= 0x20
    segment = tmp_path / segment_name(1)
    segment.write_bytes(bytes(broken))
    storage, result = Storage.open(tmp_path, repair=True)
    storage.close()
    assert result.last_seq == 499 and fingerprint(result.table) == states[499]
    assert "repaired" in result.warnings[0]
    (kept,) = tmp_path.glob("*.cut-at-*")
    assert kept.read_bytes() == bytes(broken[starts[499]:])
    assert recover(tmp_path).warnings == []


def test_missing_segment_is_refused(tmp_path: Path) -> None:
    """A gap in the sequence numbers between segments is corruption, not a torn tail."""
    (tmp_path / segment_name(1)).write_bytes(encode_line(1, {"op": "forget", "ids": []}))
    (tmp_path / segment_name(3)).write_bytes(encode_line(3, {"op": "forget", "ids": []}))
    with pytest.raises(JournalError, match="a segment is missing"):
        recover(tmp_path)


# -- compaction --------------------------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying between two file operations."""


def abandon(storage: Storage) -> None:
    """Drop a storage as a killed process would: no flush, descriptors (and lock) released."""
    os.close(storage._fd)
    os.close(storage._lock_fd)


def fill(storage: Storage, records: list[dict[str, Any]]) -> None:
    for index, record in enumerate(records):
        storage.table.apply(record)
        storage.append(record)
        if index % 5 == 0:
            storage.flush()
    storage.flush()


def crash_after(count: int) -> Any:
    """A compaction hook that lets `count` file operations happen, then crashes."""
    calls = 0

    def hook(step: str) -> None:
        nonlocal calls
        calls += 1
        if calls > count:
            raise Crash(step)

    return hook


def test_compaction_crashing_after_any_file_operation_loses_nothing(tmp_path: Path) -> None:
    """Stop compaction after each of its file operations in turn: recovery gives the same
    state, and the directory then compacts and recovers cleanly."""
    records = make_records(5, 600)
    config = StorageConfig(compact_records=10**9, background_compaction=False)
    base = tmp_path / "base"
    storage, _ = Storage.open(base, config)
    fill(storage, records[:250])
    storage.compact()  # so there is an old snapshot and an old segment to replace
    fill(storage, records[250:])
    expected = table_state(storage.table)
    storage.close()

    steps: list[str] = []
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    storage, _ = Storage.open(probe, config, hook=steps.append)
    storage.compact()
    storage.close()
    assert "replace-snapshot" in steps and "delete-segment" in steps and len(steps) >= 7

    for crash_at in range(len(steps)):
        work = tmp_path / f"crash{crash_at}"
        shutil.copytree(base, work)
        storage, _ = Storage.open(work, config, hook=crash_after(crash_at))
        with pytest.raises(Crash):
            storage.compact()
        abandon(storage)
        result = recover(work)
        assert table_state(result.table) == expected, f"crash after {steps[:crash_at]}"
        assert result.last_seq == len(records)
        storage, _ = Storage.open(work, config)
        storage.append({"op": "forget", "ids": []})
        storage.compact()
        storage.close()
        final = recover(work)
        assert table_state(final.table) == expected and final.last_seq == len(records) + 1
        assert final.snapshot_seq == len(records) + 1 and len(list_segments(work)) == 1


def test_threshold_compaction_in_the_background_keeps_disk_bounded(tmp_path: Path) -> None:
    """Past the record threshold a snapshot is written in a thread and old segments go."""
    records = make_records(3, 900)
    storage, _ = Storage.open(tmp_path, StorageConfig(compact_records=200, compact_bytes=1))
    for index, record in enumerate(records):
        storage.table.apply(record)
        storage.append(record)
        if index % 10 == 0:
            storage.flush()
            storage.wait_compaction()
    storage.flush()
    storage.wait_compaction()
    expected = table_state(storage.table)
    assert storage.compactions >= 3
    storage.close()
    assert len(list_segments(tmp_path)) <= 2 and (tmp_path / SNAPSHOT_NAME).exists()
    result = recover(tmp_path)
    assert table_state(result.table) == expected and result.last_seq == len(records)


# -- fsync policy, epochs, locking, failures ---------------------------------------------------


def test_group_commit_one_write_and_one_fsync_per_flush(tmp_path: Path) -> None:
    """Under `always`, any number of records appended in one turn cost one write, one fsync."""
    storage, _ = Storage.open(tmp_path, StorageConfig(fsync="always"))
    for _ in range(100):
        storage.append({"op": "forget", "ids": []})
    storage.flush()
    assert (storage.writes, storage.fsyncs) == (1, 1)
    storage.flush()  # nothing new: nothing written
    assert (storage.writes, storage.fsyncs) == (1, 1)
    storage.close()


def test_batch_fsyncs_at_most_once_per_interval_and_never_leaves_it_to_close(
        tmp_path: Path) -> None:
    """`batch` writes every turn but fsyncs once per interval (a timer takes the tail);
    `never` fsyncs only when the journal is closed."""
    timers: list[Any] = []

    class Timer:
        def __init__(self, callback: Any) -> None:
            self.callback = callback

        def cancel(self) -> None:
            timers.remove(self)

    def call_later(delay: float, callback: Any) -> Timer:
        timer = Timer(callback)
        timers.append(timer)
        return timer

    storage, _ = Storage.open(tmp_path / "b", StorageConfig(fsync="batch", batch_interval_s=60),
                              call_later=call_later)
    for _ in range(10):
        storage.append({"op": "forget", "ids": []})
        storage.flush()
    assert storage.writes == 10 and storage.fsyncs == 0 and len(timers) == 1
    timers.pop().callback()
    assert storage.fsyncs == 1
    storage.close()

    storage, _ = Storage.open(tmp_path / "n", StorageConfig(fsync="never"))
    for _ in range(10):
        storage.append({"op": "forget", "ids": []})
        storage.flush()
    assert storage.fsyncs == 0
    storage.close()
    assert storage.fsyncs == 1


def test_the_promise_survives_a_restart_and_a_locked_directory_is_refused(tmp_path: Path) -> None:
    """The election promise is a journal line: each open finds the last one written (the epoch
    lives in the log); a second opener of the directory is refused."""
    promises = []
    for epoch in (1, 2, 3):
        storage, recovery = Storage.open(tmp_path)
        promises.append(recovery.promise)
        storage.write_promise(epoch, 1)
        storage.flush()
        with pytest.raises(JournalError, match="in use by another coordinator"):
            Storage.open(tmp_path)
        storage.close()
    assert promises == [(0, 0), (1, 1), (2, 1)]


def test_a_failed_write_stops_every_later_flush(tmp_path: Path) -> None:
    """After a write error nothing is ever reported durable again (no ack can follow)."""
    storage, _ = Storage.open(tmp_path)
    os.close(storage._fd)
    storage._fd = os.open(tmp_path / "readonly", os.O_RDONLY | os.O_CREAT)
    storage.append({"op": "forget", "ids": []})
    with pytest.raises(JournalError, match="cannot write the journal"):
        storage.flush()
    with pytest.raises(JournalError):
        storage.flush()
    storage.close()


def test_check_reports_contents_and_exit_codes(
        tmp_path: Path, journal: tuple[bytes, list[int], list[tuple[Any, ...]]]) -> None:
    """--check: 0 and a summary when sound (also with a torn tail), 1 when missing or corrupt."""
    data, _, _ = journal
    segment = tmp_path / segment_name(1)
    segment.write_bytes(data)
    code, lines = check(tmp_path)
    assert code == 0 and lines[-1] == "ok: sound"
    assert any(line.startswith(f"last sequence number: {RECORDS} ") for line in lines)
    assert any(line.startswith("jobs: ") and "pending=" in line for line in lines)
    segment.write_bytes(data[:-5])
    code, lines = check(tmp_path)
    assert code == 0 and any(line.startswith("warning:") for line in lines)
    assert segment.read_bytes() == data[:-5]  # offline check changes nothing
    code, lines = check(tmp_path / "nope")
    assert code == 1 and lines == [f"error: {tmp_path / 'nope'}: no such data directory"]


def test_snapshot_written_in_many_chunks_keeps_every_job(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot is written a few rows at a time; no row is lost or doubled at the seams."""
    monkeypatch.setattr(snapshot_module, "SNAPSHOT_ROWS_PER_WRITE", 2)
    records = make_records(0, 400)  # a workload that leaves 7 jobs
    table = JobTable()
    for record in records:
        table.apply(record)
    assert len(table) >= 3  # several chunk seams
    snapshot_module.write_snapshot(tmp_path, len(records), table.image())
    seq, loaded, _ = snapshot_module.read_snapshot(tmp_path / SNAPSHOT_NAME)
    assert seq == len(records) and table_state(loaded) == table_state(table)


def test_a_snapshot_is_mapped_not_read_into_memory(tmp_path: Path, monkeypatch: Any) -> None:
    """The snapshot is read through a mapping of the file (reading a big one into a bytes
    object costs a fresh page for every 4 KiB of it), and loads the table it holds."""
    table = JobTable()
    for i in range(300):
        table.apply({"op": "submit", "job": {"id": f"{i:012x}", "seq": i + 1,
                                             "state": "pending", "kind": "call",
                                             "function": "operator:add", "args": [i]}})
    snapshot_module.write_snapshot(tmp_path, 300, table.image())

    def refuse(self: Path) -> bytes:
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    seq, loaded, _ = snapshot_module.read_snapshot(tmp_path / SNAPSHOT_NAME)
    assert seq == 300 and table_state(loaded) == table_state(table)


def test_an_empty_snapshot_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """An empty snapshot.json (nothing can be mapped) is refused as torn, like any other."""
    (tmp_path / SNAPSHOT_NAME).write_bytes(b"")
    with pytest.raises(JournalError, match="not a tcpsched snapshot"):
        snapshot_module.read_snapshot(tmp_path / SNAPSHOT_NAME)
