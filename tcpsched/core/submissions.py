"""Submits: admission, idempotency keys, and recording a batch a bounded part per loop turn.

Theory of operation: a `submit` batch is first admitted whole or refused whole (backpressure,
`core/backpressure.py`), then recorded `SUBMITS_PER_TURN` jobs per loop turn by a generator the
backlog advances; the client is answered once every job of it is recorded (and, through the
node, committed). A key already in the table names its job (a resend); the same key with another
spec refuses the batch before any of it is recorded. A child (`after`) waits on its parents
instead of entering the queue (`core/deps.py`).

`Submissions` is an object `Scheduler` owns (`submissions`), given the job table, the queue,
admission, the backlog, the dependency index, the injected `random.Random` (job ids), the step's
clocks and outbox (`core/sides.py`) and `record`, the scheduler's single `_record` path: every
job enters the table through it, so every submit is journaled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tcpsched.core import messages as m
from tcpsched.core.deps import resolve_after
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.state import job_to_dict

if TYPE_CHECKING:
    import random

    from tcpsched.core.backlog import Backlog
    from tcpsched.core.backpressure import Admission
    from tcpsched.core.deps import Dependencies
    from tcpsched.core.jobqueue import JobQueue
    from tcpsched.core.queries import Build
    from tcpsched.core.sides import Outbox, Record, StepClock
    from tcpsched.core.state import JobTable

SUBMITS_PER_TURN = 200  # jobs one step of a submit records (about 10 ms)

# The scheduler logs submits under its own name, as before the split.
log = logging.getLogger("tcpsched.core.scheduler")


class Submissions:
    """Submit requests and `submit` of one job (see the module docstring for what it is given)."""

    def __init__(
        self, *, table: JobTable, queue: JobQueue, admission: Admission, backlog: Backlog,
        deps: Dependencies, rng: random.Random, clock: StepClock, out: Outbox, record: Record,
    ) -> None:  # fmt: skip
        self.table = table
        self.queue = queue
        self.admission = admission
        self.backlog = backlog
        self.deps = deps
        self._rng = rng
        self._clock = clock
        self._send = out.send
        self._reply = out.reply
        self._error = out.error
        self._record = record

    @property
    def _now(self) -> float:
        return self._clock.now

    @property
    def _wall(self) -> float:
        return self._clock.wall

    def new_job_id(self) -> str:
        while True:
            job_id = f"{self._rng.getrandbits(48):012x}"
            if job_id not in self.table.jobs:
                return job_id

    def on_submit(self, conn: int, msg: m.Submit, now: float) -> None:
        keys = self.table.keys
        new_jobs = sum(1 for spec in msg.jobs if spec.key is None or spec.key not in keys)
        refusal = self.admission.admit(new_jobs, self.table.counts[JobState.PENDING])
        if refusal is not None:
            log.info("submit of %d job(s) refused: %s", len(msg.jobs), refusal.message)
            self._send(conn, m.ErrorReply(
                req_id=msg.req_id, kind="bad_request" if refusal.never_fits else "queue_full",
                message=refusal.message, retry_after=refusal.retry_after_s))
            return
        self.backlog.run_or_queue(conn, self._submit_work(conn, msg, new_jobs),
                                  finish_on_close=True)

    def key_conflict(self, jobs: tuple[JobSpec, ...]) -> str | None:
        """Why a batch reuses an idempotency key for another job, or None. The same key with
        the same spec is a resend (one job); with another spec it is a mistake to refuse, not
        to answer with a job the caller did not describe."""
        seen: dict[str, JobSpec] = {}
        for spec in jobs:
            if spec.key is None:
                continue
            existing_id = self.table.keys.get(spec.key)
            existing = (self.table.jobs[existing_id].spec if existing_id is not None
                        else seen.get(spec.key))
            if existing is not None and existing != spec:
                owner = f"job {existing_id}" if existing_id is not None else "another job of " \
                    "this batch"
                return (f"idempotency key {spec.key!r} is already used by {owner} with a "
                        "different spec; use another key, or the same spec to get that job")
            seen[spec.key] = spec
        return None

    def _submit_work(self, conn: int, msg: m.Submit, reserved: int = 0) -> Build:
        """Record a batch `SUBMITS_PER_TURN` jobs a turn; acknowledge it once all are. A key
        conflict refuses the whole batch before any of it is recorded. `reserved` is the room
        admission kept for it, given back as its jobs enter the table."""
        try:
            specs, unknown = resolve_after(self.table, msg.jobs)
            if unknown is not None:
                self._error(conn, msg.req_id, "bad_request", unknown)
                return
            conflict = self.key_conflict(specs)
            if conflict is not None:
                self._error(conn, msg.req_id, "conflict", conflict)
                return
            ids = []
            for i, spec in enumerate(specs, 1):
                ids.append(self.submit(spec, self._now))
                if i % SUBMITS_PER_TURN == 0 and i < len(specs):
                    self.admission.recorded(min(reserved, SUBMITS_PER_TURN))
                    reserved -= min(reserved, SUBMITS_PER_TURN)
                    yield
            self._reply(conn, msg.req_id, ids)
        finally:
            self.admission.recorded(reserved)

    def submit(self, spec: JobSpec, now: float) -> str:
        """Queue one job (or find the one its idempotency key already made); returns its id.
        The journal keeps a delay's end in wall-clock time, the queue on `now`'s clock."""
        if spec.key is not None:
            existing = self.table.keys.get(spec.key)
            if existing is not None:
                return existing
        wall = self._wall
        job = JobRecord(
            id=self.new_job_id(), seq=self.table.next_seq, spec=spec, submitted_at=wall,
            not_before=wall + spec.delay if spec.delay > 0 else 0.0,
        )  # fmt: skip
        new = self._record({"op": "submit", "job": job_to_dict(job)}, job)
        if spec.after and (job.id in self.deps.waiting or new is None
                           or self.table.jobs[job.id].state is not JobState.PENDING):
            return job.id  # waits on its parents (core/deps.py), or a parent had failed
        self.queue.push(job.id, spec.priority, job.seq, now + spec.delay if spec.delay > 0
                        else 0.0)
        return job.id
