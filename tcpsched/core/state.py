"""The job table as a pure state machine: every change is a record, and `apply` is the only
way in.

Theory of operation: the leader never edits a job directly. It describes the change as a
journal record (a dict with an "op"), applies it here, and the runtime writes the same record
to the journal. Recovery replays those records through this same `apply`, so the state after a
restart cannot drift from the state before it. `image()` takes an immutable view of the whole
table (jobs are frozen values, so this is a cheap list copy) that can be written out while the
table goes on changing; `snapshot()` renders it, and `from_snapshot()` rebuilds the table.

Ops: submit, start, finish, requeue, cancel, forget. `apply` checks each against the legal
transitions of `core/jobs.py` and raises `ValueError` on anything else: the caller built a
wrong record, which is a bug (or, during recovery, a corrupt journal).

JSON: records and snapshots hold job arguments and results, which may contain bytes (msgpack
carries them; JSON cannot). `encode_record` / `decode_record` turn a record into a JSON-ready
value and back exactly; only the fields that hold user values are touched. A user value that
needs no encoding (no bytes, and no map anywhere with the key "$t") is stored as it is, so the
common case costs one walk and no copy; any other value is stored as {"$t": tagged}, where
bytes become {"$b": base64}, maps become {"$d": {...}} and lists stay lists. Since a plain value
never holds a "$t" key, a map {"$t": ...} at the top of a stored value is always our tag.

Snapshot rows: a job is stored as a list, [id, seq, state, submitted_at, kind, command or
function, args, priority, key] plus, only when some other field differs from its default, a
map of those fields. A million queued jobs must load in a few seconds, and parsing short lists
is about three times faster than parsing maps with every field named.
"""

from __future__ import annotations

import base64
import collections
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from tcpsched.core.jobs import JobRecord, JobSpec, JobState, is_legal

SNAPSHOT_FORMAT = 2
TAG = "$t"
_BYTES_TAG = "$b"
_DICT_TAG = "$d"

_SPEC_FIELDS = tuple(f.name for f in attrs.fields(JobSpec))
_RECORD_FIELDS = tuple(f.name for f in attrs.fields(JobRecord) if f.name not in ("spec", "state"))
_SPEC_DEFAULTS = {f.name: f.default for f in attrs.fields(JobSpec) if f.name != "kwargs"}
_SPEC_DEFAULTS["kwargs"] = {}
# The defaults as a JSON round trip shows them (tuples come back as lists).
_SPEC_DEFAULTS_JSON = {
    name: list(value) if type(value) is tuple else value for name, value in _SPEC_DEFAULTS.items()
}
_RECORD_DEFAULTS = {f.name: f.default for f in attrs.fields(JobRecord) if f.name in _RECORD_FIELDS}
_USER_VALUE_FIELDS = ("args", "kwargs", "result")
# Fields a snapshot row holds by position; all others go in the trailing map when not default.
_ROW_FIELDS = frozenset({"id", "seq", "state", "submitted_at", "kind", "command", "function",
                         "args", "priority", "key"})
_STATES = {s.value: s for s in JobState}


# -- user values: exact JSON round trip -------------------------------------------------------


def _is_plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    if kind is list or kind is tuple:
        return all(_is_plain(item) for item in value)
    if kind is dict:
        return TAG not in value and all(
            type(key) is str and _is_plain(item) for key, item in value.items()
        )
    return False


def _tag(value: Any) -> Any:
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if kind is list or kind is tuple:
        return [_tag(item) for item in value]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"map keys must be strings, not {type(key).__name__}")
            out[key] = _tag(item)
        return {_DICT_TAG: out}
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value
    raise TypeError(f"cannot store a value of type {kind.__name__}")


def _untag(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_untag(item) for item in value]
    if kind is dict:
        if len(value) == 1:
            if _BYTES_TAG in value:
                return base64.b64decode(value[_BYTES_TAG], validate=True)
            if _DICT_TAG in value:
                return {key: _untag(item) for key, item in value[_DICT_TAG].items()}
        raise ValueError(f"malformed tagged value {value!r:.80}")
    return value


def encode_value(value: Any) -> Any:
    """A JSON-ready form of a user value; `decode_value` gives back an equal value."""
    if _is_plain(value):
        return value
    return {TAG: _tag(value)}


def decode_value(value: Any) -> Any:
    if type(value) is dict and len(value) == 1 and TAG in value:
        return _untag(value[TAG])
    return value


def _map_user_values(job: dict[str, Any], convert: Any) -> dict[str, Any]:
    out = None
    for name in _USER_VALUE_FIELDS:
        if name in job:
            old = job[name]
            new = convert(old)
            if new is not old:
                if out is None:
                    out = dict(job)
                out[name] = new
    return job if out is None else out


def encode_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every user value in JSON-ready form (the same object when none needs it)."""
    op = record["op"]
    if op == "submit":
        job = record["job"]
        encoded = _map_user_values(job, encode_value)
        return record if encoded is job else {**record, "job": encoded}
    if op == "finish" and "result" in record:
        result = record["result"]
        encoded = encode_value(result)
        return record if encoded is result else {**record, "result": encoded}
    return record


def decode_record(record: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `encode_record`, for a record parsed from JSON."""
    op = record.get("op")
    if op == "submit":
        job = record["job"]
        decoded = _map_user_values(job, decode_value)
        if decoded is not job:
            record["job"] = decoded
    elif op == "finish" and "result" in record:
        record["result"] = decode_value(record["result"])
    return record


# -- jobs as dicts (journal records) and rows (snapshots) --------------------------------------


def _non_default(name: str, value: Any, defaults: dict[str, Any]) -> bool:
    default = defaults[name]
    # `0 == False` and `0 == 0.0`: compare types too, so a default-looking value of another
    # type is kept and comes back with its own type.
    return not (value == default and type(value) is type(default))


def job_to_dict(job: JobRecord) -> dict[str, Any]:
    """A job as one flat map of the fields that differ from their defaults (raw user values)."""
    out: dict[str, Any] = {"id": job.id, "seq": job.seq, "state": job.state.value}
    for name in _RECORD_FIELDS:
        value = getattr(job, name)
        if name not in out and _non_default(name, value, _RECORD_DEFAULTS):
            out[name] = value
    spec = job.spec
    for name in _SPEC_FIELDS:
        value = getattr(spec, name)
        if type(value) is tuple:
            value = list(value)
        if name == "kind" or _non_default(name, value, _SPEC_DEFAULTS_JSON):
            out[name] = value
    return out


def job_from_dict(data: dict[str, Any]) -> JobRecord:
    """Inverse of `job_to_dict` (raw user values; see `_build_job` on validation)."""
    kind = data["kind"]
    return _build_job(
        data["id"], data["seq"], data["state"], data.get("submitted_at", 0.0), kind,
        data.get("command") if kind == "shell" else data.get("function"),
        data.get("args", ()), data.get("priority", 0), data.get("key"), data, _same,
    )  # fmt: skip


def _same(value: Any) -> Any:
    return value


def job_to_row(job: JobRecord) -> list[Any]:
    """A job as a snapshot row (user values encoded for JSON)."""
    spec = job.spec
    row: list[Any] = [
        job.id, job.seq, job.state.value, job.submitted_at, spec.kind,
        spec.command if spec.kind == "shell" else spec.function,
        encode_value(list(spec.args)), spec.priority, spec.key,
    ]  # fmt: skip
    more: dict[str, Any] = {}
    for name in _RECORD_FIELDS:
        if name not in _ROW_FIELDS:
            value = getattr(job, name)
            if _non_default(name, value, _RECORD_DEFAULTS):
                more[name] = encode_value(value) if name == "result" else value
    for name in _SPEC_FIELDS:
        if name not in _ROW_FIELDS:
            value = getattr(spec, name)
            if type(value) is tuple:
                value = list(value)
            if _non_default(name, value, _SPEC_DEFAULTS_JSON):
                more[name] = encode_value(value) if name == "kwargs" else value
    if more:
        row.append(more)
    return row


_new = object.__new__


# Shared by every rebuilt job without keyword arguments: nothing ever writes to a spec's
# kwargs (a JobSpec is a value), and at a million queued jobs one empty map each is 64 MB.
_NO_KWARGS: dict[str, Any] = {}


def _slot_setter(cls: type, name: str) -> Any:
    """The slot's own setter: fills a frozen instance under construction, and skips the
    attribute lookup that `object.__setattr__` makes on every call (a quarter of the cost)."""
    return cls.__dict__[name].__set__


_spec_kind = _slot_setter(JobSpec, "kind")
_spec_command = _slot_setter(JobSpec, "command")
_spec_function = _slot_setter(JobSpec, "function")
_spec_args = _slot_setter(JobSpec, "args")
_spec_kwargs = _slot_setter(JobSpec, "kwargs")
_spec_priority = _slot_setter(JobSpec, "priority")
_spec_retries = _slot_setter(JobSpec, "retries")
_spec_timeout = _slot_setter(JobSpec, "timeout")
_spec_delay = _slot_setter(JobSpec, "delay")
_spec_tags = _slot_setter(JobSpec, "tags")
_spec_key = _slot_setter(JobSpec, "key")
_spec_after = _slot_setter(JobSpec, "after")
_job_id = _slot_setter(JobRecord, "id")
_job_seq = _slot_setter(JobRecord, "seq")
_job_spec = _slot_setter(JobRecord, "spec")
_job_state = _slot_setter(JobRecord, "state")
_job_attempts = _slot_setter(JobRecord, "attempts")
_job_worker = _slot_setter(JobRecord, "worker")
_job_submitted_at = _slot_setter(JobRecord, "submitted_at")
_job_started_at = _slot_setter(JobRecord, "started_at")
_job_finished_at = _slot_setter(JobRecord, "finished_at")
_job_exit_code = _slot_setter(JobRecord, "exit_code")
_job_result = _slot_setter(JobRecord, "result")
_job_stdout = _slot_setter(JobRecord, "stdout")
_job_stderr = _slot_setter(JobRecord, "stderr")
_job_error = _slot_setter(JobRecord, "error")
_job_not_before = _slot_setter(JobRecord, "not_before")
_job_lost_workers = _slot_setter(JobRecord, "lost_workers")
_job_failures = _slot_setter(JobRecord, "failures")


def job_from_row(row: list[Any]) -> JobRecord:
    """Inverse of `job_to_row`."""
    if len(row) == 9:
        return _build_job(*row, None, decode_value)  # type: ignore[call-arg]
    return _build_job(*row, decode_value)  # type: ignore[call-arg]


def _build_job(job_id: str, seq: int, state: str, submitted_at: float, kind: str,  # noqa: PLR0917
               target: str | None, args: Any, priority: int, key: str | None,
               more: dict[str, Any] | None, decode: Any) -> JobRecord:
    """A job from its fields, without running the validators again.

    Every job we rebuild was validated when it was first made (a JobSpec checks itself on
    construction, before it enters the core); what we read back was written by us and passed
    its checksum. At a million jobs a restart spends most of its time here, hence the
    unrolled field assignments and the separate path for jobs with nothing but defaults.
    """
    spec = _new(JobSpec)
    job = _new(JobRecord)
    if more is None:
        _spec_retries(spec, 0)
        _spec_timeout(spec, None)
        _spec_delay(spec, 0.0)
        _spec_tags(spec, ())
        _spec_after(spec, ())
        _spec_kwargs(spec, _NO_KWARGS)
        _job_attempts(job, 0)
        _job_worker(job, None)
        _job_started_at(job, None)
        _job_finished_at(job, None)
        _job_exit_code(job, None)
        _job_result(job, None)
        _job_stdout(job, "")
        _job_stderr(job, "")
        _job_error(job, None)
        _job_not_before(job, 0.0)
        _job_lost_workers(job, 0)
        _job_failures(job, 0)
    else:
        get = more.get
        _spec_retries(spec, get("retries", 0))
        _spec_timeout(spec, get("timeout"))
        _spec_delay(spec, get("delay", 0.0))
        _spec_tags(spec, tuple(get("tags", ())))
        _spec_after(spec, tuple(get("after", ())))
        _spec_kwargs(spec, decode(get("kwargs", {})))
        _job_attempts(job, get("attempts", 0))
        _job_worker(job, get("worker"))
        _job_started_at(job, get("started_at"))
        _job_finished_at(job, get("finished_at"))
        _job_exit_code(job, get("exit_code"))
        _job_result(job, decode(get("result")))
        _job_stdout(job, get("stdout", ""))
        _job_stderr(job, get("stderr", ""))
        _job_error(job, get("error"))
        _job_not_before(job, get("not_before", 0.0))
        _job_lost_workers(job, get("lost_workers", 0))
        _job_failures(job, get("failures", 0))
    if kind == "shell":
        _spec_command(spec, target)
        _spec_function(spec, None)
    else:
        _spec_command(spec, None)
        _spec_function(spec, target)
    _spec_kind(spec, kind)
    _spec_args(spec, tuple(args) if type(args) is not dict else tuple(decode(args)))
    _spec_priority(spec, priority)
    _spec_key(spec, key)
    _job_id(job, job_id)
    _job_seq(job, seq)
    _job_spec(job, spec)
    _job_state(job, _STATES[state])
    _job_submitted_at(job, submitted_at)
    return job


_EMPTY: dict[str, Any] = {}
# `job_from_row` names every field by hand; a field added to jobs.py must be added there too.
assert _SPEC_FIELDS == ("kind", "command", "function", "args", "kwargs", "priority", "retries",
                        "timeout", "delay", "tags", "key", "after"), _SPEC_FIELDS
assert _RECORD_FIELDS == ("id", "seq", "attempts", "worker", "submitted_at", "started_at",
                          "finished_at", "exit_code", "result", "stdout", "stderr", "error",
                          "not_before", "lost_workers", "failures"), _RECORD_FIELDS


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

    jobs: list[JobRecord]
    finished: list[str]
    next_seq: int
    counters: dict[str, int]

    def header(self) -> dict[str, Any]:
        return {"format": SNAPSHOT_FORMAT, "next_seq": self.next_seq,
                "counters": self.counters, "jobs_count": len(self.jobs)}

    def rows(self) -> Iterator[list[Any]]:
        return map(job_to_row, self.jobs)


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
                gone = self.jobs.pop(job_id, None)
                if gone is None:
                    continue
                self.counts[gone.state] -= 1
                self.finished_order.pop(job_id, None)
                if gone.spec.key is not None and self.keys.get(gone.spec.key) == job_id:
                    del self.keys[gone.spec.key]
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

    def image(self) -> TableImage:
        """An immutable view of the table now (a list copy: milliseconds at a million jobs)."""
        return TableImage(jobs=list(self.jobs.values()), finished=list(self.finished_order),
                          next_seq=self.next_seq, counters=dict(self.counters))

    def snapshot(self) -> dict[str, Any]:
        """The whole table as one JSON-ready value."""
        image = self.image()
        return {**image.header(), "finished": image.finished, "jobs": list(image.rows())}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> JobTable:
        """Rebuild a table from `snapshot()` output."""
        return cls.from_parts(data, [data["jobs"]])

    @classmethod
    def from_parts(cls, header: dict[str, Any], row_chunks: Iterable[list[list[Any]]]
                   ) -> JobTable:
        """Rebuild a table from a snapshot header and its rows, a chunk at a time.

        Taking rows in chunks lets the caller parse them a chunk at a time: the parsed rows of
        a million jobs would otherwise all be alive at once, and the memory they leave behind
        would stay in the process (fragmented) after they are gone.
        """
        if header.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {header.get('format')!r}")
        table = cls()
        jobs, keys = table.jobs, table.keys
        by_state: collections.Counter[str] = collections.Counter()
        for rows in row_chunks:
            # Whole-chunk passes (C loops for the dicts): this is the hot path of a restart.
            jobs.update(zip([row[0] for row in rows], map(job_from_row, rows), strict=True))
            keys.update({row[8]: row[0] for row in rows if row[8] is not None})
            by_state.update([row[2] for row in rows])
        if len(jobs) != header["jobs_count"] or sum(by_state.values()) != len(jobs):
            raise ValueError(f"snapshot holds {len(jobs)} distinct jobs, its header says "
                             f"{header['jobs_count']}")
        for state, count in by_state.items():
            table.counts[_STATES[state]] = count
        table.finished_order = {job_id: jobs[job_id].finished_at or 0.0
                                for job_id in header["finished"]}
        terminal = sum(n for state, n in table.counts.items() if state.is_terminal)
        if len(table.finished_order) != terminal:
            raise ValueError("snapshot's finished list does not match its terminal jobs")
        table.next_seq = header["next_seq"]
        table.counters.update(header["counters"])
        return table
