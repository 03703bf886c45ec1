"""A restarted table keeps plain snapshot rows as rows (core/jobmap.py), snapshots write plain
chunks as blocks of columns (core/rowblocks.py), and plain journal submits take a short path
(core/plainsubmit.py): each gives exactly what the general path gives, and refuses the same."""

from __future__ import annotations

import json
import random
import shutil
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, multiple

from tcpsched.core import rowblocks
from tcpsched.core.jobbuild import plain_job_of_row
from tcpsched.core.jobmap import JobMap
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.plainsubmit import plain_submit
from tcpsched.core.record_types import typed_submit
from tcpsched.core.records import (
    decode_record,
    encode_record,
    job_to_dict,
    job_to_row,
    jobs_from_rows,
)
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime.journal import recover
from tcpsched.runtime.journal_lines import encode_line, segment_name
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, read_snapshot, write_snapshot
from tcpsched.runtime.storage import check
from tests.unit.test_jobqueue import JOB_IDS, PRIORITIES, JobQueueMachine
from tests.unit.test_restart_paths import plain_jobs
from tests.unit.test_state import jobs as any_jobs
from tests.unit.test_state import json_round_trip, table_state

FIXTURES = Path(__file__).parent / "fixtures"


def _table(jobs: list[JobRecord]) -> JobTable:
    table = JobTable()
    for job in jobs:
        table.apply({"op": "submit", "job": job_to_dict(job)})
    return table


def _queued(n: int, start: int = 0, priorities: int = 2) -> list[JobRecord]:
    return [JobRecord(id=f"{i:012x}", seq=i + 1, submitted_at=1.0 + i, spec=JobSpec(
        kind="call", function="operator:add", args=(i, 1), key=f"k{i}",
        priority=i % priorities)) for i in range(start, start + n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(plain_jobs, min_size=1, max_size=30))
def test_a_block_reads_back_as_the_jobs_its_rows_build(jobs: list[JobRecord]) -> None:
    """A chunk of plain rows written as a block, through JSON, gives stored rows that build
    exactly the jobs the rows build (values and their types), with one string per target."""
    rows = json_round_trip([job_to_row(job) for job in jobs])
    saved, rowblocks.BLOCK_ROWS_MIN = rowblocks.BLOCK_ROWS_MIN, 1
    try:
        block = rowblocks.block_of_rows(rows)
    finally:
        rowblocks.BLOCK_ROWS_MIN = saved
    assert block is not None
    ids, keys, states, stored = rowblocks.stored_rows(
        rowblocks.columns_of_block(json_round_trip(block)), {})
    built = [plain_job_of_row(row) for row in stored]
    expected = jobs_from_rows(json_round_trip(rows)).jobs
    assert built == expected == jobs
    assert [repr(j) for j in built] == [repr(j) for j in expected]
    assert list(ids) == [j.id for j in jobs] and list(keys) == [j.spec.key for j in jobs]
    # One state for all comes as its count (for `Counter.update`).
    assert Counter(states) == Counter(j.state.value for j in jobs)
    targets = {}
    for row in stored:
        assert targets.setdefault(row[5], row[5]) is row[5]


def test_a_restarted_table_builds_each_row_once_on_first_read(tmp_path: Path) -> None:
    """Rows stay rows until read; every read hands out the same record, equal to the job
    that was snapshotted, and a snapshot of the restarted table is the same file."""
    jobs = _queued(300)
    write_snapshot(tmp_path, 300, _table(jobs).image())
    first = (tmp_path / SNAPSHOT_NAME).read_bytes()
    _, table, _ = read_snapshot(tmp_path / SNAPSHOT_NAME)
    assert type(table.jobs) is JobMap and table.jobs.rows_left() == 300
    write_snapshot(tmp_path, 300, table.image())
    assert (tmp_path / SNAPSHOT_NAME).read_bytes() == first
    job = table.jobs[jobs[5].id]
    assert job == jobs[5] and job is table.get(jobs[5].id) is table.jobs.get(jobs[5].id)
    assert table.jobs.rows_left() == 299
    assert next(iter(table.newest_first())) == jobs[-1]
    assert table.jobs == {j.id: j for j in jobs}
    assert not table.jobs != dict(table.jobs.items())  # noqa: SIM202 (JobMap.__ne__)
    assert table.jobs.rows_left() == 0
    assert table.jobs.get("nope") is None and table.jobs.pop("nope", 7) == 7
    with pytest.raises(KeyError):
        table.jobs.pop("nope")


@pytest.mark.parametrize("priorities", [1, 2])  # 1: the rows are queued as one run
def test_a_restarted_table_changes_and_queues_as_the_eager_one_did(tmp_path: Path,
                                                                   priorities: int) -> None:
    """Records applied to rows, forgetting a row, and the queue rebuilt from rows all give
    the state the same history gives a table of records."""
    jobs = _queued(250, priorities=priorities)
    write_snapshot(tmp_path, 250, _table(jobs).image())
    _, restarted, _ = read_snapshot(tmp_path / SNAPSHOT_NAME)
    eager = _table(jobs)
    for table in (restarted, eager):
        table.apply({"op": "start", "id": jobs[3].id, "attempt": 1, "worker": "w", "at": 5.0})
        table.apply({"op": "cancel", "id": jobs[4].id, "at": 6.0})
        table.apply({"op": "forget", "ids": [jobs[4].id, jobs[9].id]})
        table.apply({"op": "submit", "job": job_to_dict(_queued(1, 400)[0])})
    assert table_state(restarted) == table_state(eager)
    assert restarted.keys == eager.keys and restarted.counts == eager.counts
    orders = []
    for table in (restarted, eager):
        queue = Scheduler(SchedulerConfig(), random.Random(1), 0.0, table=table).queue
        orders.append([queue.pop(1.0) for _ in range(len(queue))])
    assert orders[0] == orders[1] and len(orders[0]) == 248


def _corrupt_block(tmp_path: Path, change: Any) -> Path:
    """A snapshot of 300 queued jobs whose block is changed by `change`, CRC redone."""
    write_snapshot(tmp_path, 300, _table(_queued(300)).image())
    path = tmp_path / SNAPSHOT_NAME
    data = path.read_bytes()
    line_at = data.index(b"\n") + 1
    line_end = data.index(b"\n", line_at)
    block = json.loads(data[line_at:line_end])
    change(block)
    data = data[:line_at] + json.dumps(block, separators=(",", ":")).encode() + data[line_end:]
    body_at = data.index(b',"table":') + 9
    crc_at = data.rindex(b',"crc":')
    path.write_bytes(data[:crc_at] + b',"crc":%d}\n' % zlib.crc32(data[body_at:crc_at]))
    return path


@pytest.mark.parametrize(("change", "why"), [
    (lambda b: b.update(priorities="high"), "priority must be an integer"),
    (lambda b: b.update(submitted_at=[10**400] * len(b["ids"])), "submitted_at must be a finite"),
    (lambda b: b.update(states="sleeping"), "unknown state"),
    (lambda b: b["seqs"].pop(), "columns must all hold its rows"),
    (lambda b: b.pop("keys"), "holds exactly the fields"),
    (lambda b: b["args"].__setitem__(3, {"a": 1}), "args must be lists"),
    (lambda b: b.update(targets="not a function"), "module:function"),
    (lambda b: b["ids"].__setitem__(7, 12), "an id must be"),
])
def test_a_corrupt_block_is_refused_with_one_line(tmp_path: Path, change: Any, why: str) -> None:
    """A block with a valid CRC but impossible contents is refused by `--check` and at
    startup, one line naming the snapshot (and the job, where one is to blame)."""
    path = _corrupt_block(tmp_path, change)
    code, lines = check(tmp_path)
    assert code == 1 and any(why in line and str(path) in line for line in lines), lines
    with pytest.raises(JournalError, match=why) as caught:
        recover(tmp_path)
    assert "\n" not in str(caught.value)


def test_a_snapshot_of_plain_rows_written_before_blocks_still_loads(tmp_path: Path) -> None:
    """The fixture (a format-2 snapshot of one plain chunk, call and shell jobs, and a journal
    tail, written by the code before blocks) recovers to exactly the table it recovered."""
    data_dir = tmp_path / "old"
    shutil.copytree(FIXTURES / "datadir_rows_v2", data_dir)
    expected = json.loads((FIXTURES / "datadir_rows_v2.expected.json").read_text())
    result = recover(data_dir)
    assert result.last_seq == expected["last_seq"]
    assert type(result.table.jobs) is JobMap
    assert json_round_trip(result.table.snapshot()) == expected["snapshot"]


_VALUES = st.none() | st.booleans() | st.integers(-3, 2**60) | st.floats() | st.text(max_size=4) \
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2), st.integers(),
                                                           max_size=1)
_FIELDS = st.sampled_from(["id", "seq", "state", "submitted_at", "kind", "function", "command",
                           "args", "priority", "key", "tags", "retries", "worker"])


def submit_with(job: JobRecord, changes: list[tuple[str, Any]]) -> dict[str, Any]:
    """The submit record of `job` as the journal reads it back, with `changes` made to its
    job map (a value of `...` removes the field)."""
    job_map = json_round_trip(encode_record({"op": "submit", "job": job_to_dict(job)}))["job"]
    for name, value in changes:
        if value is ...:
            job_map.pop(name, None)
        else:
            job_map[name] = value
    return {"op": "submit", "job": job_map}


@settings(max_examples=300, deadline=None)
@given(job=plain_jobs | any_jobs, changes=st.lists(st.tuples(_FIELDS, _VALUES | st.just(...)),
                                                  max_size=3))
def test_a_plain_submit_is_taken_only_as_the_general_path_takes_it(
        job: JobRecord, changes: list[tuple[str, Any]]) -> None:
    """`plain_submit` accepts no record `typed_submit` refuses, and builds the job it builds
    (types too), also through its stored row; an unchanged submit of a plain pending job
    does take the short path."""
    record = submit_with(job, changes)
    fast = plain_submit(json_round_trip(record), 1, 5)
    try:
        slow = typed_submit(decode_record(json_round_trip(record)), 1, 5)
    except (ValueError, TypeError, KeyError, AttributeError):
        slow = None
    if fast is not None:
        assert slow is not None and fast == slow and repr(fast) == repr(slow)
        row = plain_submit(json_round_trip(record), 1, 5, as_row=True)
        assert repr(plain_job_of_row(row)) == repr(slow)
    plain = (not changes and job.state is JobState.PENDING
             and len(job_to_row(job)) == 9 and type(job_to_row(job)[6]) is list)
    if plain and slow is not None:
        assert fast is not None


def test_a_shell_submit_whose_command_is_not_text_is_refused_in_one_line(tmp_path: Path) -> None:
    """A CRC-valid journal submit of a shell job with a non-text command is refused naming
    its line (it used to escape recovery as an AttributeError traceback)."""
    job = {"id": "a1b2c3d4e5f6", "seq": 1, "state": "pending", "kind": "shell", "command": 5}
    (tmp_path / segment_name(1)).write_bytes(  # not the last line, which may be torn
        encode_line(1, {"op": "submit", "job": job}, 1)
        + encode_line(2, {"op": "forget", "ids": []}, 1))
    code, lines = check(tmp_path)
    assert code == 1 and any(":1: bad record" in line for line in lines), lines
    with pytest.raises(JournalError, match="bad record"):
        recover(tmp_path)


class RunLoadedQueueMachine(JobQueueMachine):
    """The queue model's machine, started from a restart's run (`JobQueue.load_run`) instead
    of an empty queue: pushes, removals, pops and delays then behave as the model says."""

    @initialize(target=JobQueueMachine.ids, job_ids=st.lists(JOB_IDS, unique=True, max_size=8),
                priority=PRIORITIES)
    def start(self, job_ids: list[str], priority: int) -> Any:  # type: ignore[override]
        rows = []
        for job_id in job_ids:
            rows.append((job_id, self.next_seq))
            self.model[job_id] = (priority, self.next_seq, 0.0)
            self.next_seq += 1
        if rows:
            seqs = dict(rows)  # a job's seq never changes (pushes here may renumber them)
            self.queue.load_run(rows, priority, seqs.get)
        return multiple(*job_ids)


TestRunLoadedQueue = RunLoadedQueueMachine.TestCase
