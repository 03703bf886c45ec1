"""What dispatch remembers of each placement, and the `explain` request; mixed into `Scheduler`.

Theory of operation: when dispatch starts a job on a worker, `_place` keeps one small
`Placement` (policy, worker, its load then, how many free workers could have taken it) for the
`PLACEMENTS_KEPT` most recent jobs, and tells the circuit breaker (a half-open worker's first
job is its probe). `explain` reads that, the job table, the parking reasons and the workers
(`core/explain.py` turns them into sentences). None of this is journaled: a new leader knows
where each job runs (the table says) but not why, and says so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tcpsched.core import messages as m
from tcpsched.core.explain import Placement, explain, worker_views
from tcpsched.core.queries import not_found_message

if TYPE_CHECKING:
    from tcpsched.core.breaker import CircuitBreaker
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.dispatch import Policy
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.state import JobTable
    from tcpsched.core.workers import WorkerEntry

PLACEMENTS_KEPT = 100_000  # recent placements `explain` can tell (about 200 bytes each)


class PlacementSide:
    """`Scheduler` inherits these; they work on its state, declared here for the type checker."""

    table: JobTable
    workers: dict[str, WorkerEntry]
    detector: FailureDetector
    breaker: CircuitBreaker
    policy: Policy
    parked: dict[str, str]
    placements: OrderedDict[str, Placement]
    started_total: int
    _now: float
    _wall: float
    resolve: Callable[[str], JobRecord | None]
    _reply: Callable[[int, int, Any], None]
    _error: Callable[[int, int, str, str], None]

    def _place(self, job_id: str, entry: WorkerEntry, candidates: int) -> None:
        """Remember why the job goes to `entry` (for `explain`), and tell the breaker."""
        placements = self.placements
        placements.pop(job_id, None)
        placements[job_id] = Placement(self.policy.name, entry.name,
                                       len(entry.running) + entry.held, entry.slots,
                                       candidates, self._wall)
        if len(placements) > PLACEMENTS_KEPT:
            placements.popitem(last=False)
        self.started_total += 1
        self.breaker.started(entry.name, job_id, self._now)

    def _on_explain(self, conn: int, msg: m.Explain) -> None:
        job = self.resolve(msg.job_id)
        if job is None:
            self._error(conn, msg.req_id, "not_found", not_found_message(self.table, msg.job_id))
            return
        get = self.table.jobs.get
        parents = {pid: (p.state.value if (p := get(pid)) is not None else None)
                   for pid in job.spec.after}
        views = worker_views(self.workers, self.detector, self.breaker, job.spec, now=self._now,
                             wall=self._wall)
        reasons = explain(job, now=self._wall, placement=self.placements.get(job.id),
                          parents=parents, parked=self.parked.get(job.id), workers=views)
        self._reply(conn, msg.req_id, {"id": job.id, "state": job.state.value,
                                       "reasons": reasons})
