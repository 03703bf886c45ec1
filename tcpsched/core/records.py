"""Jobs and records as JSON: exact round trips of user values, journal maps and snapshot rows.

Theory of operation: the journal and snapshots are JSON, but records hold job arguments and
results, which may contain bytes (msgpack carries them; JSON cannot). `encode_record` /
`decode_record` turn a record into a JSON-ready value and back exactly; only the fields that
hold user values are touched. A user value that needs no encoding (no bytes, and no map
anywhere with the key "$t") is stored as it is, so the common case costs one walk and no copy;
any other value is stored as {"$t": tagged}, where bytes become {"$b": base64}, maps become
{"$d": {...}} and lists stay lists. Since a plain value never holds a "$t" key, a map
{"$t": ...} at the top of a stored value is always our tag.

Journal records carry a job as one flat map of its non-default fields (`job_to_dict`).
Snapshot rows store a job as a list, [id, seq, state, submitted_at, kind, command or function,
args, priority, key] plus, only when some other field differs from its default, a map of those
fields. A million queued jobs must load in a few seconds, and parsing short lists is about
three times faster than parsing maps with every field named; `job_from_row` then builds each
job through the slots' own setters, without running the validators again, and
`jobs_from_rows` does the same a field at a time over a whole chunk of plain rows.
"""

from __future__ import annotations

import base64
import collections
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any, NamedTuple

import attrs

from tcpsched.core.jobs import JobRecord, JobSpec, JobState

TAG = "$t"
_BYTES_TAG = "$b"
_DICT_TAG = "$d"

_SPEC_FIELDS = tuple(f.name for f in attrs.fields(JobSpec))
_RECORD_FIELDS = tuple(f.name for f in attrs.fields(JobRecord) if f.name not in ("spec", "state"))
_SPEC_DEFAULTS = {f.name: f.default for f in attrs.fields(JobSpec)
                  if f.name not in ("kwargs", "env")}
_SPEC_DEFAULTS["kwargs"] = {}
_SPEC_DEFAULTS["env"] = {}
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
_TIME_FIELDS = ("started_at", "finished_at", "not_before")  # besides submitted_at


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


_JOB_HOLDERS = frozenset({"submit", "fire", "schedule_add"})  # records with a "job" map


def encode_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every user value in JSON-ready form (the same object when none needs it)."""
    op = record["op"]
    if op in _JOB_HOLDERS and record.get("job") is not None:  # a submit, a fire, a schedule
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
    if op in _JOB_HOLDERS and type(record.get("job")) is dict:
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
    submitted_at = data.get("submitted_at", 0.0)
    # JSON reads NaN and Infinity; a job's times must be finite (JobRecord checks the times of
    # every later change, but `_build_job` skips the validators).
    if not math.isfinite(submitted_at):
        raise ValueError(f"job {data['id']!r}: submitted_at {submitted_at!r} is not finite")
    plain = data.keys() <= _ROW_FIELDS
    if not plain:
        for name in _TIME_FIELDS:
            value = data.get(name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"job {data['id']!r}: {name} {value!r} is not finite")
    return _build_job(
        data["id"], data["seq"], data["state"], submitted_at, kind,
        data.get("command") if kind == "shell" else data.get("function"),
        data.get("args", ()), data.get("priority", 0), data.get("key"),
        # A job with nothing beyond the row fields (a plain submit, the common record in a
        # journal) takes `_build_job`'s all-defaults path instead of eighteen lookups.
        None if plain else data, _same,
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
_CALL = "call"
_SHELL = "shell"
_KINDS = {_CALL: _CALL, _SHELL: _SHELL}  # a kind read back -> the one string of that kind
_intern = sys.intern


# Shared by every rebuilt job without keyword arguments: nothing ever writes to a spec's
# kwargs (a JobSpec is a value), and at a million queued jobs one empty map each is 64 MB.
_NO_KWARGS: dict[str, Any] = {}
_NO_ENV: dict[str, str] = {}  # the same, for a spec's env


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
_spec_env = _slot_setter(JobSpec, "env")
_spec_cwd = _slot_setter(JobSpec, "cwd")
_spec_group = _slot_setter(JobSpec, "group")
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


def jobs_from_rows(rows: list[list[Any]]) -> RowsJobs:
    """`job_from_row` of every row, in order, with the columns a table indexes them by.

    A plain row (nine fields, arguments stored as a list) is what a queued job with defaults
    leaves, a million of them at a restart. A chunk of plain rows is built field by field:
    each field is set on the whole chunk in one C loop (`map` over the slot setter), which
    spares the interpreter loop around the 29 setter calls a job takes, and `zip(*rows)`
    hands over the columns in one pass. Any other chunk goes row by row.
    """
    n = len(rows)
    if n and set(map(len, rows)) == {9}:
        columns = zip(*rows, strict=True)
        ids, seqs, states, submitted, kinds, targets, argss, priorities, keys = columns
        if set(map(type, argss)) == {list}:
            jobs = _plain_jobs(n, ids, seqs, states, submitted, kinds, targets, argss,
                               priorities, keys)
            return RowsJobs(ids, keys, states, jobs)
    row_ids = [row[0] for row in rows]  # first, so that a bad row fails as it always did
    built = list(map(job_from_row, rows))
    return RowsJobs(row_ids, [row[8] for row in rows], [row[2] for row in rows], built)


class RowsJobs(NamedTuple):
    """What `jobs_from_rows` gives: the rows' ids, keys and states, and the jobs."""

    ids: Sequence[str]
    keys: Sequence[str | None]
    states: Sequence[str]
    jobs: list[JobRecord]


def _plain_jobs(n: int, ids: Sequence[str], seqs: Sequence[int],  # noqa: PLR0917
                states: Sequence[str], submitted: Sequence[float], kinds: Sequence[str],
                targets: Sequence[str | None], argss: Sequence[list[Any]],
                priorities: Sequence[int], keys: Sequence[str | None]) -> list[JobRecord]:
    """The jobs of `n` plain rows, given as columns (see `jobs_from_rows`)."""
    specs = list(map(_new, repeat(JobSpec, n)))
    jobs = list(map(_new, repeat(JobRecord, n)))
    for setter, value in _PLAIN_SPEC_DEFAULTS:
        _consume(map(setter, specs, repeat(value, n)))
    for setter, value in _PLAIN_JOB_DEFAULTS:
        _consume(map(setter, jobs, repeat(value, n)))
    kind_set = set(kinds)
    # One string object per distinct function (interned, like `_build_job`'s) or command (of
    # the chunk), not one per job: a parser makes a new string for every value it reads (60
    # bytes for "module:function").
    names: dict[str | None, str | None] = {}
    if kind_set == {"call"}:
        _consume(map(_spec_command, specs, repeat(None, n)))
        _consume(map(_spec_function, specs, map(_intern, targets)))  # type: ignore[arg-type]
        kind_values: Iterable[str] = repeat(_CALL, n)
    elif kind_set == {"shell"}:
        _consume(map(_spec_command, specs, map(names.setdefault, targets, targets)))
        _consume(map(_spec_function, specs, repeat(None, n)))
        kind_values = repeat(_SHELL, n)
    else:
        _consume(map(_spec_command, specs,
                     [t if k == "shell" else None for k, t in zip(kinds, targets, strict=True)]))
        _consume(map(_spec_function, specs,
                     [None if k == "shell" else t for k, t in zip(kinds, targets, strict=True)]))
        kind_values = map(_KINDS.get, kinds, kinds)
    _consume(map(_spec_kind, specs, kind_values))
    _consume(map(_spec_args, specs, map(tuple, argss)))
    _consume(map(_spec_priority, specs, priorities))
    _consume(map(_spec_key, specs, keys))
    _consume(map(_job_id, jobs, ids))
    _consume(map(_job_seq, jobs, seqs))
    _consume(map(_job_spec, jobs, specs))
    _consume(map(_job_state, jobs, map(_STATES.__getitem__, states)))
    _consume(map(_job_submitted_at, jobs, submitted))
    return jobs


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
        _spec_env(spec, _NO_ENV)
        _spec_cwd(spec, None)
        _spec_group(spec, None)
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
        _spec_env(spec, get("env") or _NO_ENV)  # strings only: stored as they are
        _spec_cwd(spec, get("cwd"))
        _spec_group(spec, get("group"))
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
        # Function names are few and repeat over many jobs: one string object for each.
        _spec_function(spec, target if type(target) is not str else _intern(target))
    _spec_kind(spec, _KINDS.get(kind, kind))
    _spec_args(spec, tuple(args) if type(args) is not dict else tuple(decode(args)))
    _spec_priority(spec, priority)
    _spec_key(spec, key)
    _job_id(job, job_id)
    _job_seq(job, seq)
    _job_spec(job, spec)
    _job_state(job, _STATES[state])
    _job_submitted_at(job, submitted_at)
    return job


# What `_build_job` sets on a job without a trailing map, for `jobs_from_rows`.
_PLAIN_SPEC_DEFAULTS: tuple[tuple[Any, Any], ...] = (
    (_spec_retries, 0), (_spec_timeout, None), (_spec_delay, 0.0), (_spec_tags, ()),
    (_spec_after, ()), (_spec_kwargs, _NO_KWARGS), (_spec_env, _NO_ENV), (_spec_cwd, None),
    (_spec_group, None),
)
_PLAIN_JOB_DEFAULTS: tuple[tuple[Any, Any], ...] = (
    (_job_attempts, 0), (_job_worker, None), (_job_started_at, None), (_job_finished_at, None),
    (_job_exit_code, None), (_job_result, None), (_job_stdout, ""), (_job_stderr, ""),
    (_job_error, None), (_job_not_before, 0.0), (_job_lost_workers, 0), (_job_failures, 0),
)
# Runs an iterator to its end, keeping nothing.
_consume: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend

# `job_from_row` and `jobs_from_rows` name every field by hand; a field added to jobs.py must
# be added there too.
assert _SPEC_FIELDS == ("kind", "command", "function", "args", "kwargs", "priority", "retries",
                        "timeout", "delay", "tags", "key", "after", "env", "cwd", "group"
                        ), _SPEC_FIELDS
assert _RECORD_FIELDS == ("id", "seq", "attempts", "worker", "submitted_at", "started_at",
                          "finished_at", "exit_code", "result", "stdout", "stderr", "error",
                          "not_before", "lost_workers", "failures"), _RECORD_FIELDS
