"""The job table as a pure state machine: every change is a record, and `apply` is the only
way in.

Theory of operation: the leader never edits a job directly. It describes the change as a
journal record (a JSON-ready dict with an "op"), applies it here, and the runtime writes the
same record to the journal. Recovery replays those records through this same `apply`, so the
state after a restart cannot drift from the state before it. `snapshot()` and `from_snapshot()`
carry the whole table (jobs, idempotency keys, counters) between compactions.

Ops: submit, start, finish, requeue, cancel, forget. `apply` checks each against the legal
transitions of `core/jobs.py` and raises `ValueError` on anything else: the caller built a
wrong record, which is a bug (or, during recovery, a corrupt journal).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from tcpsched.core.jobs import JobRecord, JobSpec, JobState, is_legal

SNAPSHOT_FORMAT = 1

_SPEC_FIELDS = tuple(f.name for f in attrs.fields(JobSpec))
_RECORD_FIELDS = tuple(f.name for f in attrs.fields(JobRecord) if f.name not in ("spec", "state"))


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind, "command": spec.command, "function": spec.function,
        "args": list(spec.args), "kwargs": dict(spec.kwargs), "priority": spec.priority,
        "retries": spec.retries, "timeout": spec.timeout, "delay": spec.delay,
        "tags": list(spec.tags), "key": spec.key, "after": list(spec.after),
    }  # fmt: skip


def spec_from_dict(data: dict[str, Any]) -> JobSpec:
    return JobSpec(
        kind=data["kind"], command=data.get("command"), function=data.get("function"),
        args=tuple(data.get("args", ())), kwargs=dict(data.get("kwargs", {})),
        priority=data.get("priority", 0), retries=data.get("retries", 0),
        timeout=data.get("timeout"), delay=data.get("delay", 0.0),
        tags=tuple(data.get("tags", ())), key=data.get("key"), after=tuple(data.get("after", ())),
    )  # fmt: skip


def job_to_dict(job: JobRecord) -> dict[str, Any]:
    out = {name: getattr(job, name) for name in _RECORD_FIELDS}
    out["state"] = job.state.value
    out["spec"] = spec_to_dict(job.spec)
    return out


def job_from_dict(data: dict[str, Any]) -> JobRecord:
    fields = {name: data[name] for name in _RECORD_FIELDS if name in data}
    return JobRecord(spec=spec_from_dict(data["spec"]), state=JobState(data["state"]), **fields)


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

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def newest_first(self) -> Iterator[JobRecord]:
        return reversed(self.jobs.values())

    def _replace(self, old: JobRecord, new: JobRecord) -> None:
        if old.state is not new.state:
            if not is_legal(old.state, new.state):
                raise ValueError(f"job {old.id}: illegal transition {old.state} -> {new.state}")
            self.counts[old.state] -= 1
            self.counts[new.state] += 1
            if new.state.is_terminal:
                self.finished_order[new.id] = new.finished_at or 0.0
                self.counters["finished"] += 1
        self.jobs[new.id] = new

    def _job(self, record: dict[str, Any]) -> JobRecord:
        job = self.jobs.get(record["id"])
        if job is None:
            raise ValueError(f"record {record['op']!r} names unknown job {record['id']!r}")
        return job

    def apply(self, record: dict[str, Any]) -> JobRecord | None:
        """Apply one journal record; returns the job it changed (None for `forget`)."""
        op = record["op"]
        if op == "submit":
            job = job_from_dict(record["job"])
            if job.id in self.jobs:
                raise ValueError(f"submit of existing job {job.id!r}")
            self.jobs[job.id] = job
            self.counts[job.state] += 1
            if job.spec.key is not None:
                self.keys[job.spec.key] = job.id
            self.next_seq = max(self.next_seq, job.seq + 1)
            self.counters["submitted"] += 1
            return job
        if op == "start":
            job = self._job(record)
            new = attrs.evolve(
                job, state=JobState.RUNNING, attempts=record["attempt"],
                worker=record["worker"], started_at=record["at"], not_before=0.0,
            )  # fmt: skip
        elif op == "finish":
            job = self._job(record)
            new = attrs.evolve(
                job, state=JobState(record["state"]), finished_at=record["at"],
                exit_code=record.get("exit_code"), result=record.get("result"),
                stdout=record.get("stdout", ""), stderr=record.get("stderr", ""),
                error=record.get("error"),
                started_at=record.get("started_at", job.started_at),
                lost_workers=job.lost_workers + (1 if record.get("lost") else 0),
                failures=job.failures + (1 if record["state"] == "failed" else 0),
            )  # fmt: skip
            if record.get("poisoned"):
                self.counters["poisoned"] += 1
        elif op == "requeue":
            job = self._job(record)
            reason = record["reason"]  # "lost", "failed" or "handed_back"
            new = attrs.evolve(
                job, state=JobState.PENDING, worker=None, not_before=record.get("not_before", 0.0),
                error=record.get("error", job.error),
                exit_code=record.get("exit_code", job.exit_code),
                stdout=record.get("stdout", job.stdout), stderr=record.get("stderr", job.stderr),
                lost_workers=job.lost_workers + (1 if reason == "lost" else 0),
                failures=job.failures + (1 if reason == "failed" else 0),
            )  # fmt: skip
            counter = {"lost": "reassigned", "failed": "retried", "handed_back": "handed_back"}
            self.counters[counter[reason]] += 1
        elif op == "cancel":
            job = self._job(record)
            new = attrs.evolve(
                job, state=JobState.CANCELLED, finished_at=record["at"],
                error=record.get("error", "cancelled"),
            )  # fmt: skip
        elif op == "forget":
            for job_id in record["ids"]:
                job = self.jobs.pop(job_id, None)
                if job is None:
                    continue
                self.counts[job.state] -= 1
                self.finished_order.pop(job_id, None)
                if job.spec.key is not None and self.keys.get(job.spec.key) == job_id:
                    del self.keys[job.spec.key]
            return None
        else:
            raise ValueError(f"unknown record op {op!r}")
        self._replace(job, new)
        return new

    def statistics(self) -> TableStatistics:
        c = self.counts
        return TableStatistics(
            pending=c[JobState.PENDING], running=c[JobState.RUNNING],
            succeeded=c[JobState.SUCCEEDED], failed=c[JobState.FAILED],
            cancelled=c[JobState.CANCELLED], **self.counters,
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """The whole table as one JSON-ready value."""
        return {
            "format": SNAPSHOT_FORMAT,
            "next_seq": self.next_seq,
            "counters": dict(self.counters),
            "jobs": [job_to_dict(job) for job in self.jobs.values()],
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> JobTable:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {data.get('format')!r}")
        table = cls()
        for item in data["jobs"]:
            job = job_from_dict(item)
            table.jobs[job.id] = job
            table.counts[job.state] += 1
            if job.spec.key is not None:
                table.keys[job.spec.key] = job.id
            if job.state.is_terminal:
                table.finished_order[job.id] = job.finished_at or 0.0
        table.finished_order = dict(sorted(table.finished_order.items(), key=lambda kv: kv[1]))
        table.next_seq = data["next_seq"]
        table.counters.update(data["counters"])
        return table
