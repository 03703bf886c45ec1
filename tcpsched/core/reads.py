"""The leader's read requests from clients: `status`, `wait` and `list`, as bounded work.

Theory of operation: each request is a generator (`Build`) the backlog advances one bounded
step per loop turn (`core/backlog.py`), so a big listing or a wait on many jobs never stalls the
leader. A `wait` whose jobs are not all finished is parked in `Waits` with its deadline; the
scheduler calls `answer` when `_record` finishes a job a waiter names, or when its deadline
passes. Nothing here changes the table.

`ReadRequests` is an object `Scheduler` owns (`reads`), given the job table, the backlog, the
pending waits, the step's clocks and outbox (`core/sides.py`), the listing cap and `reason`
(why a job is pending or ended, from the scheduler's parking and the dependency index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tcpsched.core import messages as m
from tcpsched.core.queries import (
    Build,
    cursor_problem,
    list_records,
    not_found_message,
    resolve_all,
    unknown_state,
    wait_records,
)

if TYPE_CHECKING:
    from tcpsched.core.backlog import Backlog
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.sides import Outbox, StepClock
    from tcpsched.core.state import JobTable
    from tcpsched.core.waiters import Waiter, Waits


class ReadRequests:
    """`status`, `wait` and `list` (see the module docstring for what it is given)."""

    def __init__(self, *, table: JobTable, backlog: Backlog, waits: Waits, clock: StepClock,
                 out: Outbox, list_limit_max: int, reason: Callable[[JobRecord], str | None]
                 ) -> None:
        self.table = table
        self.backlog = backlog
        self.waits = waits
        self._clock = clock
        self._reply = out.reply
        self._error = out.error
        self.list_limit_max = list_limit_max
        self._reason = reason

    @property
    def _now(self) -> float:
        return self._clock.now

    def _resolve_all(self, conn: int, req_id: int, refs: tuple[str, ...]) -> Build:
        """Build: the jobs `refs` name, or None once a not_found error is sent."""
        found = yield from resolve_all(self.table, refs)
        if isinstance(found, str):
            self._error(conn, req_id, "not_found", not_found_message(self.table, found))
            return None
        return found

    def status_work(self, conn: int, msg: m.Status) -> Build:
        jobs = yield from self._resolve_all(conn, msg.req_id, msg.job_ids)
        if jobs is not None:
            self._reply(conn, msg.req_id, [{**job.to_public(), "reason": self._reason(job)}
                                           for job in jobs])

    def wait_work(self, conn: int, msg: m.Wait) -> Build:
        jobs = yield from self._resolve_all(conn, msg.req_id, msg.job_ids)
        if jobs is None:
            return
        ids = tuple(job.id for job in jobs)
        # The jobs as they are now (resolving may have taken turns), in this one step: a job
        # that finished meanwhile must not be waited for.
        get = self.table.jobs.get
        remaining = {job_id for job_id in ids
                     if (job := get(job_id)) is not None and not job.state.is_terminal}
        if not remaining or (msg.timeout is not None and msg.timeout <= 0):
            records = yield from wait_records(ids, self.table)
            self._reply(conn, msg.req_id, records)
            return
        deadline = self._now + msg.timeout if msg.timeout is not None else None
        self.waits.add(conn, msg.req_id, ids, remaining, deadline)

    def answer(self, waiter: Waiter) -> None:
        self.backlog.run_or_queue(waiter.conn, self._answer_work(waiter))

    def _answer_work(self, waiter: Waiter) -> Build:
        records = yield from wait_records(waiter.job_ids, self.table)
        self._reply(waiter.conn, waiter.req_id, records)

    def on_list(self, conn: int, msg: m.ListJobs) -> None:
        problem = unknown_state(msg.state)
        if problem is not None:
            self._error(conn, msg.req_id, "bad_request", problem)
            return
        problem = cursor_problem(self.table, msg.after)
        if problem is not None:
            self._error(conn, msg.req_id, "bad_request", problem)
            return
        self.backlog.run_or_queue(conn, self._list_work(conn, msg))

    def _list_work(self, conn: int, msg: m.ListJobs) -> Build:
        limit = min(msg.limit, self.list_limit_max)
        records, full = yield from list_records(self.table, msg.state, limit, msg.after)
        if not msg.page:
            self._reply(conn, msg.req_id, records)
            return
        following = records[-1]["id"] if full and records else None
        self._reply(conn, msg.req_id, {"jobs": records, "next": following})
