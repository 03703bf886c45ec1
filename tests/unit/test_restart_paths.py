"""The fast paths of a restart (chunks of snapshot rows, plain submit records, the bulk queue
load, the bare JSON scanner) give exactly what the general paths give."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.jobqueue import JobQueue
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.records import (
    decode_record,
    encode_record,
    job_from_dict,
    job_from_row,
    job_to_dict,
    job_to_row,
    jobs_from_rows,
)
from tcpsched.runtime.journal_lines import BadLine, decode_line
from tests.unit.test_state import jobs as any_jobs

# Jobs that leave plain snapshot rows: nothing but the row's own fields differs from defaults.
_plain_args = st.lists(st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
                       max_size=3).map(tuple)
plain_specs = st.builds(
    JobSpec, kind=st.just("call"), function=st.sampled_from(["m:f", "operator:add"]),
    args=_plain_args, priority=st.integers(-5, 5), key=st.none() | st.text(min_size=1, max_size=8),
) | st.builds(JobSpec, kind=st.just("shell"), command=st.sampled_from(["true", "echo é"]),
              priority=st.integers(-5, 5))  # fmt: skip
plain_jobs = st.builds(
    JobRecord, id=st.text("0123456789abcdef", min_size=12, max_size=12),
    seq=st.integers(1, 10**9), spec=plain_specs, state=st.sampled_from(list(JobState)),
    submitted_at=st.floats(0, 2e9),
)  # fmt: skip


def json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _same_jobs(built: list[JobRecord], expected: list[JobRecord]) -> None:
    assert built == expected
    assert [repr(j) for j in built] == [repr(j) for j in expected]  # types too (1 vs 1.0)


@given(st.lists(plain_jobs, max_size=30))
def test_a_chunk_of_plain_rows_builds_the_jobs_row_by_row_would(jobs: list[JobRecord]) -> None:
    """A chunk of plain rows, built a field at a time, gives the jobs and columns exactly."""
    rows = json_round_trip([job_to_row(job) for job in jobs])
    assert all(len(row) == 9 for row in rows)
    ids, keys, states, built = jobs_from_rows(rows)
    _same_jobs(built, jobs)
    _same_jobs(built, [job_from_row(row) for row in rows])
    assert list(ids) == [job.id for job in jobs]
    assert list(keys) == [job.spec.key for job in jobs]
    assert list(states) == [job.state.value for job in jobs]


@given(st.lists(plain_jobs | any_jobs, max_size=12))
def test_a_mixed_chunk_of_rows_builds_the_same_jobs(jobs: list[JobRecord]) -> None:
    """Rows with a trailing map or tagged arguments in a chunk still come back exactly."""
    rows = json_round_trip([job_to_row(job) for job in jobs])
    ids, keys, states, built = jobs_from_rows(rows)
    _same_jobs(built, jobs)
    assert list(ids) == [job.id for job in jobs]
    assert list(keys) == [job.spec.key for job in jobs]
    assert list(states) == [job.state.value for job in jobs]


def test_a_chunk_with_a_bad_state_is_refused() -> None:
    """An unknown state fails row by row (KeyError) and in a chunk, where the bulk check
    names the job (ValueError, which the snapshot reader reports as corruption)."""
    rows = [["a" * 12, 1, "pending", 1.0, "call", "m:f", [], 0, None],
            ["b" * 12, 2, "sleeping", 1.0, "call", "m:f", [], 0, None]]
    with pytest.raises(KeyError):
        job_from_row(rows[1])
    with pytest.raises(ValueError, match="job 'bbbbbbbbbbbb': unknown state, not 'sleeping'"):
        jobs_from_rows(rows)


@given(plain_jobs | any_jobs)
def test_a_submit_record_builds_the_same_job(job: JobRecord) -> None:
    """A submit record rebuilds its job exactly, plain (row fields only) or not."""
    record = decode_record(json_round_trip(encode_record({"op": "submit",
                                                          "job": job_to_dict(job)})))
    _same_jobs([job_from_dict(record["job"])], [job])


@given(st.lists(st.tuples(st.integers(-3, 3), st.sampled_from([0.0, 0.5, 2.0])), max_size=40),
       st.sampled_from([0.0, 1.0, 5.0]))
def test_load_entries_pops_like_pushes(jobs: list[tuple[int, float]], now: float) -> None:
    """load_entries() (a restart's queue rebuild) yields exactly the order pushes do."""
    entries = [(f"j{i}", priority, i, delay) for i, (priority, delay) in enumerate(jobs)]
    pushed, loaded = JobQueue(), JobQueue()
    for entry in entries:
        pushed.push(*entry)
    loaded.load_entries([(-p, seq, job_id) for job_id, p, seq, nb in entries if nb <= 0.0],
                        [(nb, seq, job_id, p) for job_id, p, seq, nb in entries if nb > 0.0])
    assert len(loaded) == len(pushed)
    assert loaded.next_deadline() == pushed.next_deadline()
    order = [pushed.pop(now) for _ in range(len(entries) + 1)]
    assert [loaded.pop(now) for _ in range(len(entries) + 1)] == order


def _line(payload: bytes, seq: int = 7) -> bytes:
    return b'{"seq":%d,"crc":%d,"rec":%b}' % (seq, zlib.crc32(payload), payload)


def test_journal_payload_with_whitespace_still_parses() -> None:
    """A record with whitespace around it (never written, but valid JSON) is still read."""
    assert decode_line(_line(b' {"op": "forget", "ids": []} '), 7) == {"op": "forget", "ids": []}


@pytest.mark.parametrize(("payload", "why"), [
    (b'{"op":"forget","ids":[]} x', "bad JSON (Extra data"),
    (b'{"op":"forget","ids":[}', "bad JSON (Expecting value"),
    (b"", "bad JSON (Expecting value"),
    (b'"\xff"', "bad JSON ("),
    (b"[1]", "record is not a map with an op"),
])  # fmt: skip
def test_journal_payload_errors_are_reported_as_before(payload: bytes, why: str) -> None:
    """A payload the bare scanner refuses is judged by the full parser, with its message."""
    with pytest.raises(BadLine, match=r"^" + why.replace("(", r"\(")):
        decode_line(_line(payload), 7)
