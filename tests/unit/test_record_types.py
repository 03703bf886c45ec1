"""Typed journal records: what comes back from disk or from a leader is checked like a message.

Each test pins one thing a CRC-valid but nonsensical line used to get past: `--check` called it
sound and then the coordinator crashed at startup, or a job stayed `running` forever.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.record_types import (
    EPOCH_MAX,
    FinishRecord,
    StartRecord,
    SubmitRecord,
    typed_record,
)
from tcpsched.core.records import job_to_dict
from tcpsched.errors import JournalError
from tcpsched.runtime.journal import recover
from tcpsched.runtime.journal_lines import encode_line, encode_promise, segment_name
from tcpsched.runtime.storage import check

GOOD_JOB = {"id": "a1b2c3d4e5f6", "seq": 1, "state": "pending", "kind": "shell",
            "command": "true"}


def write_journal(data_dir: Path, records: list[dict], epoch: int = 1) -> Path:  # type: ignore[type-arg]
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / segment_name(1)
    path.write_bytes(b"".join(encode_line(seq, record, epoch)
                              for seq, record in enumerate(records, 1)))
    return path


@pytest.mark.parametrize(("change", "why"), [
    ({"priority": "high"}, "bad job spec"),
    ({"state": "running"}, "submitted as 'running'"),
    ({"worker": "w1"}, "no worker"),
    ({"attempts": 2}, "no attempts"),
    ({"kind": "rocket"}, "kind must be"),
    ({"submitted_at": -5.0}, "finite non-negative time"),
])
def test_a_nonsensical_submit_is_refused_by_check_and_at_start(
        tmp_path: Path, change: dict, why: str) -> None:  # type: ignore[type-arg]
    """A CRC-valid submit with a bad field is corruption: `--check` exits 1 naming file and
    line and the reason, and recovery refuses to start, instead of crashing or running it."""
    path = write_journal(tmp_path, [{"op": "submit", "job": GOOD_JOB},
                                    {"op": "submit", "job": {**GOOD_JOB, "id": "ffff00001111",
                                                             "seq": 2, **change}},
                                    {"op": "forget", "ids": []}])
    code, lines = check(tmp_path)
    assert code == 1
    assert any(f"{path}:2:" in line and why in line for line in lines), lines
    with pytest.raises(JournalError, match=why):
        recover(tmp_path)


def test_a_start_of_an_unknown_job_or_a_bad_attempt_is_refused(tmp_path: Path) -> None:
    """References and ranges: a start names a job that exists, with an attempt >= 1."""
    write_journal(tmp_path, [{"op": "submit", "job": GOOD_JOB},
                             {"op": "start", "id": GOOD_JOB["id"], "attempt": 0,
                              "worker": "w1", "at": 1.0}, {"op": "forget", "ids": []}])
    assert check(tmp_path)[0] == 1
    other = tmp_path / "other"
    write_journal(other, [{"op": "start", "id": "nope12345678", "attempt": 1, "worker": "w1",
                           "at": 1.0}, {"op": "forget", "ids": []}])
    code, lines = check(other)
    assert code == 1 and any("unknown job" in line for line in lines), lines


def test_an_absurd_promise_is_refused(tmp_path: Path) -> None:
    """An epoch of 10**23 in a promise line would break every handshake: it is corruption."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / segment_name(1)).write_bytes(
        encode_promise(10**23, 1) + encode_line(1, {"op": "forget", "ids": []}, 1)
        + encode_promise(1, 1))
    code, lines = check(tmp_path)
    assert code == 1 and any("non-negative integers" in line for line in lines), lines


def test_an_epoch_record_must_name_its_own_epoch() -> None:
    """The leader's first entry says which epoch begins; it must be the one it is written in."""
    assert typed_record({"op": "epoch", "epoch": 3, "leader": 2}, 3, 9).leader == 2
    with pytest.raises(ValueError, match="epoch record"):
        typed_record({"op": "epoch", "epoch": 4, "leader": 2}, 3, 9)


def test_unknown_ops_and_fields_are_refused() -> None:
    """Anything the scheduler never writes is refused, not ignored."""
    with pytest.raises(ValueError, match="unknown record op"):
        typed_record({"op": "launch"}, 1, 1)
    with pytest.raises(ValueError, match="unknown field"):
        typed_record({"op": "cancel", "id": "abcd1234", "at": 1.0, "sudo": True}, 1, 1)


@given(st.integers(), st.one_of(st.integers(), st.floats(), st.text(), st.none()))
def test_typed_records_take_only_sane_values(attempt: int, at: object) -> None:
    """Whatever a field holds, a record is either refused with ValueError or within bounds."""
    try:
        record = typed_record({"op": "start", "id": "abcd1234", "attempt": attempt,
                               "worker": "w1", "at": at}, 1, 1)
    except ValueError:
        return
    assert isinstance(record, StartRecord)
    # None: assigned into a worker's prefetch place, not started yet (core/prefetch.py).
    assert record.attempt >= 1 and (record.at is None or (record.at >= 0
                                                          and record.at == record.at))


def test_what_the_scheduler_writes_passes() -> None:
    """The records the leader emits are all accepted (the checks refuse only nonsense)."""
    job = JobRecord(id="abcd1234abcd", seq=3, spec=JobSpec(kind="call", function="math:sqrt",
                                                           args=(2,), priority=5, retries=1))
    submit = typed_record(json.loads(json.dumps({"op": "submit", "job": job_to_dict(job)})), 2, 3)
    assert isinstance(submit, SubmitRecord) and submit.seq == 3
    finish = typed_record({"op": "finish", "id": job.id, "attempt": 1, "state": "succeeded",
                           "at": 5.0, "started_at": 4.0, "result": 1.41, "stdout": "",
                           "stderr": "", "exit_code": None, "error": None}, 2, 4)
    assert isinstance(finish, FinishRecord)
    assert EPOCH_MAX > 10**15


def test_every_record_the_scheduler_writes_is_read_back() -> None:
    """Whatever the leader journals passes the replay checks (a field added to a record must
    be added to its typed class too, or restarts would refuse the journal)."""
    from tcpsched.core import messages as m
    from tcpsched.core.events import Journal, Received
    from tests.unit.test_scheduler import Harness

    h = Harness(retry_base_s=0.01, retry_cap_s=0.01)
    records: list[dict] = []  # type: ignore[type-arg]
    original = h.sched.step

    def step(event, now, wall=None):  # type: ignore[no-untyped-def]
        effects = original(event, now, wall)
        records.extend(e.record for e in effects if isinstance(e, Journal))
        return effects

    h.sched.step = step  # type: ignore[method-assign]
    h.connect("w1", slots=3)
    ok, bad, lost = h.submit(), h.submit("false", retries=1), h.submit()
    for job_id, state in ((ok, "succeeded"), (bad, "failed")):
        h.result("w1", job_id, 1, state=state, exit_code=0 if state == "succeeded" else 1)
    h.advance(0.5, beating=("w1",))
    h.result("w1", bad, 2, state="failed", exit_code=1)
    h.step(Received(h.conns["w1"], m.HandBack(job_id=lost, attempt=1, reason="draining")))
    h.advance(5.0)  # w1 stops beating: dead, its jobs lost
    cancelled = h.submit()
    h._req += 1
    h.step(Received(1000, m.Cancel(req_id=h._req, job_id=cancelled)))
    ops = {r["op"] for r in records}
    assert {"submit", "start", "finish", "requeue", "cancel"} <= ops, ops
    for seq, record in enumerate(records, 1):
        typed_record(json.loads(json.dumps(record)), 1, seq)
