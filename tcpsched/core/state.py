"""The job table as a pure state machine: every change is a record, and `apply` is the only
way in.

Theory of operation: the leader never edits a job directly. It describes the change as a
journal record (a dict with an "op"), applies it here, and the runtime writes the same record
to the journal. Recovery replays those records through this same `apply`, so the state after a
restart cannot drift from the state before it. `image()` takes an immutable view of the whole
table (jobs are frozen values, so this is a cheap list copy) that can be written out while the
table goes on changing; `snapshot()` renders it, and `from_snapshot()` rebuilds the table.

Ops: submit, start, finish, requeue, cancel, retry, forget. `apply` checks each against the legal
transitions of `core/jobs.py` and raises `ValueError` on anything else: the caller built a
wrong record, which is a bug (or, during recovery, a corrupt journal).

How jobs and user values become JSON (journal maps, snapshot rows) is core/records.py.

Besides the jobs, the table keeps what the leader reads often: `finished_order` (terminal ids
in finish order, each with when it finished: the record's wall-clock time, or the leader's
monotonic time when the leader applies it, see `apply` and `rebase_finished`), the output and
results finished jobs hold (what retention bounds; a result is counted once, when the job
finishes, and only if it is over `RESULT_CHARS_COUNTED`), and, built on the first lookup by
prefix, an index of ids by their first `PREFIX_INDEX_CHARS` characters, so resolving a prefix
costs a bucket, not a scan of the table.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, cast

import attrs

from tcpsched.core.jobmap import JobMap, rows_to_store, stored_values
from tcpsched.core.jobrows import SET, check_time, copy_job
from tcpsched.core.jobs import RETRYABLE_STATES, JobRecord, JobState, is_legal, value_chars
from tcpsched.core.records import job_from_dict, job_to_dict, job_to_row
from tcpsched.core.schedules import SCHEDULE_OPS, ScheduleTable

# job_to_dict is re-exported: core/scheduler.py imports it from here.
__all__ = ["SNAPSHOT_BLOCKS_FORMAT", "SNAPSHOT_FORMAT", "JobTable", "TableImage",
           "TableStatistics", "job_to_dict"]

# Format 2: the jobs are rows (what `snapshot()` gives). Format 3, what a snapshot file is
# written in since: rows, or for a chunk of plain rows a block of their columns
# (core/rowblocks.py). Both load.
SNAPSHOT_FORMAT = 2
SNAPSHOT_BLOCKS_FORMAT = 3
SNAPSHOT_FORMATS_READ = frozenset({SNAPSHOT_FORMAT, SNAPSHOT_BLOCKS_FORMAT})
RESULT_CHARS_COUNTED = 256  # smaller results are bounded by the count limit alone
PREFIX_INDEX_CHARS = 4  # the shortest prefix a client may name a job by
_STATES = {s.value: s for s in JobState}
_first, _seq_of, _key_of = itemgetter(0), itemgetter(1), itemgetter(8)  # fields of a stored row
_set_state = SET["state"]
_set_attempts = SET["attempts"]
_set_worker = SET["worker"]
_set_started_at = SET["started_at"]
_set_finished_at = SET["finished_at"]
_set_exit_code = SET["exit_code"]
_set_result = SET["result"]
_set_stdout = SET["stdout"]
_set_stderr = SET["stderr"]
_set_error = SET["error"]
_set_not_before = SET["not_before"]
_set_lost_workers = SET["lost_workers"]
_set_failures = SET["failures"]


@attrs.frozen
class TableStatistics:
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    submitted: int
    finished: int
    reassigned: int
    retried: int
    poisoned: int
    handed_back: int


@attrs.frozen
class TableImage:
    """The table at one moment, immutable: safe to render in another thread while it changes.

    Jobs are frozen values replaced on every change, so copying the list of references is all
    it takes; rendering (`header`, `rows`) can then take its time.
    """

    # Records, and on a restarted table the snapshot rows it still keeps (core/jobmap.py).
    jobs: list[Any]
    finished: list[str]
    next_seq: int
    counters: dict[str, int]
    # The schedules (core/schedules.py), JSON-ready; written after the header's "log".
    schedules: list[dict[str, Any]] = attrs.field(factory=list)

    def header(self, snapshot_format: int = SNAPSHOT_FORMAT) -> dict[str, Any]:
        return {"format": snapshot_format, "next_seq": self.next_seq,
                "counters": self.counters, "jobs_count": len(self.jobs)}

    def rows(self) -> Iterator[list[Any]]:
        return map(_row_of, self.jobs)

    def stored_rows(self) -> Iterator[Sequence[Any]]:
        """`rows()` without copying the rows a restarted table still stores (tuples): what a
        snapshot writes, where a tuple is the same JSON as a list."""
        return map(_stored_row_of, self.jobs)


def _copy_row(row: list[Any]) -> list[Any]:
    row = list(row)
    if len(row) > 6 and type(row[6]) is list:
        row[6] = list(row[6])
    return row


def _row_of(stored: Any) -> list[Any]:
    """The snapshot row of a stored job (core/jobmap.py: a row kept as it was read is that
    row already)."""
    if type(stored) is tuple:
        row = list(stored)
        row[6] = list(row[6])  # as `job_to_row` gives them
        return row
    return job_to_row(stored)


def _stored_row_of(stored: Any) -> Sequence[Any]:
    return stored if type(stored) is tuple else job_to_row(stored)


class JobTable:
    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}  # insertion order == submission order
        self.keys: dict[str, str] = {}  # idempotency key -> job id
        self.next_seq = 1
        self.counts: dict[JobState, int] = dict.fromkeys(JobState, 0)
        self.counters: dict[str, int] = {
            "submitted": 0, "finished": 0, "reassigned": 0, "retried": 0, "poisoned": 0,
            "handed_back": 0,
        }  # fmt: skip
        self.finished_order: dict[str, float] = {}  # terminal job id -> finished_at, in order
        # stdout + stderr + counted results held by terminal jobs (retention)
        self.finished_output_chars = 0
        self.result_chars: dict[str, int] = {}  # terminal job id -> its result's size, if big
        self._by_prefix: dict[str, list[str]] | None = None  # built on first use
        self.schedules = ScheduleTable()  # cron and interval schedules (core/schedules.py)

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def seq_of(self, job_id: str) -> int | None:
        """A job's seq (which never changes), None if there is no such job; builds no record
        of a stored row."""
        stored = dict.get(self.jobs, job_id)
        if stored is None:
            return None
        return stored[1] if type(stored) is tuple else stored.seq  # type: ignore[no-any-return]

    def newest_first(self) -> Iterator[JobRecord]:
        return reversed(self.jobs.values())

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Ids that start with `prefix` (at least `PREFIX_INDEX_CHARS` long), from the index."""
        if self._by_prefix is None:
            index: dict[str, list[str]] = {}
            for job_id in self.jobs:
                index.setdefault(job_id[:PREFIX_INDEX_CHARS], []).append(job_id)
            self._by_prefix = index
        bucket = self._by_prefix.get(prefix[:PREFIX_INDEX_CHARS], ())
        return [job_id for job_id in bucket if job_id.startswith(prefix)]

    def _replace(self, old: JobRecord, new: JobRecord, now: float | None = None) -> None:
        if old.state is not new.state:
            if not is_legal(old.state, new.state):
                raise ValueError(f"job {old.id}: illegal transition {old.state} -> {new.state}")
            self.counts[old.state] -= 1
            self.counts[new.state] += 1
            if new.state.is_terminal:
                self.finished_order[new.id] = (new.finished_at or 0.0) if now is None else now
                self.counters["finished"] += 1
                self._count_finished(new)
        self.jobs[new.id] = new

    def _count_finished(self, job: JobRecord) -> None:
        chars = len(job.stdout) + len(job.stderr)
        if job.result is not None:
            size = value_chars(job.result)
            if size > RESULT_CHARS_COUNTED:
                self.result_chars[job.id] = size
                chars += size
        self.finished_output_chars += chars

    def output_chars(self, job_id: str) -> int:
        """Characters of stdout, stderr and a counted result a job holds (what output
        retention counts)."""
        job = self.jobs[job_id]
        return len(job.stdout) + len(job.stderr) + self.result_chars.get(job_id, 0)

    def rebase_finished(self, offset_s: float) -> None:
        """Move every finish time by `offset_s`: the leader, at start, turns the records'
        wall-clock times into its monotonic clock, on which retention measures ages."""
        order = self.finished_order
        for job_id, at in order.items():
            order[job_id] = at + offset_s

    def _job(self, record: dict[str, Any]) -> JobRecord:
        job = self.jobs.get(record["id"])
        if job is None:
            raise ValueError(f"record {record['op']!r} names unknown job {record['id']!r}")
        return job

    def apply(self, record: dict[str, Any], now: float | None = None,
              built: JobRecord | None = None) -> JobRecord | None:
        """Apply one journal record; returns the job it changed (None for `forget`).

        `now` is the leader's monotonic clock, kept as the finish time retention ages a job
        by; without it (replay) the record's own wall-clock time is kept. `built` is, for a
        submit, the job the leader made the record from (`job_to_dict(built)` is the record's
        job): the leader's table keeps it instead of rebuilding it from the map, and a follower
        or a replay rebuilds an equal one (`job_from_dict`; tests/unit/test_table_rows.py).
        Recovery may give a plain submit's job as its stored row (a tuple, core/jobmap.py):
        the table keeps the row, and `apply` returns None."""
        op = record["op"]
        if op in SCHEDULE_OPS:
            return self._apply_schedule(record, now)
        if op == "submit":
            if type(built) is tuple:
                return self._submit_row(built)
            job = job_from_dict(record["job"]) if built is None else built
            if job.id in self.jobs:
                raise ValueError(f"submit of existing job {job.id!r}")
            self.jobs[job.id] = job
            if self._by_prefix is not None:
                self._by_prefix.setdefault(job.id[:PREFIX_INDEX_CHARS], []).append(job.id)
            self.counts[job.state] += 1
            if job.spec.key is not None:
                self.keys[job.spec.key] = job.id
            self.next_seq = max(self.next_seq, job.seq + 1)
            self.counters["submitted"] += 1
            return job
        if op == "start":
            job = self._job(record)
            new = copy_job(job)
            _set_state(new, JobState.RUNNING)
            _set_attempts(new, record["attempt"])
            _set_worker(new, record["worker"])
            _set_started_at(new, check_time("started_at", record["at"]))
            _set_not_before(new, 0.0)
        elif op == "finish":
            job = self._job(record)
            get = record.get
            new = copy_job(job)
            _set_state(new, JobState(record["state"]))
            # The worker's own clock, like started_at: TOOK must not count the time the
            # result waited for a coordinator (`at` is when the leader recorded it).
            _set_finished_at(new, check_time("finished_at", get("finished_at", record["at"])))
            _set_exit_code(new, get("exit_code"))
            _set_result(new, get("result"))
            _set_stdout(new, get("stdout", ""))
            _set_stderr(new, get("stderr", ""))
            _set_error(new, get("error"))
            _set_started_at(new, check_time("started_at", get("started_at", job.started_at)))
            _set_lost_workers(new, job.lost_workers + (1 if get("lost") else 0))
            _set_failures(new, job.failures + (1 if record["state"] == "failed" else 0))
            if record.get("poisoned"):
                self.counters["poisoned"] += 1
        elif op == "requeue":
            job = self._job(record)
            reason = record["reason"]  # "lost", "failed" or "handed_back"
            get = record.get
            new = copy_job(job)
            _set_state(new, JobState.PENDING)
            _set_worker(new, None)
            _set_not_before(new, check_time("not_before", get("not_before", 0.0)))
            _set_error(new, get("error", job.error))
            _set_exit_code(new, get("exit_code", job.exit_code))
            _set_stdout(new, get("stdout", job.stdout))
            _set_stderr(new, get("stderr", job.stderr))
            _set_lost_workers(new, job.lost_workers + (1 if reason == "lost" else 0))
            _set_failures(new, job.failures + (1 if reason == "failed" else 0))
            counter = {"lost": "reassigned", "failed": "retried", "handed_back": "handed_back"}
            self.counters[counter[reason]] += 1
        elif op == "cancel":
            job = self._job(record)
            new = copy_job(job)
            _set_state(new, JobState.CANCELLED)
            _set_finished_at(new, check_time("finished_at", record["at"]))
            _set_error(new, record.get("error", "cancelled"))
        elif op == "retry":
            return self._retry(self._job(record))
        elif op == "epoch":
            # A leader's first entry of its epoch (core/node.py): it changes no job.
            return None
        elif op == "forget":
            for job_id in record["ids"]:
                gone = self.jobs.pop(job_id, None)
                if gone is None:
                    continue
                self.counts[gone.state] -= 1
                if self.finished_order.pop(job_id, None) is not None:
                    self.finished_output_chars -= (len(gone.stdout) + len(gone.stderr)
                                                   + self.result_chars.pop(job_id, 0))
                if self._by_prefix is not None:
                    bucket = self._by_prefix[job_id[:PREFIX_INDEX_CHARS]]
                    bucket.remove(job_id)
                    if not bucket:
                        del self._by_prefix[job_id[:PREFIX_INDEX_CHARS]]
                if gone.spec.key is not None and self.keys.get(gone.spec.key) == job_id:
                    del self.keys[gone.spec.key]
            return None
        else:
            raise ValueError(f"unknown record op {op!r}")
        self._replace(job, new, now)
        return new

    def _submit_row(self, row: tuple[Any, ...]) -> None:
        """A submit recovery checked and gives as the job's stored row (core/plainsubmit.py):
        kept as a snapshot's plain row is, built into its record when first read."""
        job_id = row[0]
        if job_id in self.jobs:
            raise ValueError(f"submit of existing job {job_id!r}")
        if type(self.jobs) is not JobMap:
            self.jobs = JobMap(self.jobs)
        self.jobs[job_id] = row  # type: ignore[assignment]
        if self._by_prefix is not None:
            self._by_prefix.setdefault(job_id[:PREFIX_INDEX_CHARS], []).append(job_id)
        self.counts[JobState.PENDING] += 1
        if row[8] is not None:
            self.keys[row[8]] = job_id
        self.next_seq = max(self.next_seq, row[1] + 1)
        self.counters["submitted"] += 1

    def submit_rows(self, rows: list[tuple[Any, ...]]) -> int:
        """`_submit_row` of each row, in order, up to the first it would refuse (a job
        already in the table, or earlier in `rows`): how many it took. In whole-run passes:
        a restart's journal tail is mostly runs of plain submits (runtime/journalruns.py)."""
        ids = list(map(_first, rows))
        jobs = self.jobs
        if len(set(ids)) != len(ids) or not jobs.keys().isdisjoint(ids):
            seen: set[str] = set()
            for job_id in ids:
                if job_id in jobs or job_id in seen:
                    break
                seen.add(job_id)
            ids, rows = ids[: len(seen)], rows[: len(seen)]
        if not rows:
            return 0
        if type(jobs) is not JobMap:
            jobs = self.jobs = JobMap(jobs)
        jobs.update(zip(ids, rows, strict=True))
        if self._by_prefix is not None:
            for job_id in ids:
                self._by_prefix.setdefault(job_id[:PREFIX_INDEX_CHARS], []).append(job_id)
        self.counts[JobState.PENDING] += len(rows)
        keys = list(map(_key_of, rows))
        if None in keys:
            self.keys.update({key: job_id for key, job_id in zip(keys, ids, strict=True)
                              if key is not None})
        else:
            self.keys.update(zip(keys, ids, strict=True))
        self.next_seq = max(self.next_seq, max(map(_seq_of, rows)) + 1)
        self.counters["submitted"] += len(rows)
        return len(rows)

    def _apply_schedule(self, record: dict[str, Any], now: float | None) -> JobRecord | None:
        """A schedule's record; a fire's job enters the table in the same apply."""
        self.schedules.check(record)
        job = None
        if record["op"] == "fire" and record.get("job") is not None:
            job = self.apply({"op": "submit", "job": record["job"]}, now)
        self.schedules.apply(record, None if job is None else job.id)
        return job
    def _retry(self, job: JobRecord) -> JobRecord:
        """A failed or cancelled job back to pending as a new attempt: same id, seq (its place
        in the queue), submission time and attempt count (the next start is attempt + 1); the
        outcome of the last attempt is cleared, and so are the counts the retry and poison
        limits read, so the job gets its retries again. Terminal states stay final for every
        other record: this is the one way out, and only from `RETRYABLE_STATES`."""
        if job.state not in RETRYABLE_STATES:
            raise ValueError(f"job {job.id}: cannot retry a {job.state} job")
        new = attrs.evolve(
            job, state=JobState.PENDING, worker=None, started_at=None, finished_at=None,
            exit_code=None, result=None, stdout="", stderr="", error=None, not_before=0.0,
            lost_workers=0, failures=0,
        )  # fmt: skip
        self.counts[job.state] -= 1
        self.counts[JobState.PENDING] += 1
        if self.finished_order.pop(job.id, None) is not None:
            self.finished_output_chars -= (len(job.stdout) + len(job.stderr)
                                           + self.result_chars.pop(job.id, 0))
        self.jobs[job.id] = new
        return new

    def statistics(self) -> TableStatistics:
        c = self.counts
        return TableStatistics(
            pending=c[JobState.PENDING], running=c[JobState.RUNNING],
            succeeded=c[JobState.SUCCEEDED], failed=c[JobState.FAILED],
            cancelled=c[JobState.CANCELLED], **self.counters,
        )  # fmt: skip

    def image(self) -> TableImage:
        """An immutable view of the table now (a list copy: milliseconds at a million jobs)."""
        return TableImage(jobs=stored_values(self.jobs), finished=list(self.finished_order),
                          next_seq=self.next_seq, counters=dict(self.counters),
                          schedules=self.schedules.to_json())

    def snapshot(self) -> dict[str, Any]:
        """The whole table as one JSON-ready value."""
        image = self.image()
        return {**image.header(), "schedules": image.schedules, "finished": image.finished,
                "jobs": list(image.rows())}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> JobTable:
        """Rebuild a table from `snapshot()` output."""
        # Copies: the table may keep plain rows as its jobs, and the caller still has these.
        return cls.from_parts(data, [list(map(_copy_row, data["jobs"]))])

    @classmethod
    def from_parts(cls, header: dict[str, Any], row_chunks: Iterable[list[list[Any]]]
                   ) -> JobTable:
        """Rebuild a table from a snapshot header and its rows, a chunk at a time.

        Taking rows in chunks lets the caller parse them a chunk at a time: the parsed rows of
        a million jobs would otherwise all be alive at once, and the memory they leave behind
        would stay in the process (fragmented) after they are gone.
        """
        if header.get("format") not in SNAPSHOT_FORMATS_READ:
            raise ValueError(f"unknown snapshot format {header.get('format')!r}")
        blocks = header["format"] == SNAPSHOT_BLOCKS_FORMAT
        table = cls()
        jobs, keys = table.jobs, table.keys
        by_state: collections.Counter[str] = collections.Counter()
        shared: dict[str, str] = {}
        for rows in row_chunks:
            # Whole-chunk passes (C loops for the dicts): this is the hot path of a restart.
            # A chunk of plain rows is kept as rows, built into jobs when first read.
            (ids, row_keys, states, built), as_rows = rows_to_store(rows, shared, blocks=blocks)
            if as_rows and type(jobs) is not JobMap:
                jobs = table.jobs = JobMap(jobs)
            jobs.update(zip(ids, built, strict=True))
            if None in row_keys:
                keys.update({key: job_id for key, job_id in zip(row_keys, ids, strict=True)
                             if key is not None})
            else:
                keys.update(zip(cast("Sequence[str]", row_keys), ids, strict=True))
            by_state.update(states)
        if len(jobs) != header["jobs_count"] or sum(by_state.values()) != len(jobs):
            raise ValueError(f"snapshot holds {len(jobs)} distinct jobs, its header says "
                             f"{header['jobs_count']}")
        for state, count in by_state.items():
            table.counts[_STATES[state]] = count
        table.finished_order = {job_id: jobs[job_id].finished_at or 0.0
                                for job_id in header["finished"]}
        for job_id in table.finished_order:
            table._count_finished(jobs[job_id])
        terminal = sum(n for state, n in table.counts.items() if state.is_terminal)
        if len(table.finished_order) != terminal:
            raise ValueError("snapshot's finished list does not match its terminal jobs")
        table.next_seq = header["next_seq"]
        table.schedules = ScheduleTable.from_json(header.get("schedules", []))
        table.counters.update(header["counters"])
        return table
