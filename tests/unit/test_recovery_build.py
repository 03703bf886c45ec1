"""Recovery builds each journal-tail submit once (`typed_submit`) with the checks a JobSpec
runs on construction, and the orjson guard still finds wide integers behind digit runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.record_types import typed_submit
from tcpsched.core.records import decode_record, encode_record, job_from_dict, job_to_dict
from tcpsched.errors import JournalError
from tcpsched.runtime import fastjson
from tcpsched.runtime.journal import encode_line, recover, segment_name
from tcpsched.runtime.storage import check
from tests.unit.test_state import specs

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
