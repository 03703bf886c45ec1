"""Recovery builds each journal-tail submit once (`typed_submit`) with the checks a JobSpec
runs on construction, and the orjson guard still finds wide integers behind digit runs."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.record_types import typed_submit
from tcpsched.core.records import (
    decode_record,
    encode_record,
    job_from_dict,
    job_to_dict,
    job_to_row,
    jobs_from_rows,
)
from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime import fastjson
from tcpsched.runtime.journal import recover
from tcpsched.runtime.journal_lines import encode_line, segment_name
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, write_snapshot
from tcpsched.runtime.storage import check
from tests.unit.test_state import jobs, specs

GOOD = {"id": "a1b2c3d4e5f6", "seq": 1, "state": "pending", "kind": "shell",
        "command": "true"}


@settings(max_examples=150, deadline=None)
@given(spec=specs, seq=st.integers(1, 10**9), at=st.floats(0, 2e9))
def test_the_job_a_submit_is_checked_as_is_the_job_apply_would_build(
        spec: JobSpec, seq: int, at: float) -> None:
    """`typed_submit` of a submit read back from JSON gives the job `job_from_dict` builds,
    equal to the job the leader journaled."""
    job = JobRecord(id="0123456789ab", seq=seq, spec=spec, submitted_at=at)
    record = decode_record(json.loads(json.dumps(encode_record(
        {"op": "submit", "job": job_to_dict(job)}))))
    built = typed_submit(record, 1, seq)
    assert built == job_from_dict(record["job"]) == job


def _write(data_dir: Path, job: dict[str, Any]) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / segment_name(1)
    path.write_bytes(encode_line(1, {"op": "submit", "job": GOOD}, 1)
                     + encode_line(2, {"op": "submit", "job": job}, 1)
                     + encode_line(3, {"op": "forget", "ids": []}, 1))
    return path


@pytest.mark.parametrize(("change", "why"), [
    ({"function": "m:f"}, "shell job needs no function"),
    ({"kind": "call", "function": "m:f"}, "call job needs no command"),
    ({"env": ["A=1"]}, "env must be a map"),
    ({"env": {"1A": "x"}}, "env name"),
    ({"kind": None}, "has no kind"),
    ({"tags": "ab"}, "tags must be a list"),
    ({"retries": 5000}, "retries must be within"),
    ({"kind": "call", "command": None, "function": "not a function"}, "module:function"),
    ({"timeout": 0}, "timeout must be more than 0"),
])
def test_a_bad_journal_submit_is_refused_though_it_is_built_without_the_constructor(
        tmp_path: Path, change: dict[str, Any], why: str) -> None:
    """What JobSpec's constructor refuses, recovery and `--check` refuse too, naming the line:
    the one build `typed_submit` makes skips the constructor but not its checks."""
    job = {**GOOD, "id": "ffff00001111", "seq": 2, **change}
    path = _write(tmp_path, {k: v for k, v in job.items() if v is not None})
    code, lines = check(tmp_path)
    assert code == 1
    assert any(f"{path}:2:" in line and why in line for line in lines), lines
    with pytest.raises(JournalError, match=why):
        recover(tmp_path)


def test_a_recovered_submit_is_the_job_journaled(tmp_path: Path) -> None:
    """A journal-tail submit with every optional field recovers to the job it was."""
    spec = JobSpec(kind="call", function="m:f", args=(1, b"x"), kwargs={"k": [1]}, priority=3,
                   retries=2, timeout=5.0, delay=1.5, tags=("gpu",), key="k1",
                   env={"A": "1"}, cwd="/tmp", group="g1")
    job = JobRecord(id="0123456789ab", seq=1, spec=spec, submitted_at=10.0, not_before=11.5)
    (tmp_path / segment_name(1)).write_bytes(
        encode_line(1, {"op": "submit", "job": job_to_dict(job)}, 1))
    assert recover(tmp_path).table.get(job.id) == job


@pytest.mark.parametrize("text", [
    '["a1234567890123456789012345",123456789012345678901234]',
    '["12345678901234567890123x","1234567890123456789012345678",-98765432109876543210]',
    '{"k":"0000000000000000000000","n":99999999999999999999}',
])
def test_a_wide_integer_after_a_digit_run_in_a_string_is_read_exactly(text: str) -> None:
    """The guard looks past a run of digits inside a string to a wide integer after it."""
    assert repr(fastjson.loads(text.encode())) == repr(json.loads(text))


@settings(max_examples=80, deadline=None)
@given(many=st.lists(jobs, max_size=6), plain=st.lists(specs.filter(
    lambda s: job_to_row(JobRecord(id="x", seq=1, spec=s))[9:] == []), max_size=6))
def test_snapshot_rows_come_back_as_the_frozen_jobs_they_were(
        many: list[JobRecord], plain: list[JobSpec]) -> None:
    """Rows through JSON and `jobs_from_rows` (plain chunks and mixed ones) give equal jobs
    of the real, frozen classes, not of the twins they were filled as."""
    for chunk in (many, [JobRecord(id=f"{i:012x}", seq=i + 1, spec=s, submitted_at=1.5)
                         for i, s in enumerate(plain)]):
        rows = json.loads(json.dumps([job_to_row(job) for job in chunk]))
        built = jobs_from_rows(rows).jobs
        assert built == chunk
        for job in built:
            assert type(job) is JobRecord and type(job.spec) is JobSpec
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                job.spec.priority = 3  # type: ignore[misc]


def _snapshot_with(tmp_path: Path, old: bytes, new: bytes) -> Path:
    """A snapshot of two queued jobs with `old` replaced by `new` in its rows, CRC redone."""
    table = JobTable()
    for i, spec in enumerate([JobSpec(kind="call", function="m:f", args=(1,)),
                              JobSpec(kind="shell", command="true", key="k")]):
        table.apply({"op": "submit", "job": job_to_dict(
            JobRecord(id=f"{i:012x}", seq=i + 1, spec=spec, submitted_at=5.0))})
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_snapshot(tmp_path, 2, table.image())
    path = tmp_path / SNAPSHOT_NAME
    data = path.read_bytes()
    body_at = data.index(b',"table":') + 9
    crc_at = data.rindex(b',"crc":')
    rows_at = data.index(b"\n", body_at)
    assert old in data[rows_at:crc_at]
    body = data[body_at:rows_at] + data[rows_at:crc_at].replace(old, new, 1)
    path.write_bytes(data[:body_at] + body + b',"crc":%d}\n' % zlib.crc32(body))
    return path


@pytest.mark.parametrize(("old", "new", "why"), [
    (b'"pending"', b'"bogus"', "unknown state"),
    (b'"pending"', b'7', "unknown state"),
    (b'"call"', b'"rocket"', "not a call of module:function"),
    (b'"m:f"', b'"not a function"', "not a call of module:function"),
    (b'"true"', b'"  "', "non-empty shell command"),
    (b'[1],0,', b'[1],"high",', "priority must be an integer"),
    (b'[1],0,', b'[1],2000000,', "priority must be an integer"),
    (b'"000000000000",1,', b'"000000000000",-4,', "seq must be an integer"),
    (b'"000000000000",1,', b'"",1,', "an id must be"),
    (b',5.0,', b',"soon",', "submitted_at must be a finite number"),
    (b',5.0,', b',1' + b'0' * 400 + b',', "submitted_at must be a finite number"),
    (b'"k"]', b'["k"]]', "a key must be text"),
    (b'"k"]', b'"k",{},3]', "9 or 10 fields"),
])
def test_a_corrupt_snapshot_row_is_refused_naming_its_job(
        tmp_path: Path, old: bytes, new: bytes, why: str) -> None:
    """A CRC-valid snapshot whose row holds what no job can is refused by recovery and by
    `--check`, with the reason, instead of loading a job the queue would crash on."""
    _snapshot_with(tmp_path, old, new)
    with pytest.raises(JournalError, match=why):
        recover(tmp_path)
    code, lines = check(tmp_path)
    assert code != 0 and any(why in line for line in lines), lines


def test_an_unaltered_snapshot_of_the_helper_loads(tmp_path: Path) -> None:
    """The corrupt-row helper itself leaves a loadable snapshot when nothing is changed."""
    _snapshot_with(tmp_path, b'"pending"', b'"pending"')
    assert len(recover(tmp_path).table) == 2
