"""What dispatch remembers of each placement, and the `explain` request; owned by `Scheduler`.

Theory of operation: when dispatch starts a job on a worker, `_place` keeps one small
`Placement` (policy, worker, its load then, how many free workers could have taken it) for the
`PLACEMENTS_KEPT` most recent jobs, and tells the circuit breaker (a half-open worker's first
job is its probe). `explain` reads that, the job table, the parking reasons and the workers
(`core/explain.py` turns them into sentences). None of this is journaled: a new leader knows
where each job runs (the table says) but not why, and says so.

`Placements` is given what it reads: the job table, the worker entries, the detector, the
breaker (which it also tells of each start), the policy, the parking reasons, the step's clocks
and outbox (`core/sides.py`) and `resolve` (an id or prefix to a job). It records nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from tcpsched.core import messages as m
from tcpsched.core.explain import Placement, explain, worker_views
from tcpsched.core.queries import not_found_message

if TYPE_CHECKING:
    from tcpsched.core.breaker import CircuitBreaker
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.dispatch import Policy
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.sides import Outbox, StepClock
    from tcpsched.core.state import JobTable
    from tcpsched.core.workers import WorkerEntry

PLACEMENTS_KEPT = 100_000  # recent placements `explain` can tell (about 200 bytes each)


class Placements:
    """The recent placements (`placements`, bounded), the count of starts, and `explain`."""

    def __init__(
        self, *, table: JobTable, workers: dict[str, WorkerEntry], detector: FailureDetector,
        breaker: CircuitBreaker, policy: Policy, parked: dict[str, str], clock: StepClock,
        out: Outbox, resolve: Callable[[str], JobRecord | None],
    ) -> None:  # fmt: skip
        self.table = table
        self.workers = workers
        self.detector = detector
        self.breaker = breaker
        self.policy = policy
        self.parked = parked
        self._clock = clock
        self._reply = out.reply
        self._error = out.error
        self.resolve = resolve
        # What dispatch knew when it placed each recent job, for `explain` (bounded).
        self.placements: OrderedDict[str, Placement] = OrderedDict()
        self.started_total = 0

    @property
    def _now(self) -> float:
        return self._clock.now

    @property
    def _wall(self) -> float:
        return self._clock.wall

    def place(self, job_id: str, entry: WorkerEntry, candidates: int) -> None:
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

    def on_explain(self, conn: int, msg: m.Explain) -> None:
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
