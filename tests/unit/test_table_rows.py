"""The job table's rows on the restart path: changed copies equal to attrs.evolve, snapshots that
load back byte for byte, orjson parsing exactly as json does, and data dirs of the old code."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core.jobrows import SET, copy_job
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.records import encode_record, job_to_dict
from tcpsched.core.state import JobTable
from tcpsched.runtime import fastjson
from tcpsched.runtime.journal import recover
from tcpsched.runtime.journal_lines import decode_line, encode_line
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, read_snapshot, write_snapshot
from tests.unit.test_state import Driver, jobs, json_round_trip, operations, table_state

FIXTURES = Path(__file__).parent / "fixtures"

_changes = st.fixed_dictionaries({}, optional={
    "state": st.sampled_from(list(JobState)), "attempts": st.integers(0, 5),
    "worker": st.none() | st.just("w2"), "started_at": st.none() | st.floats(0, 2e9),
    "finished_at": st.none() | st.floats(0, 2e9), "exit_code": st.none() | st.integers(0, 9),
    "result": st.none() | st.binary(max_size=4), "stdout": st.text(max_size=3),
    "error": st.none() | st.text(max_size=3), "not_before": st.floats(0, 99),
    "failures": st.integers(0, 3)})


@given(job=jobs, changes=_changes)
def test_a_changed_copy_equals_what_attrs_evolve_makes(job: JobRecord,
                                                       changes: dict[str, Any]) -> None:
    """copy_job plus slot setters gives the record attrs.evolve would, and leaves the old one."""
    before = attrs.evolve(job)
    new = copy_job(job)
    for name, value in changes.items():
        SET[name](new, value)
    assert new == attrs.evolve(job, **changes)
    assert job == before
    assert new is not job


def test_apply_refuses_a_non_finite_time_as_the_record_validator_did() -> None:
    """A start or finish with an infinite time is refused, and the job is left as it was."""
    table = JobTable()
    job = JobRecord(id="a" * 12, seq=1, spec=JobSpec(kind="shell", command="true"))
    table.apply({"op": "submit", "job": job_to_dict(job)})
    with pytest.raises(ValueError, match="started_at must be a finite number"):
        table.apply({"op": "start", "id": job.id, "attempt": 1, "worker": "w", "at": math.inf})
    assert table.jobs[job.id] == job


def test_the_leader_keeps_the_job_it_built_and_a_follower_rebuilds_an_equal_one() -> None:
    """A submit applied with `built` keeps that object; the journal map rebuilds it exactly."""
    spec = JobSpec(kind="call", function="m:f", args=(b"\x00", [1, 2]), kwargs={"a": 1},
                   tags=("t",), env={"X": "1"}, key="k", priority=3)
    job = JobRecord(id="b" * 12, seq=1, spec=spec, submitted_at=5.0)
    record = {"op": "submit", "job": job_to_dict(job)}
    leader, follower = JobTable(), JobTable()
    assert leader.apply(record, built=job) is job
    line = encode_line(1, record)
    follower.apply(decode_line(line.rstrip(b"\n"), 1))
    assert table_state(follower) == table_state(leader)


def _snapshot_bytes(table: JobTable, data_dir: Path) -> bytes:
    write_snapshot(data_dir, 7, table.image())
    return (data_dir / SNAPSHOT_NAME).read_bytes()


@settings(max_examples=60, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**16))
def test_snapshot_load_snapshot_is_byte_identical(ops: list[tuple[Any, ...]], seed: int,
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    """A snapshot file of any live table, loaded back (orjson), writes the very same bytes."""
    driver = Driver(seed)
    for op in ops:
        driver.run(op)
    first_dir = tmp_path_factory.mktemp("first")
    first = _snapshot_bytes(driver.sched.table, first_dir)
    seq, loaded, _ = read_snapshot(first_dir / SNAPSHOT_NAME)
    assert seq == 7
    assert table_state(loaded) == table_state(JobTable.from_snapshot(
        json_round_trip(driver.sched.table.snapshot())))
    assert _snapshot_bytes(loaded, tmp_path_factory.mktemp("second")) == first


@settings(max_examples=60, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**16))
def test_journal_replay_through_real_lines_equals_the_live_leader(ops: list[tuple[Any, ...]],
                                                                  seed: int) -> None:
    """Every journal record as a real line (encoded, then parsed by orjson) replays into the
    leader's own table, which kept the jobs it built."""
    driver = Driver(seed)
    for op in ops:
        driver.run(op)
    replayed = JobTable()
    for seq, record in enumerate(driver.records, 1):
        replayed.apply(decode_line(encode_line(seq, record).rstrip(b"\n"), seq))
    assert table_state(replayed) == table_state(driver.sched.table)


_json_texts = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=10,
).map(json.dumps)


@given(text=_json_texts | st.sampled_from([
    "1e400", "[-1e400]", "NaN", '"\\ud800"', "123456789012345678901234567890",
    '{"a":18446744073709551616}', '{"a":1,"a":2}', "[1,]", "", '"\\u00e9"', "-0.0"]))
def test_fast_loads_reads_exactly_what_json_reads(text: str) -> None:
    """orjson with its fallback gives json's value (same types) or refuses what json refuses."""
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            fastjson.loads(text.encode("utf-8", "surrogatepass"))
        return
    got = fastjson.loads(text.encode("utf-8", "surrogatepass"))
    assert repr(got) == repr(expected)


def test_a_data_dir_written_by_the_json_only_code_still_loads(tmp_path: Path) -> None:
    """The fixture (snapshot + journal tail, every op, bytes and escapes, written by the code
    before orjson) recovers to exactly the table that code recovered."""
    data_dir = tmp_path / "old"
    shutil.copytree(FIXTURES / "datadir_json_v2", data_dir)
    expected = json.loads((FIXTURES / "datadir_json_v2.expected.json").read_text())
    result = recover(data_dir)
    assert result.last_seq == expected["last_seq"]
    snapshot = json_round_trip(result.table.snapshot())
    # Tables added since that code (schedules) come back empty; the rest is exactly as it was.
    assert snapshot.pop("schedules") == []
    assert snapshot == expected["snapshot"]
    states = {job.state for job in result.table.jobs.values()}
    assert states == {JobState.PENDING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def test_loaded_jobs_share_one_string_per_function_and_kind(tmp_path: Path) -> None:
    """A million queued jobs must not each hold their own copy of "module:function" and "call"."""
    table = JobTable()
    for i in range(1, 2001):
        spec = JobSpec(kind="call", function="operator:add", args=(i, 1))
        job = JobRecord(id=f"{i:012x}", seq=i, spec=spec, submitted_at=float(i))
        table.apply({"op": "submit", "job": job_to_dict(job)})
    write_snapshot(tmp_path, 2000, table.image())
    tail = JobRecord(id="f" * 12, seq=2001, spec=JobSpec(kind="call", function="operator:add"))
    line = encode_line(2001, encode_record({"op": "submit", "job": job_to_dict(tail)}))
    (tmp_path / "journal-00000000000000002001.jsonl").write_bytes(line)
    loaded = recover(tmp_path).table
    specs = [job.spec for job in loaded.jobs.values()]
    assert len(specs) == 2001
    assert len({id(spec.function) for spec in specs}) == 1
    assert len({id(spec.kind) for spec in specs}) == 1


def test_random_histories_survive_a_real_restart_of_the_files(tmp_path: Path) -> None:
    """A long random history, as a snapshot file plus journal lines, recovers to the live table."""
    driver = Driver(3)
    rng = random.Random(3)
    for _ in range(400):
        driver.run(rng.choice([("submit", rng.randint(-2, 2), rng.random(), 1),
                               ("register", rng.choice("ab"), 2),
                               ("result", rng.randint(0, 9), "succeeded", b"\x01"),
                               ("result", rng.randint(0, 9), "failed", None),
                               ("cancel", rng.randint(0, 99)), ("advance", 0.3)]))
    records = driver.records
    cut = len(records) // 2
    table = JobTable()
    for record in records[:cut]:
        table.apply(json_round_trip(encode_record(record)))
    write_snapshot(tmp_path, cut, table.image())
    with open(tmp_path / f"journal-{cut + 1:020d}.jsonl", "wb") as f:
        for seq, record in enumerate(records[cut:], cut + 1):
            f.write(encode_line(seq, record))
    assert table_state(recover(tmp_path).table) == table_state(driver.sched.table)
