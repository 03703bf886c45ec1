"""The common journal record, a plain submit, checked and built without the general path.

Theory of operation: a journal tail after a restart is mostly submits of jobs with default
options (`{"op":"submit","job":{"id":..,"seq":..,"state":"pending","submitted_at":..,
"kind":"call","function":..,"args":[..],"key":..}}`), and the general path (`decode_record`,
then `typed_submit`: a dozen lookups of fields such a job does not have, `job_from_dict`,
`check_spec` with its regular expression) cost about 7 µs of the 15 µs a record took.
`plain_submit` takes only a submit whose job map holds nothing but the row fields
(core/records.py), each of the type and range the general path accepts, and builds the very
job it would build (`build_job` with every other field at its default). Anything else, or
anything doubtful (a key that is not text, a bool priority, an unknown kind), gives None, and
the caller takes the general path, which accepts and refuses exactly as before, with its
own messages: the fast path only ever accepts what the general path accepts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from tcpsched.core.jobbuild import KINDS, build_job
from tcpsched.core.jobs import (
    JOB_ID_BYTES_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    JobState,
    function_name_ok,
    is_finite,
)
from tcpsched.core.record_types import EPOCH_MAX

_CALL_FIELDS = frozenset({"id", "seq", "state", "submitted_at", "kind", "function", "args",
                          "priority", "key"})
_SHELL_FIELDS = frozenset({"id", "seq", "state", "submitted_at", "kind", "command",
                           "priority", "key"})  # a shell job takes no args
_FUNCTIONS_KNOWN_MAX = 1024
_functions_ok: set[str] = set()  # function names already matched (few, repeated)
_isfinite = is_finite
_intern = sys.intern
_PENDING = JobState.PENDING.value


def _same(value: Any) -> Any:
    return value


def plain_submit(record: dict[str, Any], epoch: int, seq: int, *, as_row: bool = False
                 ) -> Any:
    """The job of a plain submit record (as `typed_submit` builds it), or with `as_row` its
    stored row (a tuple, for `JobTable.apply(..., built=row)`), or None when the record is
    not one: then the general path must check it."""
    if len(record) != 2 or record.get("op") != "submit":
        return None
    job = record.get("job")
    if type(job) is not dict or not (0 <= epoch <= EPOCH_MAX and 0 <= seq <= EPOCH_MAX):
        return None
    kind = job.get("kind")
    if kind == "call":
        if not job.keys() <= _CALL_FIELDS:
            return None
        target = job.get("function")
        if type(target) is not str:
            return None
        if target not in _functions_ok:
            if not function_name_ok(target):
                return None
            if len(_functions_ok) < _FUNCTIONS_KNOWN_MAX:
                _functions_ok.add(target)
        args = job.get("args", ())
        if type(args) is not list and args != ():
            return None
    elif kind == "shell":
        if not job.keys() <= _SHELL_FIELDS:
            return None
        target = job.get("command")
        if type(target) is not str or not target.strip():
            return None
        args = ()
    else:
        return None
    job_id = job.get("id")
    job_seq = job.get("seq")
    submitted_at = job.get("submitted_at", 0.0)
    priority = job.get("priority", 0)
    key = job.get("key")
    if not (type(job_id) is str and 0 < len(job_id) <= JOB_ID_BYTES_MAX
            and job.get("state") == "pending"  # required: `job_from_dict` reads it
            and type(job_seq) is int and 0 <= job_seq <= EPOCH_MAX
            and (type(submitted_at) is float or type(submitted_at) is int)
            and submitted_at >= 0 and _isfinite(submitted_at)
            and type(priority) is int and PRIORITY_MIN <= priority <= PRIORITY_MAX
            and (key is None or (type(key) is str and 0 < len(key) <= JOB_ID_BYTES_MAX))):
        return None
    if not as_row:
        return build_job(job_id, job_seq, "pending", submitted_at, kind, target, args,
                         priority, key, None, _same)
    # The stored row `plain_job_of_row` builds that same job from (core/jobmap.py).
    return (job_id, job_seq, _PENDING, submitted_at, KINDS[kind],
            _intern(target) if kind == "call" else target, tuple(args), priority, key)


# -- a run of plain submits at once -----------------------------------------------------------
#
# A restart's journal tail is mostly runs of plain submits (a `map` writes thousands in a row),
# and `plain_submit` costs a few microseconds of Python per record. `plain_submit_rows` makes
# the same decision for a whole run in passes over its columns (C loops: `map`, `set`, `min`),
# and only where a pass finds a record `plain_submit` would not take does it look for the
# first one, row by row. It takes the longest prefix of the run that `plain_submit` takes, with
# the very rows it gives; the caller takes the first record it left to `plain_submit` and the
# general path, which refuse or accept it as they always did.

_dict_get = dict.get


def _first_bad(values: Sequence[Any], ok: Callable[[Any], bool]) -> int:
    """The index of the first value `ok` refuses, or how many values there are (a test of
    the whole column may refuse more than `ok`, never less: ints as times, say)."""
    return next((i for i, value in enumerate(values) if not ok(value)), len(values))


def _is_dict(value: Any) -> bool:
    return type(value) is dict


def _args_ok(args: Any) -> bool:
    return type(args) is list or args == ()


def _time_ok(value: Any) -> bool:
    return (type(value) is float or type(value) is int) and value >= 0 and _isfinite(value)


def _key_ok(key: Any) -> bool:
    return key is None or (type(key) is str and 0 < len(key) <= JOB_ID_BYTES_MAX)


def _column(jobs: Sequence[dict[str, Any]], name: str, default: Any = None) -> list[Any]:
    return list(map(_dict_get, jobs, repeat(name), repeat(default)))


def _target_ok(kind: str) -> Callable[[Any], bool]:
    if kind == "call":
        return lambda target: type(target) is str and (
            target in _functions_ok or function_name_ok(target))
    return lambda target: type(target) is str and bool(target.strip())


def _job_columns(jobs: Sequence[dict[str, Any]]) -> dict[str, Sequence[Any]] | None:
    """The columns of a run of job maps that all hold the same fields (the first one's), one
    pass over the maps in all; None if they do not."""
    names = tuple(jobs[0])
    if len(names) < 2 or set(map(len, jobs)) != {len(names)}:
        return None
    try:  # every map holds each of the first one's fields, and no more
        values = list(map(itemgetter(*names), jobs))
    except KeyError:
        return None
    return dict(zip(names, zip(*values, strict=True), strict=True))


def plain_submit_rows(records: Sequence[Any], epochs: Sequence[int], seqs: Sequence[int]
                      ) -> list[tuple[Any, ...]]:
    """The stored rows `plain_submit(record, epoch, seq, as_row=True)` gives for the longest
    prefix of `records` (parsed journal records; `epochs` and `seqs` their entries' integer
    epochs and seqs) for which it gives one; a run of one kind (call or shell) at a time."""
    n = len(records)
    if n and set(map(type, records)) != {dict}:
        n = _first_bad(records, _is_dict)
    if not n:
        return []
    records = records[:n]
    # Each check: a column, a test of the whole column in C, and the same test of one value
    # (only run to find the first value the column test refused).
    n = _passing([
        (list(map(len, records)), lambda c: c.count(2) == len(c), lambda v: v == 2),
        (_column(records, "op"), lambda c: c.count("submit") == len(c),
         lambda v: v == "submit"),
        (epochs, lambda c: min(c) >= 0 and max(c) <= EPOCH_MAX, lambda v: 0 <= v <= EPOCH_MAX),
        (seqs, lambda c: min(c) >= 0 and max(c) <= EPOCH_MAX, lambda v: 0 <= v <= EPOCH_MAX),
    ], n)
    jobs = _column(records[:n], "job")
    if n and set(map(type, jobs)) != {dict}:
        n = _first_bad(jobs, _is_dict)
    if not n:
        return []
    jobs = jobs[:n]
    columns = _job_columns(jobs)

    def column(name: str, default: Any = None) -> Sequence[Any]:
        if columns is None:
            return _column(jobs, name, default)
        return columns[name] if name in columns else [default] * len(jobs)

    kinds = column("kind")
    kind = kinds[0]
    if type(kind) is not str or kind not in KINDS:
        return []
    fields = _CALL_FIELDS if kind == "call" else _SHELL_FIELDS
    if columns is not None and not columns.keys() <= fields:
        return []  # the first job (like every other) holds a field no plain job has
    targets = column("function" if kind == "call" else "command")
    argss = column("args", ()) if kind == "call" else [()] * n
    ids, job_seqs, keys = column("id"), column("seq"), column("key")
    submitted, priorities = column("submitted_at", 0.0), column("priority", 0)
    target_ok = _target_ok(kind)
    checks = [
        (kinds, lambda c: c.count(kind) == len(c), lambda v: v == kind),
        (targets, lambda c: set(map(type, c)) == {str} and all(map(target_ok, set(c))),
         target_ok),
        # A missing args is the default (), which JSON cannot spell.
        (argss, lambda c: set(map(type, c)) == {list} or all(map(_args_ok, c)), _args_ok),
        (ids, lambda c: set(map(type, c)) == {str} and min(map(len, c)) > 0
         and max(map(len, c)) <= JOB_ID_BYTES_MAX,
         lambda v: type(v) is str and 0 < len(v) <= JOB_ID_BYTES_MAX),
        (column("state"), lambda c: c.count(_PENDING) == len(c), lambda v: v == _PENDING),
        (job_seqs, lambda c: set(map(type, c)) == {int} and min(c) >= 0
         and max(c) <= EPOCH_MAX, lambda v: type(v) is int and 0 <= v <= EPOCH_MAX),
        # Floats only as a whole column: an int time (or one too large for a float) is
        # looked at by itself.
        (submitted, lambda c: set(map(type, c)) == {float} and all(map(_isfinite, c))
         and min(c) >= 0, _time_ok),
        (priorities, lambda c: set(map(type, c)) == {int} and min(c) >= PRIORITY_MIN
         and max(c) <= PRIORITY_MAX,
         lambda v: type(v) is int and PRIORITY_MIN <= v <= PRIORITY_MAX),
        (keys, lambda c: (set(map(type, c)) == {str} and min(map(len, c)) > 0
                          and max(map(len, c)) <= JOB_ID_BYTES_MAX)
         or all(map(_key_ok, c)), _key_ok),
    ]
    if columns is None:  # maps of more than one set of fields: each checked
        checks.append((jobs, lambda c: all(map(fields.issuperset, c)), fields.issuperset))
    n = _passing(checks, n)
    if not n:
        return []
    targets = targets[:n]
    if kind == "call":
        canonical = {target: _intern(target) for target in set(targets)}
        for target in canonical:
            if len(_functions_ok) < _FUNCTIONS_KNOWN_MAX:
                _functions_ok.add(target)
        targets = list(map(canonical.__getitem__, targets))
    return list(zip(ids[:n], job_seqs[:n], repeat(_PENDING, n), submitted[:n],
                    repeat(KINDS[kind], n), targets, map(tuple, argss[:n]), priorities[:n],
                    keys[:n], strict=True))


def _passing(checks: list[tuple[Sequence[Any], Callable[[Sequence[Any]], bool],
                                Callable[[Any], bool]]], n: int) -> int:
    """How many leading values pass every check (each column cut to the prefix that passed
    the checks before it)."""
    for column, whole_ok, ok in checks:
        if not n:
            return 0
        prefix = column if len(column) == n else column[:n]
        if not whole_ok(prefix):
            n = _first_bad(prefix, ok)
    return n
