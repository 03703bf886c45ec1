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
job without running the validators again, and `jobs_from_rows` checks a whole chunk's
positional fields in bulk and builds its rows (core/jobbuild.py).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import attrs

from tcpsched.core.jobbuild import build_job, check_columns, plain_jobs
from tcpsched.core.jobs import JobRecord, JobSpec, JobState, is_finite

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


# (name, default, type of the default) of the fields `job_to_dict` writes when not default, in
# its order: the same test as `_non_default`, unrolled (it runs for every submit journaled).
_RECORD_CHECKS = tuple((name, _RECORD_DEFAULTS[name], type(_RECORD_DEFAULTS[name]))
                       for name in _RECORD_FIELDS if name not in ("id", "seq"))
_SPEC_CHECKS = tuple((name, _SPEC_DEFAULTS_JSON[name], type(_SPEC_DEFAULTS_JSON[name]))
                     for name in _SPEC_FIELDS if name != "kind")


def job_to_dict(job: JobRecord) -> dict[str, Any]:
    """A job as one flat map of the fields that differ from their defaults (raw user values)."""
    out: dict[str, Any] = {"id": job.id, "seq": job.seq, "state": job.state.value}
    for name, default, kind in _RECORD_CHECKS:
        value = getattr(job, name)
        # `0 == False` and `0 == 0.0`: the type too, as in `_non_default`.
        if value != default or type(value) is not kind:
            out[name] = value
    spec = job.spec
    out["kind"] = spec.kind
    for name, default, kind in _SPEC_CHECKS:
        value = getattr(spec, name)
        if type(value) is tuple:
            value = list(value)
        if value != default or type(value) is not kind:
            out[name] = value
    return out


def job_from_dict(data: dict[str, Any]) -> JobRecord:
    """Inverse of `job_to_dict` (raw user values; see `_build_job` on validation)."""
    kind = data["kind"]
    submitted_at = data.get("submitted_at", 0.0)
    # JSON reads NaN and Infinity; a job's times must be finite (JobRecord checks the times of
    # every later change, but `_build_job` skips the validators).
    if not is_finite(submitted_at):
        raise ValueError(f"job {data['id']!r}: submitted_at {submitted_at!r} is not finite")
    plain = data.keys() <= _ROW_FIELDS
    if not plain:
        for name in _TIME_FIELDS:
            value = data.get(name)
            if value is not None and not is_finite(value):
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


def job_from_row(row: list[Any]) -> JobRecord:
    """Inverse of `job_to_row`."""
    if len(row) == 9:
        return _build_job(*row, None, decode_value)  # type: ignore[call-arg]
    return _build_job(*row, decode_value)  # type: ignore[call-arg]


def jobs_from_rows(rows: list[list[Any]]) -> RowsJobs:
    """`job_from_row` of every row, in order, with the columns a table indexes them by.

    The positional fields of every row are checked in bulk first (`check_columns`), so a
    corrupt row is refused naming its job. A plain row (nine fields, arguments stored as a
    list) is what a queued job with defaults leaves, a million of them at a restart: a chunk
    of them takes `plain_jobs`, the defaults inline (core/jobbuild.py). Any other chunk goes
    row by row.
    """
    n = len(rows)
    if not n:
        return RowsJobs([], [], [], [])
    lengths = set(map(len, rows))
    if not lengths <= {9, 10}:
        raise ValueError(f"a snapshot row holds 9 or 10 fields, not {sorted(lengths)}")
    if lengths == {9}:  # one pass over the rows for all the columns
        columns: Any = zip(*rows, strict=True)
    else:
        columns = (list(map(itemgetter(i), rows)) for i in range(9))
    ids, seqs, states, submitted, kinds, targets, argss, priorities, keys = columns
    check_columns(ids, seqs, states, submitted, kinds, targets, priorities, keys)
    if lengths == {9} and set(map(type, argss)) == {list}:
        return RowsJobs(ids, keys, states, plain_jobs(rows))
    return RowsJobs(ids, keys, states, list(map(job_from_row, rows)))


class RowsJobs(NamedTuple):
    """What `jobs_from_rows` gives: the rows' ids, keys and states, and the jobs."""

    ids: Sequence[str]
    keys: Sequence[str | None]
    states: Sequence[str]
    jobs: list[JobRecord]


_build_job = build_job

# `build_job` and `plain_jobs` (core/jobbuild.py) name every field by hand; a field added to
# jobs.py must be added there too.
assert _SPEC_FIELDS == ("kind", "command", "function", "args", "kwargs", "priority", "retries",
                        "timeout", "delay", "tags", "key", "after", "env", "cwd", "group"
                        ), _SPEC_FIELDS
assert _RECORD_FIELDS == ("id", "seq", "attempts", "worker", "submitted_at", "started_at",
                          "finished_at", "exit_code", "result", "stdout", "stderr", "error",
                          "not_before", "lost_workers", "failures"), _RECORD_FIELDS
