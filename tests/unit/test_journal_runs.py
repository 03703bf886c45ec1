"""Runs of plain journal submits are taken a run at a time (runtime/journalruns.py,
`plain_submit_rows`, `JobTable.submit_rows`): each gives exactly what the line-at-a-time path
gives, and stops where that path would refuse, leaving the line to it."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core.jobmap import stored_values
from tcpsched.core.jobs import (
    JOB_ID_BYTES_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    JobRecord,
    JobState,
)
from tcpsched.core.plainsubmit import plain_submit, plain_submit_rows
from tcpsched.core.record_types import EPOCH_MAX
from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime import journal, journalruns
from tcpsched.runtime.journal import recover, scan_segment
from tcpsched.runtime.journal_lines import encode_commit, encode_line, segment_name
from tests.unit.test_restart_paths import plain_jobs
from tests.unit.test_restart_rows import _FIELDS, _VALUES, submit_with
from tests.unit.test_state import jobs as any_jobs
from tests.unit.test_state import json_round_trip, table_state

# Values at and past the edges of what a plain job may hold.
_EDGES = st.sampled_from([PRIORITY_MAX, PRIORITY_MAX + 1, PRIORITY_MIN - 1, EPOCH_MAX,
                          EPOCH_MAX + 1, -1, 0, -0.0, 1.5, "", "x" * JOB_ID_BYTES_MAX,
                          "x" * (JOB_ID_BYTES_MAX + 1), " ", "a:b", "pending", "call", "shell",
                          True, [], {}])
_changes = st.lists(st.tuples(_FIELDS, _VALUES | _EDGES | st.just(...)), max_size=2)
_queued = plain_jobs.map(lambda job: attrs.evolve(job, state=JobState.PENDING))
# Mostly unchanged queued plain jobs, so that runs are long enough to be taken as runs.
_submits = st.one_of(st.tuples(_queued, st.just([])), st.tuples(_queued, st.just([])),
                     st.tuples(_queued | plain_jobs | any_jobs, _changes))


@settings(max_examples=300, deadline=None)
@given(submits=st.lists(_submits | st.tuples(_queued, _changes), max_size=12),
       positions=st.lists(st.tuples(st.integers(0, 2**53 + 1), st.integers(0, 2**53 + 1)),
                          min_size=12, max_size=12),
       extra=st.sampled_from([None, "op", "key", "record"]))
def test_a_run_takes_the_prefix_plain_submit_takes(
        submits: list[tuple[JobRecord, list[tuple[str, Any]]]],
        positions: list[tuple[int, int]], extra: str | None) -> None:
    """`plain_submit_rows` gives the rows `plain_submit` gives, value for value and type for
    type, for the longest prefix it takes, and stops only before a record `plain_submit`
    refuses or one of another kind than the run's."""
    records = [submit_with(job, changes) for job, changes in submits]
    if records and extra == "op":
        records[-1]["op"] = "start"
    elif records and extra == "key":
        records[len(records) // 2]["job"]["tags"] = ["a"]
    elif records and extra == "record":
        records[0]["at"] = 1.0
    epochs = [epoch for epoch, _ in positions[: len(records)]]
    seqs = [seq for _, seq in positions[: len(records)]]
    rows = plain_submit_rows(json_round_trip(records), epochs, seqs)
    one = [plain_submit(record, epoch, seq, as_row=True)
           for record, epoch, seq in zip(json_round_trip(records), epochs, seqs, strict=True)]
    taken = len(rows)
    assert rows == one[:taken] and repr(rows) == repr(one[:taken])
    if taken < len(records):
        assert one[taken] is None or (taken and one[taken][4] != rows[0][4])


_EDGE_VALUES = [PRIORITY_MAX, PRIORITY_MAX + 1, PRIORITY_MIN - 1, EPOCH_MAX, EPOCH_MAX + 1, -1,
                0, -0.0, 1.5, float("inf"), float("nan"), 2**70, "", "x" * JOB_ID_BYTES_MAX,
                "x" * (JOB_ID_BYTES_MAX + 1), " ", "a:b", "pending", "call", "shell", True,
                None, [], {}, ...]


@pytest.mark.parametrize("value", _EDGE_VALUES)
@pytest.mark.parametrize("field", ["id", "seq", "state", "submitted_at", "kind", "function",
                                   "command", "args", "priority", "key", "tags", "op"])
def test_a_field_at_an_edge_stops_a_run_where_plain_submit_refuses(field: str, value: Any
                                                                   ) -> None:
    """Each field of one record amid a run, set to a value at or past an edge of what a
    plain submit holds (or removed): the run stops exactly where `plain_submit` refuses."""
    records = [{"op": "submit", "job": {
        "id": f"{i:012x}", "seq": i, "state": "pending", "submitted_at": 1.0 + i,
        "kind": "call", "function": "operator:add", "args": [i], "key": f"k{i}"}}
        for i in range(1, 6)]
    changed = records[2] if field == "op" else records[2]["job"]
    if value is ...:
        changed.pop(field, None)
    else:
        changed[field] = value
    rows = plain_submit_rows(records, [1] * 5, [1, 2, 3, 4, 5])
    one = [plain_submit(record, 1, seq, as_row=True) for seq, record in enumerate(records, 1)]
    taken = 5 if one[2] is not None else 2
    assert rows == one[:taken] and repr(rows) == repr(one[:taken])


def _line(seq: int, record: dict[str, Any], epoch: int, how: str) -> bytes:
    line = encode_line(seq, record, epoch)
    if how == "crc":
        return line.replace(b',"crc":', b',"crc":1', 1)
    if how == "seq":
        return encode_line(seq + 1, record, epoch)
    if how == "garbage":
        return b'{"seq":%d,"crc":0,"rec":{"op":"submit","job":{}}}\n' % seq
    if how == "json":  # a CRC-valid line whose record is not JSON
        payload = b'{"op":"submit","job":{"id":}}'
        return b'{"seq":%d,"crc":%d,"rec":%b}\n' % (seq, zlib.crc32(payload), payload)
    return line


_line_kinds = st.sampled_from(["ok"] * 12 + ["crc", "seq", "garbage", "json", "commit",
                                             "epoch", "again", "nan", "wide"])
_CORRUPT = ("crc", "seq", "garbage", "json")


def _segment(lines: list[tuple[dict[str, Any], str]], epoch: int, first_job: dict[str, Any]
             ) -> bytes:
    data = b""
    seq = 1
    for written, how in lines:
        record = written
        if how == "commit":
            data += encode_commit(seq)
            continue
        if how == "epoch":
            record = {"op": "epoch", "leader": 1}
        elif how == "again":  # a submit of a job already in the table: apply refuses it
            record = first_job
        elif how == "nan" and type(record["job"].get("args")) is list:
            record["job"]["args"] = [float("nan")]
        elif how == "wide" and type(record["job"].get("args")) is list:
            record["job"]["args"] = [2**70]
        data += _line(seq, record, epoch, how)
        seq += 1
    return data


def _scan_both(data: bytes, expected: int, group: bool) -> list[tuple[Any, ...]]:
    """What a scan gives line by line, and with runs: the verdict, the entries, the table."""
    results = []
    for runs in (False, True):
        table = JobTable()
        entries: list[tuple[Any, ...]] = []

        def on_entry(*entry: Any) -> None:
            entries.append(entry)  # noqa: B023 (called before the loop moves on)

        def on_entries(*columns: Any) -> None:
            entries.extend(zip(*columns, strict=True))  # noqa: B023

        apply = None if group else table.apply
        if runs:
            scan = scan_segment(data, 1, expected, apply, on_entry=on_entry,
                                apply_rows=None if group else table.submit_rows,
                                on_entries=on_entries)
        else:
            scan = scan_segment(data, 1, expected, apply, on_entry=on_entry)
        results.append((scan, repr(entries), repr(stored_values(table.jobs)),
                        table_state(table), repr(table.keys), type(table.jobs)))
    return results


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(_submits, _line_kinds, _queued), max_size=25),
       epoch=st.sampled_from([0, 0, 3]), expected=st.integers(1, 4), group=st.booleans())
def test_a_segment_scans_the_same_with_runs_as_line_by_line(
        lines: list[tuple[tuple[JobRecord, list[tuple[str, Any]]], str, JobRecord]],
        epoch: int, expected: int, group: bool) -> None:
    """A segment of submits (some changed, some of the same job twice, NaN and integers too
    wide for orjson, bad CRCs, seqs and JSON, commit marks and other records among them)
    scans to the same result with runs as line by line: the same verdict at the same line
    and offset, the same entries, records and rows, the same table, stored the same way."""
    records = [(submit_with(queued, []) if how in _CORRUPT else submit_with(job, changes), how)
               for (job, changes), how, queued in lines]
    first = submit_with(lines[0][0][0], []) if lines else {}
    before, runs = _scan_both(_segment(records, epoch, first), expected, group)
    assert before == runs


@pytest.mark.parametrize("how", [*_CORRUPT, "again", "nan", "wide", "epoch", "commit"])
@pytest.mark.parametrize("epoch", [0, 5])
def test_a_line_in_a_run_is_left_to_the_line_by_line_path(how: str, epoch: int) -> None:
    """A line amid a run of plain submits that is corrupt, refused by `apply`, read
    differently by orjson, or simply not a plain submit, is left to the line-at-a-time path:
    the scan ends (or goes on) exactly as it does line by line."""
    queued = [{"op": "submit", "job": {
        "id": f"{i:012x}", "seq": i, "state": "pending", "submitted_at": 1.0 + i,
        "kind": "call", "function": "operator:add", "args": [i, 1], "key": f"k{i}"}}
        for i in range(1, 11)]
    records = [(record, how if i == 5 else "ok") for i, record in enumerate(queued)]
    for group in (False, True):
        before, runs = _scan_both(_segment(records, epoch, queued[0]), 1, group)
        assert before == runs
        if how in _CORRUPT or (how == "again" and not group):
            assert before[0].bad is not None and before[0].bad[0] == 6


def test_a_run_of_plain_submits_is_not_read_line_by_line(tmp_path: Path, monkeypatch: Any
                                                        ) -> None:
    """Recovery reads a run of plain submits as a run: only the lines around it (another
    record, a plain submit of a job already queued) take the line-at-a-time path."""
    jobs = [{"id": f"{i:012x}", "seq": i, "state": "pending", "submitted_at": 1.0 + i,
             "kind": "call", "function": "operator:add", "args": [i, 1], "key": f"k{i}"}
            for i in range(1, 101)]
    lines = [encode_line(i, {"op": "submit", "job": job}, 2) for i, job in enumerate(jobs, 1)]
    lines.append(encode_line(101, {"op": "cancel", "id": jobs[0]["id"], "at": 5.0}, 2))
    (tmp_path / segment_name(1)).write_bytes(b"".join(lines))
    parsed: list[int] = []
    line_by_line = journal.parse_payload_built

    def counted(payload: bytes, epoch: int, seq: int) -> Any:
        parsed.append(seq)
        return line_by_line(payload, epoch, seq)

    monkeypatch.setattr(journal, "parse_payload_built", counted)
    result = recover(tmp_path)
    assert parsed == [101]
    assert len(result.table) == 100 and result.table.keys["k7"] == jobs[6]["id"]
    assert [seq for seq, _, _ in result.entries] == list(range(1, 102))
    assert result.entries[3][2] == lines[3]
    assert result.table.get(jobs[0]["id"]).state.value == "cancelled"  # type: ignore[union-attr]


def test_an_interleaved_tail_is_matched_once_not_once_per_submit(tmp_path: Path,
                                                                  monkeypatch: Any) -> None:
    """A working cluster's tail interleaves submits with other records: the run pattern is
    matched over each line at most once (it was matched over the next 1,024 lines from every
    submit, which made such a tail's replay quadratic)."""
    lines = []
    for i in range(1, 301):
        job = {"id": f"{i:012x}", "seq": i, "state": "pending", "submitted_at": 1.0 + i,
               "kind": "call", "function": "operator:add", "args": [i, 1]}
        lines.append(encode_line(2 * i - 1, {"op": "submit", "job": job}, 2))
        lines.append(encode_line(2 * i, {"op": "cancel", "id": job["id"], "at": 5.0}, 2))
    data = b"".join(lines)
    (tmp_path / segment_name(1)).write_bytes(data)
    matched: list[int] = []
    pattern = journalruns._PLAIN_SUBMIT_LINE

    class Counted:
        def findall(self, text: bytes) -> list[Any]:
            matched.append(len(text))
            return pattern.findall(text)

        def fullmatch(self, line: bytes) -> Any:
            matched.append(len(line))
            return pattern.fullmatch(line)

    monkeypatch.setattr(journalruns, "_PLAIN_SUBMIT_LINE", Counted())
    result = recover(tmp_path)
    assert len(result.table) == 300 and result.last_seq == 600
    assert matched and sum(matched) <= 2 * len(data)


def test_submit_rows_stops_before_a_job_already_there() -> None:
    """`JobTable.submit_rows` takes rows up to the first job already in the table or earlier
    in the rows, as `apply` one by one would, and keeps every index as `apply` keeps it."""
    def row(i: int, key: str | None) -> tuple[Any, ...]:
        return (f"{i:012x}", i, "pending", 1.0, "call", "operator:add", (i,), 0, key)

    table, one_by_one = JobTable(), JobTable()
    table.ids_with_prefix("0000")  # the prefix index, built: kept up to date from here on
    one_by_one.ids_with_prefix("0000")
    rows = [row(1, "a"), row(2, None), row(3, "a"), row(2, "b"), row(4, "c")]
    assert table.submit_rows(rows) == 3
    for r in rows[:3]:
        one_by_one.apply({"op": "submit"}, built=r)
    assert table.submit_rows([row(5, None), row(1, "d")]) == 1
    one_by_one.apply({"op": "submit"}, built=row(5, None))
    assert table_state(table) == table_state(one_by_one)
    assert table.ids_with_prefix("0000") == one_by_one.ids_with_prefix("0000")
    assert table.keys == {"a": f"{3:012x}"} and table.next_seq == 6


@pytest.mark.parametrize("commit", [0, 40, 55, 120])
def test_a_groups_committed_runs_are_applied_as_runs(tmp_path: Path, monkeypatch: Any,
                                                     commit: int) -> None:
    """In a group, the committed entries are applied after the scan with each run of plain
    submits at once (`submit_rows`), up to the last commit mark, to the table that applying
    them one by one gives; a submit of a job already there still fails recovery, naming
    its entry."""
    jobs = [{"id": f"{i:012x}", "seq": i, "state": "pending", "submitted_at": 1.0 + i,
             "kind": "call", "function": "operator:add", "args": [i, 1], "key": f"k{i}"}
            for i in range(1, 101)]
    records: list[dict[str, Any]] = [{"op": "submit", "job": job} for job in jobs]
    records[50:50] = [{"op": "cancel", "id": jobs[3]["id"], "at": 5.0},
                      {"op": "epoch", "leader": 1}]
    data = b"".join(encode_line(i, record, 2) for i, record in enumerate(records, 1))
    (tmp_path / segment_name(1)).write_bytes(data + encode_commit(commit))
    runs: list[int] = []
    submit_rows = JobTable.submit_rows

    def counted(self: JobTable, rows: list[tuple[Any, ...]]) -> int:
        runs.append(len(rows))
        return submit_rows(self, rows)

    monkeypatch.setattr(JobTable, "submit_rows", counted)
    grouped = recover(tmp_path, group=True, read_only=True)
    # Entries 1-50 and 53-102 are the two runs; only what is committed is applied.
    expected = [min(commit, 50), min(commit, 102) - 52]
    assert runs == [n for n in expected if n > 0]
    monkeypatch.setattr(JobTable, "submit_rows", lambda self, rows: 0)  # one by one
    one_by_one = recover(tmp_path, group=True, read_only=True)
    assert table_state(grouped.table) == table_state(one_by_one.table)
    assert len(grouped.table) == min(commit, 50) + max(0, min(commit, 102) - 52)
    (tmp_path / segment_name(1)).write_bytes(
        data + encode_line(103, records[10], 2) + encode_commit(103))
    monkeypatch.setattr(JobTable, "submit_rows", submit_rows)
    with pytest.raises(JournalError, match="entry 103 cannot be applied"):
        recover(tmp_path, group=True, read_only=True)
