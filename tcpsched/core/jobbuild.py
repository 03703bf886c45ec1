"""Building jobs read back from disk without their constructors: the hot path of a restart.

Theory of operation: every job we rebuild was validated when it was first made (a JobSpec
checks itself on construction, before it enters the core), and what we read back was written
by us and passed its checksum, so running attrs' `__init__` and every validator again for a
million jobs is wasted. A frozen attrs class refuses plain attribute assignment, so the jobs
are filled as instances of a plain twin class with the very same slots (`_SpecSlots`,
`_JobSlots`), where an assignment is one specialised bytecode, and then become what they are
by `__class__` assignment (allowed between classes of the same layout; the import-time check
below fails loudly if a field is added to one and not the other). A row at a time, that is
about twice as fast as filling the whole chunk a field at a time through the slots' setters
(200,000 plain rows: 0.26-0.29 s against 0.57-0.60 s of CPU, collector off).

What a snapshot row holds is still checked, in bulk: `check_columns` looks at each positional
field of a whole chunk with a few C-level passes (types, ranges, the distinct states, kinds and
functions), so a corrupt row is refused with a clear error naming a job, at a small fraction
of what per-row validation costs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tcpsched.core.jobs import (
    JOB_ID_BYTES_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    JobRecord,
    JobSpec,
    JobState,
    function_name_ok,
    is_finite,
)

_CALL = "call"
_SHELL = "shell"
KINDS = {_CALL: _CALL, _SHELL: _SHELL}  # a kind read back -> the one string of that kind
STATES = {s.value: s for s in JobState}
_intern = sys.intern
# Shared by every rebuilt job without keyword arguments: nothing ever writes to a spec's
# kwargs (a JobSpec is a value), and at a million queued jobs one empty map each is 64 MB.
NO_KWARGS: dict[str, Any] = {}
NO_ENV: dict[str, str] = {}  # the same, for a spec's env


class _SpecSlots:
    """A JobSpec under construction (same slots, plain assignment)."""

    __slots__ = JobSpec.__slots__  # type: ignore[attr-defined]


class _JobSlots:
    """A JobRecord under construction (same slots, plain assignment)."""

    __slots__ = JobRecord.__slots__  # type: ignore[attr-defined]


def build_job(job_id: str, seq: int, state: str, submitted_at: float, kind: str,  # noqa: PLR0917
              target: str | None, args: Any, priority: int, key: str | None,
              more: dict[str, Any] | None, decode: Any) -> JobRecord:
    """A job from its fields (`more`: the non-default others, or None), unvalidated."""
    s: Any = _SpecSlots()
    j: Any = _JobSlots()
    if more is None:
        s.kwargs = NO_KWARGS
        s.retries = 0
        s.timeout = None
        s.delay = 0.0
        s.tags = ()
        s.after = ()
        s.env = NO_ENV
        s.cwd = None
        s.group = None
        j.attempts = 0
        j.worker = None
        j.started_at = None
        j.finished_at = None
        j.exit_code = None
        j.result = None
        j.stdout = ""
        j.stderr = ""
        j.error = None
        j.not_before = 0.0
        j.lost_workers = 0
        j.failures = 0
    else:
        get = more.get
        s.kwargs = decode(get("kwargs", {}))
        s.retries = get("retries", 0)
        s.timeout = get("timeout")
        s.delay = get("delay", 0.0)
        s.tags = tuple(get("tags", ()))
        s.after = tuple(get("after", ()))
        s.env = get("env") or NO_ENV  # strings only: stored as they are
        s.cwd = get("cwd")
        s.group = get("group")
        j.attempts = get("attempts", 0)
        j.worker = get("worker")
        j.started_at = get("started_at")
        j.finished_at = get("finished_at")
        j.exit_code = get("exit_code")
        j.result = decode(get("result"))
        j.stdout = get("stdout", "")
        j.stderr = get("stderr", "")
        j.error = get("error")
        j.not_before = get("not_before", 0.0)
        j.lost_workers = get("lost_workers", 0)
        j.failures = get("failures", 0)
    if kind == "shell":
        s.command = target
        s.function = None
    else:
        s.command = None
        # Function names are few and repeat over many jobs: one string object for each.
        s.function = target if type(target) is not str else _intern(target)
    s.kind = KINDS.get(kind, kind)
    s.args = tuple(args) if type(args) is not dict else tuple(decode(args))
    s.priority = priority
    s.key = key
    s.__class__ = JobSpec
    j.id = job_id
    j.seq = seq
    j.spec = s
    j.state = STATES[state]
    j.submitted_at = submitted_at
    j.__class__ = JobRecord
    return j  # type: ignore[no-any-return]


def plain_jobs(rows: list[list[Any]]) -> list[JobRecord]:
    """The jobs of plain snapshot rows (nine fields, arguments a list, nothing else set)."""
    commands: dict[str, str] = {}  # one string per distinct command of the chunk
    return [_plain_job(*row, commands) for row in rows]  # type: ignore[call-arg]


def _plain_job(job_id: str, seq: int, state: str, submitted_at: float,  # noqa: PLR0917
               kind: str, target: str, args: list[Any], priority: int, key: str | None,
               commands: dict[str, str], *, _states: Any = STATES.__getitem__,
               _kinds: Any = KINDS.get, _spec: Any = JobSpec, _job: Any = JobRecord,
               _no_kwargs: Any = NO_KWARGS, _no_env: Any = NO_ENV) -> JobRecord:
    """`build_job` of a plain row, with the defaults inline (a million calls at a restart)."""
    s: Any = _SpecSlots()
    if kind == "call":
        s.kind = _CALL
        s.command = None
        s.function = _intern(target)
    elif kind == "shell":
        s.kind = _SHELL
        s.command = commands.setdefault(target, target)
        s.function = None
    else:
        s.kind = _kinds(kind, kind)
        s.command = None
        s.function = target
    s.args = tuple(args)
    s.kwargs = _no_kwargs
    s.priority = priority
    s.retries = 0
    s.timeout = None
    s.delay = 0.0
    s.tags = ()
    s.key = key
    s.after = ()
    s.env = _no_env
    s.cwd = None
    s.group = None
    s.__class__ = _spec
    j: Any = _JobSlots()
    j.id = job_id
    j.seq = seq
    j.spec = s
    j.state = _states(state)
    j.attempts = 0
    j.worker = None
    j.submitted_at = submitted_at
    j.started_at = None
    j.finished_at = None
    j.exit_code = None
    j.result = None
    j.stdout = ""
    j.stderr = ""
    j.error = None
    j.not_before = 0.0
    j.lost_workers = 0
    j.failures = 0
    j.__class__ = _job
    return j  # type: ignore[no-any-return]


def plain_job_of_row(row: Sequence[Any]) -> JobRecord:
    """The job of one stored row (core/rowblocks.py, core/jobmap.py): the very record
    `plain_jobs` builds of the plain snapshot row it was read from."""
    return _plain_job(*row, {})  # type: ignore[call-arg]


def check_columns(ids: Sequence[Any], seqs: Sequence[Any], states: Sequence[Any],  # noqa: PLR0917
                  submitted: Sequence[Any], kinds: Sequence[Any], targets: Sequence[Any],
                  priorities: Sequence[Any], keys: Sequence[Any]) -> None:
    """ValueError naming a job if any row of a chunk holds what no job can: each check is a
    pass in C over one column, or a look at its few distinct values."""

    def refuse(column: Sequence[Any], bad: Any, what: str) -> None:
        index = next(i for i, value in enumerate(column) if bad(value))
        raise ValueError(f"snapshot row of job {ids[index]!r:.80}: {what}, not "
                         f"{column[index]!r:.80}")

    if set(map(type, ids)) != {str} or not set(map(len, ids)) <= _ID_LENGTHS:
        refuse(ids, lambda v: not _id_ok(v), "an id must be 1 to "
               f"{JOB_ID_BYTES_MAX} characters of text")
    if set(map(type, seqs)) != {int} or min(seqs) < 0:
        refuse(seqs, lambda v: type(v) is not int or v < 0, "seq must be an integer >= 0")
    if not set(states) <= STATES.keys():
        refuse(states, lambda v: v not in STATES, "unknown state")
    if not set(map(type, submitted)) <= {float, int} or not all(map(is_finite, submitted)):
        refuse(submitted, lambda v: type(v) not in (float, int) or not is_finite(v),
               "submitted_at must be a finite number")
    if set(map(type, priorities)) != {int} or not (
            min(priorities) >= PRIORITY_MIN and max(priorities) <= PRIORITY_MAX):
        refuse(priorities, lambda v: type(v) is not int or not PRIORITY_MIN <= v <= PRIORITY_MAX,
               f"priority must be an integer within [{PRIORITY_MIN}, {PRIORITY_MAX}]")
    if not set(map(type, keys)) <= {str, type(None)}:
        refuse(keys, lambda v: v is not None and type(v) is not str, "a key must be text")
    kind_set = set(kinds)
    only = next(iter(kind_set)) if len(kind_set) == 1 else None
    pairs = ((only, target) for target in set(targets)) if only is not None \
        else set(zip(kinds, targets, strict=True))
    for kind, target in pairs:  # distinct: few, most often
        _check_target(ids, kinds, targets, kind, target)


def _id_ok(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= JOB_ID_BYTES_MAX


_ID_LENGTHS = frozenset(range(1, JOB_ID_BYTES_MAX + 1))


def _check_target(ids: Sequence[Any], kinds: Sequence[Any], targets: Sequence[Any],
                  kind: Any, target: Any) -> None:
    if kind == "call":
        ok = type(target) is str and function_name_ok(target)
    elif kind == "shell":
        ok = type(target) is str and bool(target.strip())
    else:
        ok = False
    if not ok:
        index = next(i for i, pair in enumerate(zip(kinds, targets, strict=True))
                     if pair == (kind, target))
        raise ValueError(f"snapshot row of job {ids[index]!r:.80}: a {kind!r:.20} job with "
                         f"target {target!r:.80} is not a call of module:function or a "
                         "non-empty shell command")


def _check_layout() -> None:
    """The twins must have their job class's slots, or `__class__` assignment fails."""
    for twin, cls in ((_SpecSlots, JobSpec), (_JobSlots, JobRecord)):
        obj: Any = twin()
        obj.__class__ = cls


_check_layout()
