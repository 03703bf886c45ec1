"""A job's children: the jobs whose `after` names it (the dashboard's dependency view).

Theory of operation: the dependency index (core/deps.py) holds only children still waiting on
an unfinished parent, so it cannot answer for a parent that has ended. The table can: a child
names its parents at submit, and `after` must name jobs that exist then (`resolve_after`), so
every child was inserted into the table after its parent, and the table keeps insertion order
across snapshots and replays. A scan from the newest job back to the parent therefore finds all
of them and stops there: it costs the jobs submitted since the parent, not the whole table, in
bounded steps like a listing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tcpsched.core import messages as m
from tcpsched.core.queries import WORK_PER_TURN, Build, not_found_message

if TYPE_CHECKING:
    from tcpsched.core.backlog import Backlog
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.sides import Outbox
    from tcpsched.core.state import JobTable

CHILDREN_MAX = 1000  # children one answer lists


def children_of(parent_id: str, newest_first: Any, limit: int,
                step: int = WORK_PER_TURN) -> Build:
    """Build: up to `limit` jobs naming `parent_id` in their `after`, newest first, from
    `newest_first` (the table's jobs, newest first), stopping at the parent."""
    found: list[dict[str, Any]] = []
    jobs = iter(newest_first)
    copied = False
    while True:
        for seen, job in enumerate(jobs, 1):
            if job.id == parent_id or len(found) >= limit:
                return found
            if parent_id in job.spec.after:
                found.append({"id": job.id, "state": job.state.value})
            if seen == step:
                break
        else:
            return found
        if not copied:  # the rest as it is now, once, before the table can change
            jobs, copied = iter(list(jobs)), True
        yield


class ChildrenRequests:
    """The `children` request, answered from the table in bounded steps."""

    def __init__(self, *, table: JobTable, backlog: Backlog,
                 resolve: Callable[[str], JobRecord | None], out: Outbox) -> None:
        self.table = table
        self.backlog = backlog
        self.resolve = resolve
        self._reply = out.reply
        self._error = out.error

    def on_children(self, conn: int, msg: m.Children) -> None:
        job = self.resolve(msg.job_id)
        if job is None:
            self._error(conn, msg.req_id, "not_found", not_found_message(self.table, msg.job_id))
            return
        self.backlog.run_or_queue(conn, self._children_work(conn, msg.req_id, job.id,
                                                            min(msg.limit, CHILDREN_MAX)))

    def _children_work(self, conn: int, req_id: int, job_id: str, limit: int) -> Build:
        found = yield from children_of(job_id, self.table.newest_first(), limit)
        self._reply(conn, req_id, found)
