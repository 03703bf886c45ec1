"""Read-only answers from the job table: finding jobs by reference, and multi-record replies.

Theory of operation: clients name a job by its id, by the idempotency key it was submitted
with, or by an unambiguous id prefix of at least `JOB_ID_PREFIX_MIN` characters (`resolve`,
in that order: an exact name beats a prefix). A listing is paged by a cursor: the id of the
last job of the page before (`list_records(after=...)`).

Replies that carry many records (`list`, `wait`) share `REPLY_OUTPUT_CHARS` for their jobs'
stdout and stderr: each record gets an equal share (`output_budget`), never below
`OUTPUT_CHARS_PER_RECORD_MIN`, so a reply about many chatty jobs stays far below the frame
limit; a listing trims results by the same share (`wait` keeps them whole: a client gathers
results, and asks for fewer jobs at a time when a reply is too big).
Prefixes are looked up in the table's index, never by scanning it.

Replies about many jobs are built a bounded amount at a time: the builders here are
generators that yield after every `WORK_PER_TURN` units of work (a record is
`RECORD_WORK` units, a job looked at and skipped one), and the scheduler advances one of them
a step per loop turn (`core/backlog.py`), so heartbeats are read between the steps. A builder
that yields keeps a snapshot of the jobs it still has to look at (references to frozen
records), so the reply shows the table as it was when the request arrived. Nothing here
changes the table.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from tcpsched.core.jobs import JobState
from tcpsched.core.state import PREFIX_INDEX_CHARS

if TYPE_CHECKING:
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.state import JobTable

JOB_ID_PREFIX_MIN = PREFIX_INDEX_CHARS
REPLY_OUTPUT_CHARS = 4 * 1024 * 1024
OUTPUT_CHARS_PER_RECORD_MIN = 1024
WORK_PER_TURN = 20_000  # about 5 ms of building records
RECORD_WORK = 20  # one record built, against one job looked at
RESOLVE_WORK = 5  # one reference resolved

Build = Generator[None, None, Any]  # yields between bounded steps, returns its value


def output_budget(records: int) -> int:
    """Characters of stdout (and of stderr) each record of a multi-record reply may carry."""
    return max(OUTPUT_CHARS_PER_RECORD_MIN, REPLY_OUTPUT_CHARS // max(2 * records, 1))


def resolve(table: JobTable, ref: str) -> JobRecord | None:
    """A job by id, by idempotency key, or by an unambiguous id prefix of at least 4
    characters."""
    job = table.get(ref)
    if job is not None:
        return job
    by_key = table.keys.get(ref)
    if by_key is not None:
        return table.get(by_key)
    if len(ref) < JOB_ID_PREFIX_MIN:
        return None
    found = table.ids_with_prefix(ref)
    return table.jobs[found[0]] if len(found) == 1 else None


def resolve_all(table: JobTable, refs: tuple[str, ...]) -> Build:
    """Build: the jobs `refs` name, in order, or the first ref that names none (a str)."""
    jobs = []
    for i, ref in enumerate(refs, 1):
        job = resolve(table, ref)
        if job is None:
            return ref
        jobs.append(job)
        if i % (WORK_PER_TURN // RESOLVE_WORK) == 0:
            yield
    return jobs


AMBIGUOUS_SHOWN = 5  # ids an "ambiguous prefix" error lists


def not_found_message(table: JobTable, ref: str) -> str:
    """Why `ref` names no job, for the client: an ambiguous prefix lists a few of the jobs
    it matches (from the table's prefix index: a miss never scans the table)."""
    if len(ref) < JOB_ID_PREFIX_MIN:
        return (f"no job {ref!r}: no job has that id or key, and it is too short to be an id "
                f"prefix (a prefix needs at least {JOB_ID_PREFIX_MIN} characters)")
    matches = table.ids_with_prefix(ref)[: AMBIGUOUS_SHOWN + 1]
    if len(matches) < 2:
        return f"no job {ref!r} (no job has that id, key or id prefix)"
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


def cursor_problem(table: JobTable, after: str | None) -> str | None:
    """Why `after` cannot continue a listing, or None (None starts from the newest job)."""
    if after is None or after in table.jobs:
        return None
    return (f"page cursor {after!r} names no job (finished jobs are forgotten after a "
            "while): list again from the newest")


def list_records(table: JobTable, state: str | None, limit: int, after: str | None = None
                 ) -> Build:
    """Build: up to `limit` jobs, newest first, only those in `state` unless it is None,
    starting after the job `after` (which must exist: `cursor_problem`). Returns the records
    and whether jobs are left unlooked at (so another page may follow)."""
    out: list[dict[str, Any]] = []
    if limit <= 0:
        return out, False
    take = _Taker(out, state, limit, output_budget(limit), table.result_chars)
    live = table.newest_first()
    if after is not None:
        # A dict cannot be entered in the middle: skip to the cursor a bounded step at a time.
        live = iter(list(live))
        for seen, job in enumerate(live, 1):
            if job.id == after:
                break
            if seen % WORK_PER_TURN == 0:
                yield
    if take.some(live):
        return out, take.full
    # The jobs still to look at, as they are now, before another step can change the table.
    rest = iter(list(live))
    while True:
        yield
        if take.some(rest):
            return out, take.full


class _Taker:
    """Takes matching jobs into a listing, `WORK_PER_TURN` units of work at a time."""

    def __init__(self, out: list[dict[str, Any]], state: str | None, limit: int, budget: int,
                 sizes: dict[str, int]) -> None:
        self.out, self.state, self.limit = out, state, limit
        self.budget, self.sizes = budget, sizes
        self.full = False  # the listing filled up (jobs may be left to look at)

    def some(self, jobs: Iterator[JobRecord]) -> bool:
        """Take from `jobs` until the listing is full or `jobs` ends (True), or until this
        turn's work is done (False)."""
        out, state, limit, budget, sizes = self.out, self.state, self.limit, self.budget, \
            self.sizes
        work = 0
        for job in jobs:
            work += 1
            if state is None or job.state.value == state:
                out.append(job.to_public(budget, budget, sizes.get(job.id, 0)))
                if len(out) >= limit:
                    self.full = True
                    return True
                work += RECORD_WORK
            if work >= WORK_PER_TURN:
                return False
        return True


def wait_records(job_ids: tuple[str, ...], table: JobTable) -> Build:
    """Build: the reply to a wait, each job as it is now, or as forgotten if retention dropped
    it. Results are whole (see the module docstring)."""
    budget = output_budget(len(job_ids))
    records = []
    for i, job_id in enumerate(job_ids, 1):
        job = table.get(job_id)
        records.append(job.to_public(budget) if job is not None else {"id": job_id,
                                                                   "state": "forgotten"})
        if i % (WORK_PER_TURN // RECORD_WORK) == 0:
            yield
    return records
