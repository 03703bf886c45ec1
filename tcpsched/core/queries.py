"""Read-only answers from the job table: finding jobs by reference, and multi-record replies.

Theory of operation: clients name a job by its id or by an unambiguous prefix of at least
`JOB_ID_PREFIX_MIN` characters (`resolve`). Replies that carry many records (`list`, `wait`)
share `REPLY_OUTPUT_CHARS` for their jobs' stdout and stderr: each record gets an equal share
(`output_budget`), never below `OUTPUT_CHARS_PER_RECORD_MIN`, so a reply about many chatty jobs
stays far below the frame limit. Nothing here changes the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcpsched.core.jobs import JobState

if TYPE_CHECKING:
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.state import JobTable

JOB_ID_PREFIX_MIN = 4
REPLY_OUTPUT_CHARS = 4 * 1024 * 1024
OUTPUT_CHARS_PER_RECORD_MIN = 1024


def output_budget(records: int) -> int:
    """Characters of stdout (and of stderr) each record of a multi-record reply may carry."""
    return max(OUTPUT_CHARS_PER_RECORD_MIN, REPLY_OUTPUT_CHARS // max(2 * records, 1))


def resolve(table: JobTable, ref: str) -> JobRecord | None:
    """A job by id, or by an unambiguous id prefix of at least 4 characters."""
    job = table.get(ref)
    if job is not None or len(ref) < JOB_ID_PREFIX_MIN:
        return job
    found = [j for j_id, j in table.jobs.items() if j_id.startswith(ref)]
    return found[0] if len(found) == 1 else None


AMBIGUOUS_SHOWN = 5  # ids an "ambiguous prefix" error lists


def not_found_message(table: JobTable, ref: str) -> str:
    """Why `ref` names no job, for the client: an ambiguous prefix lists a few of the jobs
    it matches. Only called once `resolve` has failed, so its scan costs nothing on the
    paths that find their job."""
    if len(ref) < JOB_ID_PREFIX_MIN:
        return f"no job {ref!r} (an id prefix needs at least {JOB_ID_PREFIX_MIN} characters)"
    matches: list[str] = []
    for job_id in table.jobs:
        if job_id.startswith(ref):
            matches.append(job_id)
            if len(matches) > AMBIGUOUS_SHOWN:
                break
    if len(matches) < 2:
        return f"no job {ref!r}"
    shown = ", ".join(sorted(matches[:AMBIGUOUS_SHOWN]))
    if len(matches) > AMBIGUOUS_SHOWN:
        return (f"job prefix {ref!r} is ambiguous: it matches more than {AMBIGUOUS_SHOWN} jobs, "
                f"among them {shown}; give more characters")
    return (f"job prefix {ref!r} is ambiguous: it matches {len(matches)} jobs ({shown}); "
            "give more characters")


def unknown_state(state: str | None) -> str | None:
    """Why `state` cannot filter a listing, or None if it can (None lists every state)."""
    if state is None or state in JobState.__members__.values():
        return None
    states = ", ".join(s.value for s in JobState)
    return f"unknown state {state!r}; choose one of {states}"


def list_records(table: JobTable, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` jobs, newest first, only those in `state` unless it is None."""
    budget = output_budget(limit)
    out: list[dict[str, Any]] = []
    if limit > 0:
        for job in table.newest_first():
            if state is None or job.state.value == state:
                out.append(job.to_public(budget))
                if len(out) >= limit:
                    break
    return out


def wait_records(job_ids: tuple[str, ...], table: JobTable) -> list[dict[str, Any]]:
    """The reply to a wait: each job as it is now, or as forgotten if retention dropped it."""
    budget = output_budget(len(job_ids))
    records = []
    for job_id in job_ids:
        job = table.get(job_id)
        records.append(job.to_public(budget) if job is not None else {"id": job_id,
                                                                   "state": "forgotten"})
    return records
