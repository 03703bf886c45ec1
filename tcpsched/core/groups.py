"""Groups: the jobs one `map` made share a group id (`JobSpec.group`), and are driven together.

Theory of operation: the group is a field of each job's spec, so it is journaled and
replicated with the submit and needs no record of its own. The leader keeps an index group ->
job ids (in submission order, which is item order for `map`), maintained by the hooks
`_record` calls and rebuilt from the table when a leader starts, so a group request costs its
own jobs, never a scan of the table. Forgotten jobs (retention) leave the index with their
`forget` record.

`group_summary` is the pure math behind `status --group`: counts by state, progress (the share
of jobs that are terminal), throughput (jobs finished per second, from the group's first start
to its latest finish) and an ETA (what remains at that throughput; None until one job has
finished, and 0 once all have).

`GroupRequests` (an object `Scheduler` owns, `group_requests`) answers `GroupRequest` (status,
ids, list, cancel) and `Retry` of one job or a whole group, a bounded amount of work per loop
turn. It is given the job table, the backlog, the group index, the step's clocks and outbox
(`core/sides.py`), and the scheduler's `cancel` and the dependency tracker's `retry` and
`retry_problem`: it changes the table only through those, which journal through `_record`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tcpsched.core import messages as m
from tcpsched.core.jobs import RETRYABLE_STATES, JobRecord, JobState
from tcpsched.core.queries import Build, not_found_message, output_budget, resolve, unknown_state

if TYPE_CHECKING:
    from tcpsched.core.backlog import Backlog
    from tcpsched.core.sides import Outbox, StepClock
    from tcpsched.core.state import JobTable

GROUP_WORK_PER_TURN = 5_000  # jobs a group request looks at per loop turn
GROUP_ACTIONS = ("status", "ids", "list", "cancel")
# A reply about more jobs than this (cancel or retry of a big group) carries short records
# (id, state, group, attempts, error), so it stays far within a frame: 100,000 whole records
# would not.
FULL_RECORDS_MAX = 5_000


def group_summary(group: str, jobs: list[JobRecord], wall: float) -> dict[str, Any]:
    """Counts by state, progress, throughput (jobs/s) and ETA (s) of a group's jobs."""
    counts = {state.value: 0 for state in JobState}
    first_start: float | None = None
    last_finish: float | None = None
    for job in jobs:
        counts[job.state.value] += 1
        if job.started_at is not None and (first_start is None or job.started_at < first_start):
            first_start = job.started_at
        if job.state.is_terminal and job.finished_at is not None and (
                last_finish is None or job.finished_at > last_finish):
            last_finish = job.finished_at
    total = len(jobs)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    remaining = total - done
    throughput = None
    eta_s = 0.0 if remaining == 0 else None
    finished_runs = done - counts["cancelled"]  # cancelled-while-pending jobs never ran
    if first_start is not None and finished_runs > 0:
        # While jobs are still running, the clock runs on to now: a stalled group's throughput
        # falls instead of staying at its last value.
        # Jobs whose end time nobody reported (a worker's finished_at of null) end at `wall`.
        end = wall if last_finish is None else (
            last_finish if remaining == 0 else max(last_finish, wall))
        elapsed = max(end - first_start, 1e-3)
        throughput = done / elapsed
        if remaining:
            eta_s = remaining / throughput
    return {
        "group": group, "total": total, "counts": counts, "done": done,
        "progress": done / total if total else 1.0,
        "throughput": throughput, "eta_s": eta_s,
        "started_at": first_start, "finished_at": last_finish if remaining == 0 else None,
    }  # fmt: skip


class GroupIndex:
    """group -> ids of its jobs still in the table, in submission order."""

    def __init__(self) -> None:
        self.ids: dict[str, dict[str, None]] = {}

    def add(self, job: JobRecord) -> None:
        group = job.spec.group
        if group is not None:
            self.ids.setdefault(group, {})[job.id] = None

    def forget(self, table: JobTable, job_ids: Any) -> None:
        """Before a `forget` record is applied (the jobs still say their group)."""
        for job_id in job_ids:
            job = table.get(job_id)
            if job is None or job.spec.group is None:
                continue
            members = self.ids.get(job.spec.group)
            if members is not None:
                members.pop(job_id, None)
                if not members:
                    del self.ids[job.spec.group]

    def rebuild(self, jobs: Iterable[JobRecord]) -> None:
        """From the table's jobs (or those of them that have a group), in submission order."""
        self.ids.clear()
        for job in jobs:
            if job.spec.group is not None:
                self.add(job)


class GroupRequests:
    """Group requests and retry (see the module docstring for what it is given)."""

    def __init__(
        self, *, table: JobTable, backlog: Backlog, groups: GroupIndex, clock: StepClock,
        out: Outbox, cancel: Callable[[JobRecord, float], None],
        retry: Callable[[JobRecord], JobRecord], retry_problem: Callable[[JobRecord], str | None],
    ) -> None:  # fmt: skip
        self.table = table
        self.backlog = backlog
        self.groups = groups
        self._clock = clock
        self._reply = out.reply
        self._error = out.error
        self.cancel = cancel
        self.retry = retry
        self.retry_problem = retry_problem

    @property
    def _wall(self) -> float:
        return self._clock.wall

    def _group_jobs(self, group: str) -> Build:
        """Build: the group's jobs as they are now, in submission order (None: no group)."""
        members = self.groups.ids.get(group)
        if members is None:
            return None
        jobs = []
        get = self.table.jobs.get
        for i, job_id in enumerate(list(members), 1):
            job = get(job_id)
            if job is not None:
                jobs.append(job)
            if i % GROUP_WORK_PER_TURN == 0:
                yield
        return jobs

    def on_group_request(self, conn: int, msg: m.GroupRequest, now: float) -> None:
        problem = None
        if msg.action not in GROUP_ACTIONS:
            problem = f"unknown group action {msg.action!r}; one of {', '.join(GROUP_ACTIONS)}"
        elif msg.state is not None:
            problem = unknown_state(msg.state)
        if problem is not None:
            self._error(conn, msg.req_id, "bad_request", problem)
            return
        self.backlog.run_or_queue(conn, self._group_work(conn, msg, now))

    def _group_work(self, conn: int, msg: m.GroupRequest, now: float) -> Build:
        jobs = yield from self._group_jobs(msg.group)
        if jobs is None:
            self._error(conn, msg.req_id, "not_found", f"no group {msg.group!r}")
            return
        if msg.action == "status":
            self._reply(conn, msg.req_id, group_summary(msg.group, jobs, self._wall))
            return
        if msg.state is not None:
            jobs = [job for job in jobs if job.state.value == msg.state]
        if msg.action == "ids":
            self._reply(conn, msg.req_id, [job.id for job in jobs])
            return
        if msg.action == "list":
            jobs = jobs[::-1][:min(msg.limit, FULL_RECORDS_MAX)]  # newest first, like `list`
        else:  # cancel: every job not yet finished
            jobs = [job for job in jobs if not job.state.is_terminal]
            for i, job in enumerate(jobs, 1):
                current = self.table.get(job.id)
                if current is not None and not current.state.is_terminal:
                    self.cancel(current, now)
                if i % GROUP_WORK_PER_TURN == 0:
                    yield
        yield from self._reply_records(conn, msg.req_id, [job.id for job in jobs])

    def _reply_records(self, conn: int, req_id: int, ids: list[str]) -> Build:
        budget = output_budget(len(ids))
        short = len(ids) > FULL_RECORDS_MAX
        out: list[dict[str, Any]] = []
        for i, job_id in enumerate(ids, 1):
            job = self.table.get(job_id)
            if job is not None and short:
                out.append({"id": job.id, "state": job.state.value, "group": job.spec.group,
                            "attempts": job.attempts, "error": job.error})
            elif job is not None:
                out.append(job.to_public(budget, budget, self.table.result_chars.get(job_id)))
            if i % GROUP_WORK_PER_TURN == 0:
                yield
        self._reply(conn, req_id, out)

    def on_retry(self, conn: int, msg: m.Retry) -> None:
        if (msg.group is None) == (not msg.job_ids):
            self._error(conn, msg.req_id, "bad_request", "retry takes job ids or a group")
            return
        if msg.state is not None and msg.state not in {s.value for s in RETRYABLE_STATES}:
            self._error(conn, msg.req_id, "bad_request",
                        f"retry --state takes failed or cancelled, not {msg.state!r}")
            return
        self.backlog.run_or_queue(conn, self._retry_work(conn, msg))

    def _retry_work(self, conn: int, msg: m.Retry) -> Build:
        if msg.group is None:
            jobs = []
            for ref in msg.job_ids:
                job = resolve(self.table, ref)
                if job is None:
                    self._error(conn, msg.req_id, "not_found", not_found_message(self.table, ref))
                    return
                problem = self.retry_problem(job)
                if problem is not None:
                    self._error(conn, msg.req_id, "bad_request", problem)
                    return
                jobs.append(job)
            strict = True
        else:
            found = yield from self._group_jobs(msg.group)
            if found is None:
                self._error(conn, msg.req_id, "not_found", f"no group {msg.group!r}")
                return
            states = RETRYABLE_STATES if msg.state is None else {JobState(msg.state)}
            jobs = [job for job in found if job.state in states]
            strict = False
        retried = []
        # In submission order: a parent comes back before its children are looked at, so
        # a child cancelled because of a retried parent may come back with it.
        for i, job in enumerate(jobs, 1):
            current = self.table.get(job.id)
            if current is not None and (not strict or current is job) \
                    and self.retry_problem(current) is None:
                retried.append(self.retry(current).id)
            if i % GROUP_WORK_PER_TURN == 0:
                yield
        yield from self._reply_records(conn, msg.req_id, retried)
