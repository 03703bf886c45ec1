"""The leader's brain: job table + queue + placement + failure detector, as effects.

Theory of operation: the shell feeds `step(event, now)` every connection event and calls it
with `Tick` at `next_deadline()`. Each step may change the job table, only ever through
`_record(...)`, which applies a journal record to the table and emits it as a `Journal` effect;
then `_advance(now)` lets time act (the detector declares workers suspect or dead, delayed jobs
become ready, waits time out, old finished jobs are forgotten) and hands ready jobs to workers
with free slots, in queue order, through the placement policy.

Attempts: starting a job increments `attempts`; a worker names the attempt in everything it
reports, and `workerside` ignores what concerns any attempt but the job's current one there.

The parts live in modules of their own: `workerside` (the worker protocol, mixed in here),
`placement` (what dispatch records for `explain`, and the `explain` request, mixed in too),
`workers` (worker entries and the rules for reading them), `waiters` (pending `wait` requests),
`queries` (read-only replies from the table) and `retention` (which finished jobs to forget).
This module wires them: events in, effects out, submit, cancel, time and dispatch.

Clocks: `now` is the leader's monotonic clock in seconds, passed in with every step; every
duration and deadline (the detector, delays, retry backoff, wait deadlines, retention ages)
is measured on it, so a step of the wall clock (NTP) moves none of them. `wall` is Unix time
at the same instant, used only for the times records show and the journal keeps
(submitted_at, started_at, finished_at, a delayed job's not_before). What survives a restart is
therefore wall-clock time; `_recover` turns it into the new process's monotonic clock once,
at start (a wall-clock step while the leader was down moves a delayed job's start by as much).
Randomness comes from the injected `random.Random`.

Bounded work: big requests (submits, listings, waits) are generators advanced one bounded step
per loop turn (`backlog`); each step begins by telling the detector the loop ran, so a stall of
the leader's own loop is never counted as a worker's silence (`detector`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.backlog import Backlog
from tcpsched.core.backpressure import MAX_PENDING_DEFAULT, Admission
from tcpsched.core.breaker import BreakerConfig, CircuitBreaker
from tcpsched.core.deps import DependencySide, resolve_after
from tcpsched.core.detector import ALIVE, DEAD, SUSPECT, DetectorConfig, FailureDetector
from tcpsched.core.dispatch import (
    PLACEMENT_SKIPS_MAX,
    FreeWorkers,
    make_policy,
    unplaceable_reason,
)
from tcpsched.core.events import Close, Closed, Connected, Effect, Journal, Received, Send, Tick
from tcpsched.core.explain import Placement
from tcpsched.core.groups import GroupIndex, GroupSide
from tcpsched.core.jobqueue import JobQueue
from tcpsched.core.jobs import RETRYABLE_STATES, JobRecord, JobSpec, JobState
from tcpsched.core.limits import WireLimits
from tcpsched.core.liveside import LiveSide
from tcpsched.core.node_events import EndOfTurn
from tcpsched.core.placement import PlacementSide
from tcpsched.core.queries import (
    JOB_ID_PREFIX_MIN,
    OUTPUT_CHARS_PER_RECORD_MIN,
    REPLY_OUTPUT_CHARS,
    Build,
    cursor_problem,
    list_records,
    not_found_message,
    output_budget,
    resolve,
    resolve_all,
    unknown_state,
    wait_records,
)
from tcpsched.core.retention import RETENTION_CHECK_PERIOD_S, Retention
from tcpsched.core.schedule_side import ScheduleSide
from tcpsched.core.state import JobTable, job_to_dict
from tcpsched.core.waiters import Waiter, Waits
from tcpsched.core.workers import DRAINING, WorkerEntry, worker_state
from tcpsched.core.workerside import WorkerSide, retry_delay

if TYPE_CHECKING:
    import random

SUBMITS_PER_TURN = 200  # jobs one step of a submit records (about 10 ms)
STALL_LOGGED_S = 0.5  # a stall of the leader's loop this long is logged

log = logging.getLogger(__name__)

# Names other modules import from here; they live in the modules of their own idea.
__all__ = [
    "JOB_ID_PREFIX_MIN", "OUTPUT_CHARS_PER_RECORD_MIN", "REPLY_OUTPUT_CHARS",
    "RETENTION_CHECK_PERIOD_S", "Scheduler", "SchedulerConfig", "WorkerEntry",
    "output_budget", "retry_delay",
]


@attrs.frozen
class SchedulerConfig:
    node_id: int = 1
    address: str = "127.0.0.1:7001"
    epoch: int = 1
    policy: str = "round-robin"
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    poison_workers_max: int = 3
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    keep_finished: int = 100_000
    keep_finished_for_s: float | None = None
    keep_output_chars: int | None = 256 * 1024 * 1024
    dead_workers_kept_s: float = 600.0
    list_limit_max: int = 100_000
    max_pending: int = MAX_PENDING_DEFAULT  # backpressure: submits past it are refused whole
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    # What the coordinator accepts from a peer; told to workers so they never send more.
    wire_limits: WireLimits = attrs.field(factory=WireLimits)


class Scheduler(WorkerSide, LiveSide, ScheduleSide, PlacementSide, DependencySide, GroupSide):
    def __init__(
        self,
        config: SchedulerConfig,
        rng: random.Random,
        now: float,
        table: JobTable | None = None,
        wall: float | None = None,
    ) -> None:
        """`now` is the monotonic clock, `wall` Unix time at the same instant (default: the
        same number, for tests and the simulation that run on one clock)."""
        self.config = config
        self._now = now
        self._wall = now if wall is None else wall
        self._rng = rng
        self.table = table if table is not None else JobTable()
        self.queue = JobQueue()
        self.policy = make_policy(config.policy, rng)
        self.detector = FailureDetector(
            DetectorConfig(config.heartbeat_interval_s, config.heartbeat_timeout_s)
        )
        self.workers: dict[str, WorkerEntry] = {}
        self.free = FreeWorkers()  # who can take a job now (dispatch never scans `workers`)
        self._touched: set[str] = set()  # workers whose freeness may have changed this step
        self._lookaheads_open: list[WorkerEntry] = []  # see WorkerEntry.lookahead_open
        # Set by the node core, which steps `EndOfTurn` after each loop turn (core/node.py).
        self.dispatch_per_turn = False
        self.dispatch_due = False
        self._resync_at = now
        # Pending jobs no live worker can run, out of the queue until a worker registers:
        # job id -> why (shown as the record's `reason`).
        self.parked: dict[str, str] = {}
        self._conn_roles: dict[int, str] = {}
        self._conn_addresses: dict[int, str] = {}
        self._conn_worker: dict[int, str] = {}
        self.waits = Waits()
        self.backlog = Backlog()
        self.retention = Retention(config.keep_finished, config.keep_finished_for_s, now,
                                   config.keep_output_chars)
        self._effects: list[Effect] = []
        self.workers_lost = 0
        self.started_at = now
        self.extra_stats: dict[str, Any] = {}  # figures the shell adds (journal, connections)
        self._init_live()  # tails of running jobs' output and their followers (liveside.py)
        self.admission = Admission(config.max_pending)
        self.breaker = CircuitBreaker(config.breaker)  # leader-local soft state (breaker.py)
        # What dispatch knew when it placed each recent job, for `explain` (bounded).
        self.placements: OrderedDict[str, Placement] = OrderedDict()
        self.started_total = 0
        self._init_deps()
        self.groups = GroupIndex()
        self._recover(now)
        self._init_schedules()

    # -- recovery -------------------------------------------------------------------------------

    def _recover(self, now: float) -> None:
        """Rebuild the queue from the table; running jobs wait for their worker to come back.

        A worker that held running jobs when the leader stopped gets `heartbeat_timeout_s` to
        re-register with them; until then it is a suspect placeholder, and then it is dead and
        its jobs are requeued like any lost worker's.
        """
        # Finish times and delays come back in wall-clock time: from here on they are on
        # this process's monotonic clock.
        to_monotonic_s = now - self._wall
        self.table.rebase_finished(to_monotonic_s)
        jobs = self.table.jobs.values()
        pending_state = JobState.PENDING
        # Comprehensions that build the queue's heap entries directly (`JobQueue.load_entries`):
        # over a million jobs they cost half what a loop does. The delayed pass is skipped when
        # the first shows every pending job ready.
        ready = [(-j.spec.priority, j.seq, j.id)
                 for j in jobs if j.state is pending_state and j.not_before <= 0.0]
        delayed = [] if len(ready) == self.table.counts[pending_state] else [
            (j.not_before + to_monotonic_s, j.seq, j.id, j.spec.priority)
            for j in jobs if j.state is pending_state and j.not_before > 0.0]
        self.queue.load_entries(ready, delayed)
        # One pass finds the jobs either index needs (most jobs have neither).
        linked = [j for j in jobs if j.spec.after or j.spec.group is not None]
        self._rebuild_deps(linked)
        self.groups.rebuild(linked)
        if not self.table.counts[JobState.RUNNING]:
            return
        for job in jobs:
            if job.state is JobState.RUNNING and job.worker is not None:
                entry = self.workers.get(job.worker)
                if entry is None:
                    entry = self.workers[job.worker] = WorkerEntry(
                        name=job.worker, conn=None, slots=1, tags=(), address="",
                        registered_at=now,
                    )  # fmt: skip
                    self.detector.watch(job.worker, now, connected=False)
                entry.running[job.id] = job.attempts
                entry.slots = max(entry.slots, len(entry.running))

    # -- the sans-I/O interface ---------------------------------------------------------------

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Effect]:
        """One event at monotonic `now` (and Unix time `wall`, for the records' times)."""
        self._effects = []
        self._now = now
        self._wall = now if wall is None else wall
        stall_s = self.detector.loop_ran(now)
        if stall_s >= STALL_LOGGED_S:
            log.warning("leader loop stalled for %.2fs; not counted against any worker",
                        stall_s)
        if isinstance(event, Received):
            self._on_message(event.conn, event.msg, now)
        elif isinstance(event, Connected):
            self._conn_roles[event.conn] = event.role
            self._conn_addresses[event.conn] = event.address
        elif isinstance(event, Closed):
            self._on_closed(event.conn, event.reason, now)
        elif isinstance(event, Tick):
            self.backlog.step()
        elif isinstance(event, EndOfTurn):
            self._dispatch_pass(now)  # the turn's one dispatch pass (core/node.py)
            effects, self._effects = self._effects, []
            return effects
        else:
            raise TypeError(f"unknown event {event!r}")
        self._advance(now)
        effects, self._effects = self._effects, []
        return effects

    def next_deadline(self) -> float | None:
        if self.backlog:
            return self._now  # queued work goes on at the next loop turn
        candidates = [
            self.detector.next_deadline(),
            self.queue.next_deadline(),
            self.waits.next_deadline(),
            self._live_deadline(),
            self.schedules_deadline(),
            self.breaker.next_deadline(),
        ]
        if self.table.finished_order and self.config.keep_finished_for_s is not None:
            candidates.append(self.retention.next_check)
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def statistics(self) -> dict[str, Any]:
        t = self.table.statistics()
        detector = self.detector
        states = [worker_state(entry, detector) for entry in self.workers.values()]
        return {
            "pending": t.pending,
            "running": t.running,
            "succeeded": t.succeeded,
            "failed": t.failed,
            "cancelled": t.cancelled,
            "workers_alive": states.count(ALIVE),
            "workers_suspect": states.count(SUSPECT),
            "workers_draining": states.count(DRAINING),
            "workers_dead": states.count(DEAD),
            "workers_tripped": self.breaker.tripped_count(self._now),
            "breaker_trips": self.breaker.trips,
            "max_pending": self.admission.max_pending,
            "refused_submits": self.admission.refused_batches,
            "refused_jobs": self.admission.refused_jobs,
            "slots_total": sum(
                w.slots for w in self.workers.values() if worker_state(w, detector) == ALIVE
            ),
            "leader": self.config.node_id,
            "epoch": self.config.epoch,
            "policy": self.policy.name,
            "submitted": t.submitted,
            "finished": self.table.counters.get("finished", 0),
            "reassigned": t.reassigned,
            "retried": t.retried,
            "poisoned": t.poisoned,
            "handed_back": t.handed_back,
            "workers_lost": self.workers_lost,
            "jobs_in_memory": len(self.table),
            "loop_stall_max_s": round(detector.stall_max_s, 3),
            "backlog": len(self.backlog),
            "live_output_chars": self.tails.chars,
            **self.extra_stats,
        }

    # -- effects helpers --------------------------------------------------------------------------

    def _send(self, conn: int | None, msg: Any) -> None:
        if conn is not None:
            self._effects.append(Send(conn, msg))

    def _record(self, record: dict[str, Any], built: JobRecord | None = None) -> JobRecord | None:
        if self.groups.ids and record["op"] == "forget":
            self.groups.forget(self.table, record["ids"])
        job = self.table.apply(record, self._now, built)
        self._effects.append(Journal(record))
        if job is not None:
            if job.spec.group is not None and record["op"] == "submit":
                self.groups.add(job)
            if job.spec.after or self.deps.children:
                self._deps_changed(record, job)
        if job is not None and job.state.is_terminal:
            for waiter in self.waits.job_finished(job.id):
                self._answer(waiter)
        if job is not None:
            self._live_record(job)
        return job

    def _reply(self, conn: int, req_id: int, value: Any) -> None:
        self._send(conn, m.Reply(req_id=req_id, value=value))

    def _error(self, conn: int, req_id: int, kind: str, message: str) -> None:
        self._send(conn, m.ErrorReply(req_id=req_id, kind=kind, message=message))

    # -- connections ---------------------------------------------------------------------------

    def _on_closed(self, conn: int, reason: str, now: float) -> None:
        self._conn_roles.pop(conn, None)
        self._conn_addresses.pop(conn, None)
        self.waits.closed(conn)
        self._live_closed(conn)
        self.backlog.closed(conn)
        name = self._conn_worker.pop(conn, None)
        if name is None:
            return
        self._touched.add(name)
        entry = self.workers.get(name)
        if entry is None or entry.conn != conn:
            return
        entry.conn = None
        if entry.draining and not entry.running:
            # A drained worker that says goodbye is gone, not lost.
            log.info("worker=%s left after draining", name)
            self._declare_dead(entry, now, lost=False)
        elif self.detector.disconnected(name):
            log.info("worker=%s suspect: connection closed (%s)", name, reason)

    def _on_message(self, conn: int, msg: Any, now: float) -> None:
        role = self._conn_roles.get(conn)
        kind = type(msg)
        if role == "client" and kind in m.CLIENT_REQUESTS:
            self._on_request(conn, msg, now)
        elif role == "worker" and kind in m.WORKER_TO_COORDINATOR:
            if kind is m.Register:
                self._on_register(conn, msg, now)
                self._touched.add(msg.name)
                return
            name = self._conn_worker.get(conn)
            if name is None:
                self._effects.append(Close(conn, f"{msg.TYPE} before register"))
                return
            entry = self.workers[name]
            self._touched.add(name)
            if kind is m.Output:
                self._on_output(entry, msg)
            elif kind is m.Heartbeat:
                self._on_heartbeat(entry, msg, now)
            elif kind is m.Result:
                self._on_result(entry, msg, now)
                if entry.prefetch:
                    entry.lookahead_open = True  # closed again after this step's dispatch
                    self._lookaheads_open.append(entry)
            elif kind is m.HandBack:
                self._on_hand_back(entry, msg, now)
            elif kind is m.Fenced:
                self._on_fenced(entry, msg, now)
            elif kind is m.Draining:
                if not entry.draining:
                    log.info("worker=%s draining", name)
                entry.draining = True
                self.detector.heartbeat(name, now)
        else:
            self._effects.append(Close(conn, f"unexpected {msg.TYPE} from a {role} connection"))

    # -- client requests ------------------------------------------------------------------------

    def _on_request(self, conn: int, msg: Any, now: float) -> None:
        if isinstance(msg, m.Submit):
            self._on_submit(conn, msg, now)
        elif isinstance(msg, m.Status):
            self.backlog.run_or_queue(conn, self._status_work(conn, msg))
        elif isinstance(msg, m.Wait):
            self.backlog.run_or_queue(conn, self._wait_work(conn, msg))
        elif isinstance(msg, m.ListJobs):
            self._on_list(conn, msg)
        elif isinstance(msg, m.Cancel):
            self._on_cancel(conn, msg, now)
        elif isinstance(msg, m.Tail):
            self._on_tail(conn, msg)
        elif isinstance(msg, m.GroupRequest):
            self._on_group_request(conn, msg, now)
        elif isinstance(msg, m.Retry):
            self._on_retry(conn, msg)
        elif isinstance(msg, m.Workers):
            self._reply(conn, msg.req_id, self.worker_list())
        elif isinstance(msg, m.Stats):
            self._reply(conn, msg.req_id, self.statistics())
        elif type(msg) in m.SCHEDULE_REQUESTS:
            self._on_schedule_request(conn, msg)
        elif isinstance(msg, m.Explain):
            self._on_explain(conn, msg)
        elif isinstance(msg, m.Leader):
            cfg = self.config
            self._reply(
                conn, msg.req_id, {"id": cfg.node_id, "address": cfg.address, "epoch": cfg.epoch}
            )

    def _new_job_id(self) -> str:
        while True:
            job_id = f"{self._rng.getrandbits(48):012x}"
            if job_id not in self.table.jobs:
                return job_id

    def _on_submit(self, conn: int, msg: m.Submit, now: float) -> None:
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
            id=self._new_job_id(), seq=self.table.next_seq, spec=spec, submitted_at=wall,
            not_before=wall + spec.delay if spec.delay > 0 else 0.0,
        )  # fmt: skip
        new = self._record({"op": "submit", "job": job_to_dict(job)}, job)
        if spec.after and (job.id in self.deps.waiting or new is None
                           or self.table.jobs[job.id].state is not JobState.PENDING):
            return job.id  # waits on its parents (core/deps.py), or a parent had failed
        self.queue.push(job.id, spec.priority, job.seq, now + spec.delay if spec.delay > 0
                        else 0.0)
        return job.id

    def resolve(self, ref: str) -> JobRecord | None:
        """A job by id, or by an unambiguous id prefix of at least 4 characters."""
        return resolve(self.table, ref)

    def _resolve_all(self, conn: int, req_id: int, refs: tuple[str, ...]) -> Build:
        """Build: the jobs `refs` name, or None once a not_found error is sent."""
        found = yield from resolve_all(self.table, refs)
        if isinstance(found, str):
            self._error(conn, req_id, "not_found", not_found_message(self.table, found))
            return None
        return found

    def _status_work(self, conn: int, msg: m.Status) -> Build:
        jobs = yield from self._resolve_all(conn, msg.req_id, msg.job_ids)
        if jobs is not None:
            self._reply(conn, msg.req_id, [{**job.to_public(), "reason": self.reason(job)}
                                           for job in jobs])

    def reason(self, job: JobRecord) -> str | None:
        """The record's `reason`: why a pending job does not run, why a job failed or was
        cancelled (a parent, "lost 3 workers"), or None."""
        if job.state is JobState.PENDING:
            return self.parked.get(job.id) or self.deps.reason(job.id)
        return job.error if job.state in RETRYABLE_STATES else None

    def _wait_work(self, conn: int, msg: m.Wait) -> Build:
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

    def _answer(self, waiter: Waiter) -> None:
        self.backlog.run_or_queue(waiter.conn, self._answer_work(waiter))

    def _answer_work(self, waiter: Waiter) -> Build:
        records = yield from wait_records(waiter.job_ids, self.table)
        self._reply(waiter.conn, waiter.req_id, records)

    def _on_list(self, conn: int, msg: m.ListJobs) -> None:
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
        limit = min(msg.limit, self.config.list_limit_max)
        records, full = yield from list_records(self.table, msg.state, limit, msg.after)
        if not msg.page:
            self._reply(conn, msg.req_id, records)
            return
        following = records[-1]["id"] if full and records else None
        self._reply(conn, msg.req_id, {"jobs": records, "next": following})

    def _on_cancel(self, conn: int, msg: m.Cancel, now: float) -> None:
        job = self.resolve(msg.job_id)
        if job is None:
            self._error(conn, msg.req_id, "not_found", not_found_message(self.table, msg.job_id))
            return
        self.cancel(job, now)
        self._reply(conn, msg.req_id, self.table.jobs[job.id].to_public())

    def cancel(self, job: JobRecord, now: float) -> None:
        if job.state is JobState.PENDING:
            self.queue.remove(job.id)
            self.parked.pop(job.id, None)
            self._record({"op": "cancel", "id": job.id, "at": self._wall})
            log.info("job=%s cancelled while pending", job.id)
        elif job.state is JobState.RUNNING:
            self._record({"op": "cancel", "id": job.id, "at": self._wall})
            entry = self.workers.get(job.worker or "")
            if entry is not None:
                self._send(entry.conn, m.Kill(job_id=job.id, attempt=job.attempts,
                                              reason="cancelled", epoch=self.config.epoch))
            log.info("job=%s cancelled while running on worker=%s", job.id, job.worker)

    # -- time and dispatch ----------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self._doomed:
            self._cascade()  # children doomed while no leader acted (core/deps.py)
        deadline = self.detector.next_deadline()
        if deadline is not None and now >= deadline:
            for name, state in self.detector.check(now):
                self._touched.add(name)
                entry = self.workers[name]
                if state == DEAD:
                    self._declare_dead(entry, now)
                elif state == SUSPECT:
                    log.info("worker=%s suspect: no heartbeat for %.1fs", name,
                             self.detector.silence(name, now))
        for waiter in self.waits.expire(now):
            self._answer(waiter)
        self._live_advance(now)
        # Retention is inline, not a method of its own: this runs on every step.
        table = self.table
        ids = self.retention.due(table.finished_order, now, table.finished_output_chars,
                                 table.output_chars)
        if now >= self._resync_at:
            self._resync(now)
        self.admission.observe(self.started_total, now)
        self._touched.update(self.breaker.due(now))
        if ids:
            self._record({"op": "forget", "ids": ids})
        self._fire_schedules()
        # Promote due delayed jobs even when no worker is free: otherwise next_deadline() stays
        # in the past and the shell's timer fires again at once, spinning until a slot frees.
        self.queue.promote(now)
        if self.dispatch_per_turn:
            self.dispatch_due = True  # one pass at the turn's end (core/node.py)
        else:
            self._dispatch_pass(now)

    def _dispatch_pass(self, now: float) -> None:
        self.dispatch_due = False
        self._dispatch(now)
        if self._lookaheads_open:
            for entry in self._lookaheads_open:
                entry.lookahead_open = False
                self._touched.add(entry.name)  # may no longer be free: refreshed next step
            self._lookaheads_open.clear()

    def _is_free(self, name: str, entry: WorkerEntry | None) -> bool:
        return (entry is not None and entry.conn is not None and not entry.draining
                and entry.free_slots() > 0 and self.detector.state(name) == ALIVE
                and self.breaker.allows(name, self._now))

    def _refresh(self, name: str) -> None:
        entry = self.workers.get(name)
        self.free.set(name, entry if self._is_free(name, entry) else None)

    def _resync(self, now: float) -> None:
        """Once per heartbeat interval: forget long-dead workers, and rebuild the free set
        from scratch (whatever a refresh may have missed is right again within a beat)."""
        self._resync_at = now + self.config.heartbeat_interval_s
        kept_s = self.config.dead_workers_kept_s
        for name, entry in list(self.workers.items()):
            if entry.dead_at is not None and now - entry.dead_at > kept_s and entry.conn is None:
                del self.workers[name]
                self.breaker.forget(name)
        self.free.clear()
        for name, entry in self.workers.items():
            if self._is_free(name, entry):
                self.free.set(name, entry)
        self._touched.clear()

    def _dispatch(self, now: float) -> None:
        free = self.free
        for name in self._touched:
            self._refresh(name)
        self._touched.clear()
        queue = self.queue
        if not len(queue):
            return
        # A job only the busy workers can run waits in its place; the jobs behind it may go
        # to the free workers (at most PLACEMENT_SKIPS_MAX skipped per pass). A job nobody
        # live can run is parked with the reason, until a worker registers.
        skipped: list[JobRecord] = []
        entries = free.entries
        # Jobs of one kind, function and tags are unplaceable for the same reason: look at
        # every worker once per such shape in a pass, not once per job.
        reasons: dict[tuple[Any, ...], str | None] = {}

        def load(name: str) -> float:
            entry = entries[name]
            return (len(entry.running) + entry.held) / entry.slots

        while len(free) and len(skipped) < PLACEMENT_SKIPS_MAX:
            job_id = queue.pop(now)
            if job_id is None:
                break
            job = self.table.jobs[job_id]
            names = free.capable(job.spec)
            if not names:
                spec = job.spec
                shape = (spec.kind, spec.function, spec.tags)
                if shape not in reasons:
                    reasons[shape] = unplaceable_reason(self.workers, self.detector, spec)
                reason = reasons[shape]
                if reason is None:
                    skipped.append(job)
                else:
                    self._park(job, reason)
                continue
            name = self.policy.choose_sorted(names, load)
            entry = entries[name]
            self._place(job_id, entry, len(names))
            self._start(job_id, entry, now)
            if entry.free_slots() <= 0 or not self.breaker.allows(name, now):
                free.set(name, None)
        for job in skipped:
            queue.push(job.id, job.spec.priority, job.seq)

    def _park(self, job: JobRecord, reason: str) -> None:
        if job.id not in self.parked:
            log.warning("job=%s cannot be placed: %s", job.id, reason)
        self.parked[job.id] = reason

    def _unpark(self, now: float) -> None:
        """A worker registered: parked jobs it (or another live worker) can run go back to
        the queue in their place; the others stay parked, with the reason brought up to date."""
        for job_id, old in list(self.parked.items()):
            job = self.table.get(job_id)
            if job is None or job.state is not JobState.PENDING:
                del self.parked[job_id]
                continue
            reason = unplaceable_reason(self.workers, self.detector, job.spec)
            if reason is None:
                del self.parked[job_id]
                self.queue.push(job.id, job.spec.priority, job.seq)
            elif reason != old:
                self.parked[job_id] = reason

    def _start(self, job_id: str, entry: WorkerEntry, now: float) -> None:
        job = self.table.jobs[job_id]
        attempt = job.attempts + 1
        # Into a prefetch place (every slot busy), it waits on the worker: no start time until
        # its result brings the worker's own (core/prefetch.py).
        self._record({"op": "start", "id": job_id, "attempt": attempt, "worker": entry.name,
                      "at": None if entry.is_saturated() else self._wall})
        entry.running[job_id] = attempt
        entry.assigned_at[job_id] = now
        spec = job.spec
        self._send(entry.conn, m.Assign(
            job_id=job_id, attempt=attempt, epoch=self.config.epoch, kind=spec.kind,
            command=spec.command, function=spec.function, args=spec.args, kwargs=spec.kwargs,
            timeout=spec.timeout, env=spec.env, cwd=spec.cwd,
        ))  # fmt: skip

