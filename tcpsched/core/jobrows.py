"""Changed copies of job records, for `JobTable.apply`, without `attrs.evolve`.

Theory of operation: a job record stays a frozen value, replaced on every change, and is never
edited in place, not even the leader's own: `JobTable.image()` hands the compaction thread the
current records by reference (a snapshot renders them while the table goes on changing), and
journal effects, replies and waiters hold records too, so a record edited in place would leak a
later state into a snapshot of an earlier sequence number (and replay would then refuse the
journal after it as an illegal transition). What made replacing a record expensive was
`attrs.evolve`: it reads every field through `attrs.fields`, builds a keyword map and runs
`__init__` with every validator again, about 4 times the cost of `copy_job` below, which fills
a new instance slot by slot. The fields a change sets are then written through the slots' own
setters (`SET`), on the copy only, before anyone else sees it. Times are checked as the record's
validator would (`finite_time`), so a non-finite time still cannot enter a record.
"""

from __future__ import annotations

from typing import Any

from tcpsched.core.jobs import JobRecord, is_finite

_new = object.__new__
SET: dict[str, Any] = {name: JobRecord.__dict__[name].__set__
                       for name in JobRecord.__slots__  # type: ignore[attr-defined]
                       if name != "__weakref__"}
_id = SET["id"]
_seq = SET["seq"]
_spec = SET["spec"]
_state = SET["state"]
_attempts = SET["attempts"]
_worker = SET["worker"]
_submitted_at = SET["submitted_at"]
_started_at = SET["started_at"]
_finished_at = SET["finished_at"]
_exit_code = SET["exit_code"]
_result = SET["result"]
_stdout = SET["stdout"]
_stderr = SET["stderr"]
_error = SET["error"]
_not_before = SET["not_before"]
_lost_workers = SET["lost_workers"]
_failures = SET["failures"]


def copy_job(job: JobRecord) -> JobRecord:
    """A new record equal to `job` (not yet shared: the caller may set fields on it)."""
    new = _new(JobRecord)
    _id(new, job.id)
    _seq(new, job.seq)
    _spec(new, job.spec)
    _state(new, job.state)
    _attempts(new, job.attempts)
    _worker(new, job.worker)
    _submitted_at(new, job.submitted_at)
    _started_at(new, job.started_at)
    _finished_at(new, job.finished_at)
    _exit_code(new, job.exit_code)
    _result(new, job.result)
    _stdout(new, job.stdout)
    _stderr(new, job.stderr)
    _error(new, job.error)
    _not_before(new, job.not_before)
    _lost_workers(new, job.lost_workers)
    _failures(new, job.failures)
    return new


def check_time(name: str, value: float | None) -> Any:
    """`value` if it is a finite time (or None), else ValueError as `finite_time` says it."""
    if value is not None and not is_finite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return value


# `copy_job` names every field by hand; a field added to JobRecord must be added there too.
assert tuple(SET) == ("id", "seq", "spec", "state", "attempts", "worker", "submitted_at",
                      "started_at", "finished_at", "exit_code", "result", "stdout", "stderr",
                      "error", "not_before", "lost_workers", "failures"), tuple(SET)
