"""The leader's brain: job table + queue + placement + failure detector, as effects.

Theory of operation: the shell feeds `step(event, now)` every connection event and calls it
with `Tick` at `next_deadline()`. Each step may change the job table, only ever through
`_record(...)`, which applies a journal record to the table and emits it as a `Journal` effect;
then `_advance(now)` lets time act (the detector declares workers suspect or dead, delayed jobs
become ready, waits time out, old finished jobs are forgotten) and hands ready jobs to workers
with free slots, in queue order, through the placement policy.

Attempts: starting a job increments `attempts`; a worker names the attempt in everything it
reports, and `workerside` ignores what concerns any attempt but the job's current one there.

Composition, not inheritance: `Scheduler` has no base class. Each idea is an object it owns,
built with exactly what it needs (the table, the queue, the detector, the worker entries, the
step's clocks and outbox from `sides`, and callables such as `record`), never the scheduler:
`worker_side` (the worker protocol, `workerside`), `live` (live output and `tail`, `liveside`),
`schedules` (`schedule_side`), `placement` (what dispatch records, and `explain`), `dependencies`
(module `deps`, index `deps`), `group_requests` (group requests and retry, `groups`), `reads`
(`status`, `wait`, `list`) and `submissions` (`submit`). `recovery` rebuilds what a new leader
derives from the table, `leader_stats` computes `stats`. This module wires them: every event is
routed to its side in one place (`step`, `_on_message`, `_on_request`); time and dispatch stay
here. The one way any side changes the table is the `record` callable it was given, which is
this module's `_record`: so every change is journaled, and every side's hook on it runs.

Clocks: `now` is the leader's monotonic clock in seconds, passed in with every step; every
duration and deadline (the detector, delays, retry backoff, wait deadlines, retention ages)
is measured on it, so a step of the wall clock (NTP) moves none of them. `wall` is Unix time
at the same instant, used only for the times records show and the journal keeps
(submitted_at, started_at, finished_at, a delayed job's not_before). What survives a restart is
therefore wall-clock time; `recover` turns it into the new process's monotonic clock once,
at start (a wall-clock step while the leader was down moves a delayed job's start by as much).
Randomness comes from the injected `random.Random`.

Bounded work: big requests (submits, listings, waits) are generators advanced one bounded step
per loop turn (`backlog`); each step begins by telling the detector the loop ran, so a stall of
the leader's own loop is never counted as a worker's silence (`detector`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tcpsched.core import messages as m
from tcpsched.core.backlog import Backlog
from tcpsched.core.backpressure import Admission
from tcpsched.core.breaker import CircuitBreaker
from tcpsched.core.children import ChildrenRequests
from tcpsched.core.deps import DependencyTracker
from tcpsched.core.detector import ALIVE, DEAD, SUSPECT, DetectorConfig, FailureDetector
from tcpsched.core.dispatch import (
    PLACEMENT_SKIPS_MAX,
    FreeWorkers,
    make_policy,
    unplaceable_reason,
)
from tcpsched.core.events import Close, Closed, Connected, Effect, Journal, Received, Tick
from tcpsched.core.groups import GroupIndex, GroupRequests
from tcpsched.core.jobqueue import JobQueue
from tcpsched.core.jobs import RETRYABLE_STATES, JobRecord, JobSpec, JobState
from tcpsched.core.leader_stats import leader_statistics
from tcpsched.core.liveside import LiveOutput
from tcpsched.core.node_events import EndOfTurn
from tcpsched.core.placement import Placements
from tcpsched.core.queries import (
    JOB_ID_PREFIX_MIN,
    OUTPUT_CHARS_PER_RECORD_MIN,
    REPLY_OUTPUT_CHARS,
    not_found_message,
    output_budget,
    resolve,
)
from tcpsched.core.reads import ReadRequests
from tcpsched.core.recovery import recover
from tcpsched.core.retention import RETENTION_CHECK_PERIOD_S, Retention
from tcpsched.core.schedule_side import LeaderSchedules
from tcpsched.core.scheduler_config import SchedulerConfig
from tcpsched.core.sides import Outbox, StepClock
from tcpsched.core.state import JobTable
from tcpsched.core.submissions import SUBMITS_PER_TURN, Submissions
from tcpsched.core.waiters import Waits
from tcpsched.core.workers import WorkerEntry
from tcpsched.core.workerside import WorkerProtocolSide, retry_delay

if TYPE_CHECKING:
    import random

STALL_LOGGED_S = 0.5  # a stall of the leader's loop this long is logged

log = logging.getLogger(__name__)

# Names other modules import from here; they live in the modules of their own idea.
__all__ = [
    "JOB_ID_PREFIX_MIN", "OUTPUT_CHARS_PER_RECORD_MIN", "REPLY_OUTPUT_CHARS",
    "RETENTION_CHECK_PERIOD_S", "SUBMITS_PER_TURN", "Scheduler", "SchedulerConfig", "WorkerEntry",
    "output_budget", "retry_delay",
]


class Scheduler:
    """The leader: owns the table's derived state and its sides; see the module docstring."""


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
        self.clock = StepClock(now, now if wall is None else wall)
        self.out = Outbox()
        self._effects = self.out.effects  # this step's effects, shared with the sides
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
        # An idle worker's heartbeat changes nothing `_advance`'s timed work or
        # `next_deadline()` depend on, so while only such heartbeats come in, both are known
        # from the last one (see `_idle_beat_step`); every other step forgets them.
        self._quiet_until: float | None = None  # nothing timed is due before this
        self._deadline_known = False  # `_deadline` is `next_deadline()`'s answer
        self._deadline: float | None = None
        # Pending jobs no live worker can run, out of the queue until a worker registers:
        # job id -> why (shown as the record's `reason`).
        self.parked: dict[str, str] = {}
        self._conn_roles: dict[int, str] = {}
        self._conn_addresses: dict[int, str] = {}
        self.waits = Waits()
        self.backlog = Backlog()
        self.reads = ReadRequests(
            table=self.table, backlog=self.backlog, waits=self.waits, clock=self.clock,
            out=self.out, list_limit_max=config.list_limit_max, reason=self.reason)
        self.retention = Retention(config.keep_finished, config.keep_finished_for_s, now,
                                   config.keep_output_chars)
        self.started_at = now
        self.extra_stats: dict[str, Any] = {}  # figures the shell adds (journal, connections)
        # Tails of running jobs' output and the clients following them (liveside.py).
        self.live = LiveOutput(self.table, self.clock, self.out)
        self.tails = self.live.tails
        self.admission = Admission(config.max_pending)
        self.breaker = CircuitBreaker(config.breaker)  # leader-local soft state (breaker.py)
        self.worker_side = WorkerProtocolSide(
            config=config, table=self.table, queue=self.queue, detector=self.detector,
            breaker=self.breaker, workers=self.workers, rng=rng, clock=self.clock, out=self.out,
            record=self._record, unpark=self._unpark, conn_addresses=self._conn_addresses,
        )  # fmt: skip
        self._conn_worker = self.worker_side.conn_worker
        self.placement = Placements(
            table=self.table, workers=self.workers, detector=self.detector, breaker=self.breaker,
            policy=self.policy, parked=self.parked, clock=self.clock, out=self.out,
            resolve=self.resolve,
        )  # fmt: skip
        self.dependencies = DependencyTracker(
            table=self.table, queue=self.queue, parked=self.parked, clock=self.clock,
            record=self._record)
        self.deps = self.dependencies.deps  # the index: child -> parents, parent -> children
        self.submissions = Submissions(
            table=self.table, queue=self.queue, admission=self.admission, backlog=self.backlog,
            deps=self.deps, rng=rng, clock=self.clock, out=self.out, record=self._record,
        )  # fmt: skip
        self.groups = GroupIndex()  # group -> its jobs' ids, kept by `_record`
        self.children = ChildrenRequests(table=self.table, backlog=self.backlog,
                                         resolve=self.resolve, out=self.out)
        self.group_requests = GroupRequests(
            table=self.table, backlog=self.backlog, groups=self.groups, clock=self.clock,
            out=self.out, cancel=self.cancel, retry=self.dependencies.retry,
            retry_problem=self.dependencies.retry_problem,
        )  # fmt: skip
        self._recover(now)
        self.schedules = LeaderSchedules(
            table=self.table, queue=self.queue, clock=self.clock, out=self.out,
            record=self._record, new_job_id=self.submissions.new_job_id)

    # -- recovery -------------------------------------------------------------------------------

    def _recover(self, now: float) -> None:
        """Rebuild the queue and the leader's indexes from the table (`core/recovery.py`)."""
        recover(table=self.table, queue=self.queue, dependencies=self.dependencies,
                groups=self.groups, workers=self.workers, detector=self.detector, now=now,
                wall=self._wall)

    # -- the sans-I/O interface ---------------------------------------------------------------

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Effect]:
        """One event at monotonic `now` (and Unix time `wall`, for the records' times)."""
        self._effects.clear()
        clock = self.clock  # not through the _now and _wall properties: a step per heartbeat
        clock.now = now
        clock.wall = now if wall is None else wall
        quiet_until, self._quiet_until, self._deadline_known = self._quiet_until, None, False
        stall_s = self.detector.loop_ran(now)
        if stall_s >= STALL_LOGGED_S:
            log.warning("leader loop stalled for %.2fs; not counted against any worker",
                        stall_s)
        if isinstance(event, Received):
            if self._on_message(event.conn, event.msg, now) and stall_s == 0.0:
                return self._idle_beat_step(now, quiet_until)
        elif isinstance(event, Connected):
            self._conn_roles[event.conn] = event.role
            self._conn_addresses[event.conn] = event.address
        elif isinstance(event, Closed):
            self._on_closed(event.conn, event.reason, now)
        elif isinstance(event, Tick):
            self.backlog.step()
        elif isinstance(event, EndOfTurn):
            self._dispatch_pass(now)  # the turn's one dispatch pass (core/node.py)
            return self.out.take()
        else:
            raise TypeError(f"unknown event {event!r}")
        self._advance(now)
        return self.out.take()

    def next_deadline(self) -> float | None:
        if self._deadline_known:
            return self._deadline
        return self._find_deadline()

    def _find_deadline(self) -> float | None:
        if self.backlog:
            return self._now  # queued work goes on at the next loop turn
        candidates = [
            self.detector.next_deadline(),
            self.queue.next_deadline(),
            self.waits.next_deadline(),
            self.live.next_deadline(),
            self.schedules.next_deadline(),
            self.breaker.next_deadline(),
        ]
        if self.table.finished_order and self.config.keep_finished_for_s is not None:
            candidates.append(self.retention.next_check)
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def statistics(self) -> dict[str, Any]:
        """What `stats` shows (`core/leader_stats.py`)."""
        return leader_statistics(
            table=self.table, workers=self.workers, detector=self.detector,
            breaker=self.breaker, admission=self.admission, config=self.config,
            policy=self.policy.name, now=self._now, workers_lost=self.worker_side.workers_lost,
            backlog=len(self.backlog), live_output_chars=self.tails.chars,
            extra=self.extra_stats,
        )  # fmt: skip

    # -- effects helpers --------------------------------------------------------------------------

    @property
    def _now(self) -> float:
        return self.clock.now

    @_now.setter
    def _now(self, now: float) -> None:
        self.clock.now = now

    @property
    def _wall(self) -> float:
        return self.clock.wall

    @_wall.setter
    def _wall(self, wall: float) -> None:
        self.clock.wall = wall

    def _send(self, conn: int | None, msg: Any) -> None:
        self.out.send(conn, msg)

    def _record(self, record: dict[str, Any], built: JobRecord | None = None) -> JobRecord | None:
        """The only path by which the table changes (every side is handed this as `record`):
        apply the record, journal it, and run the hooks of the indexes and sides it concerns
        (groups, dependencies, waits, live output)."""
        if self.groups.ids and record["op"] == "forget":
            self.groups.forget(self.table, record["ids"])
        job = self.table.apply(record, self._now, built)
        self._effects.append(Journal(record))
        if job is not None:
            if job.spec.group is not None and record["op"] == "submit":
                self.groups.add(job)
            if job.spec.after or self.deps.children:
                self.dependencies.changed(record, job)
        if job is not None and job.state.is_terminal:
            for waiter in self.waits.job_finished(job.id):
                self.reads.answer(waiter)
        if job is not None:
            self.live.on_record(job)
        return job

    def _reply(self, conn: int, req_id: int, value: Any) -> None:
        self.out.reply(conn, req_id, value)

    def _error(self, conn: int, req_id: int, kind: str, message: str) -> None:
        self.out.error(conn, req_id, kind, message)

    def tail_view(self, job: JobRecord, attempt: int | None,
                  offsets: tuple[int, int]) -> dict[str, Any]:
        """What a `tail` reader at `offsets` is shown (`LiveOutput.tail_view`)."""
        return self.live.tail_view(job, attempt, offsets)

    def worker_list(self) -> list[dict[str, Any]]:
        return self.worker_side.worker_list()

    def worker_state(self, name: str) -> str:
        return self.worker_side.worker_state(name)

    # -- connections ---------------------------------------------------------------------------

    def _on_closed(self, conn: int, reason: str, now: float) -> None:
        self._conn_roles.pop(conn, None)
        self._conn_addresses.pop(conn, None)
        self.waits.closed(conn)
        self.live.closed(conn)
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
            self.worker_side.declare_dead(entry, now, lost=False)
        elif self.detector.disconnected(name):
            log.info("worker=%s suspect: connection closed (%s)", name, reason)

    def _on_message(self, conn: int, msg: Any, now: float) -> bool:
        """Route one message; True if it was an idle worker's heartbeat that changed nothing
        (see `_idle_beat_step`)."""
        role = self._conn_roles.get(conn)
        kind = type(msg)
        if role == "client" and kind in m.CLIENT_REQUESTS:
            self._on_request(conn, msg, now)
        elif role == "worker" and kind in m.WORKER_TO_COORDINATOR:
            if kind is m.Register:
                self.worker_side.on_register(conn, msg, now)
                self._touched.add(msg.name)
                return False
            name = self._conn_worker.get(conn)
            if name is None:
                self._effects.append(Close(conn, f"{msg.TYPE} before register"))
                return False
            entry = self.workers[name]
            if kind is m.Heartbeat:
                # Most heartbeats change nothing that decides whether the worker is free: only
                # one that does is looked at again (1,000 idle workers send 2,000 a second).
                # Idle: nothing reported, nothing assigned or missing, so nothing to reconcile.
                idle = not msg.running and not entry.running and not entry.unreported
                before = (entry.held, len(entry.running), self.detector.state(name))
                self.worker_side.on_heartbeat(entry, msg, now)
                if (entry.held, len(entry.running), self.detector.state(name)) != before:
                    self._touched.add(name)
                    return False
                return idle
            self._touched.add(name)
            if kind is m.Output:
                self.live.on_output(entry, msg)
            elif kind is m.Result:
                self.worker_side.on_result(entry, msg, now)
                if entry.prefetch:
                    entry.lookahead_open = True  # closed again after this step's dispatch
                    self._lookaheads_open.append(entry)
            elif kind is m.HandBack:
                self.worker_side.on_hand_back(entry, msg, now)
            elif kind is m.Fenced:
                self.worker_side.on_fenced(entry, msg, now)
            elif kind is m.Draining:
                if not entry.draining:
                    log.info("worker=%s draining", name)
                entry.draining = True
                self.detector.heartbeat(name, now)
        else:
            self._effects.append(Close(conn, f"unexpected {msg.TYPE} from a {role} connection"))
        return False

    # -- client requests ------------------------------------------------------------------------

    def _on_request(self, conn: int, msg: Any, now: float) -> None:
        if isinstance(msg, m.Submit):
            self.submissions.on_submit(conn, msg, now)
        elif isinstance(msg, m.Status):
            self.backlog.run_or_queue(conn, self.reads.status_work(conn, msg))
        elif isinstance(msg, m.Wait):
            self.backlog.run_or_queue(conn, self.reads.wait_work(conn, msg))
        elif isinstance(msg, m.ListJobs):
            self.reads.on_list(conn, msg)
        elif isinstance(msg, m.Cancel):
            self._on_cancel(conn, msg, now)
        elif isinstance(msg, m.Tail):
            self.live.on_tail(conn, msg)
        elif isinstance(msg, m.GroupRequest):
            self.group_requests.on_group_request(conn, msg, now)
        elif isinstance(msg, m.Retry):
            self.group_requests.on_retry(conn, msg)
        elif isinstance(msg, m.Workers):
            self._reply(conn, msg.req_id, self.worker_list())
        elif isinstance(msg, m.Stats):
            self._reply(conn, msg.req_id, self.statistics())
        elif type(msg) in m.SCHEDULE_REQUESTS:
            self.schedules.on_request(conn, msg)
        elif isinstance(msg, m.Explain):
            self.placement.on_explain(conn, msg)
        elif isinstance(msg, m.Children):
            self.children.on_children(conn, msg)
        elif isinstance(msg, m.Leader):
            cfg = self.config
            self._reply(
                conn, msg.req_id, {"id": cfg.node_id, "address": cfg.address, "epoch": cfg.epoch}
            )

    def submit(self, spec: JobSpec, now: float) -> str:
        """Queue one job (or find the one its idempotency key already made); returns its id."""
        self._quiet_until, self._deadline_known = None, False  # a change outside `step`
        return self.submissions.submit(spec, now)

    def resolve(self, ref: str) -> JobRecord | None:
        """A job by id, or by an unambiguous id prefix of at least 4 characters."""
        return resolve(self.table, ref)

    def reason(self, job: JobRecord) -> str | None:
        """The record's `reason`: why a pending job does not run, why a job failed or was
        cancelled (a parent, "lost 3 workers"), or None."""
        if job.state is JobState.PENDING:
            return self.parked.get(job.id) or self.deps.reason(job.id)
        return job.error if job.state in RETRYABLE_STATES else None

    def _on_cancel(self, conn: int, msg: m.Cancel, now: float) -> None:
        job = self.resolve(msg.job_id)
        if job is None:
            self._error(conn, msg.req_id, "not_found", not_found_message(self.table, msg.job_id))
            return
        self.cancel(job, now)
        self._reply(conn, msg.req_id, self.table.jobs[job.id].to_public())

    def cancel(self, job: JobRecord, now: float) -> None:
        self._quiet_until, self._deadline_known = None, False  # maybe outside `step`
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

    def _idle_beat_step(self, now: float, quiet_until: float | None) -> list[Effect]:
        """The end of a step whose event was an idle worker's heartbeat that changed nothing
        (1,000 idle workers send 2,000 a second): the timed work of `_advance` is skipped
        while none of it is due, which is known from `next_deadline()` (the detector's
        checks, delayed jobs, waits, follows, cool-downs), the resync and the retention check;
        the heartbeat changed none of these, so the answer holds for the next such step too.
        Doomed children, or a schedule due by the wall clock, make it a full `_advance`, as a
        due deadline does; otherwise only admission's rate sample and whether a dispatch pass
        is due are left, and run as in `_advance`."""
        if quiet_until is None:
            deadline = self._find_deadline()
            quiet_until = self._resync_at if deadline is None else min(deadline, self._resync_at)
            if self.config.keep_finished_for_s is not None:
                quiet_until = min(quiet_until, self.retention.next_check)
            self._deadline = deadline
        if now >= quiet_until or self.dependencies.doomed or self.schedules.is_due():
            self._advance(now)
            return self.out.take()
        self._advance_untimed(now)
        if not self._effects:  # no dispatch pass placed a job (without dispatch_per_turn)
            self._quiet_until, self._deadline_known = quiet_until, True  # still as they were
        return self.out.take()

    def _advance_untimed(self, now: float) -> None:
        """What `_advance` does on every step, with nothing due (see `_idle_beat_step`)."""
        self.admission.observe(self.placement.started_total, now)
        if self.dispatch_per_turn:
            self.dispatch_due = bool(self._touched or len(self.queue) or self._lookaheads_open)
        else:
            self._dispatch_pass(now)

    def _advance(self, now: float) -> None:
        if self.dependencies.doomed:
            self.dependencies.cascade()  # children doomed while no leader acted (core/deps.py)
        deadline = self.detector.next_deadline()
        if deadline is not None and now >= deadline:
            for name, state in self.detector.check(now):
                self._touched.add(name)
                entry = self.workers[name]
                if state == DEAD:
                    self.worker_side.declare_dead(entry, now)
                elif state == SUSPECT:
                    log.info("worker=%s suspect: no heartbeat for %.1fs", name,
                             self.detector.silence(name, now))
        for waiter in self.waits.expire(now):
            self.reads.answer(waiter)
        self.live.advance(now)
        # Retention is inline, not a method of its own: this runs on every step.
        table = self.table
        ids = self.retention.due(table.finished_order, now, table.finished_output_chars,
                                 table.output_chars)
        if now >= self._resync_at:
            self._resync(now)
        self.admission.observe(self.placement.started_total, now)
        self._touched.update(self.breaker.due(now))
        if ids:
            self._record({"op": "forget", "ids": ids})
        self.schedules.fire_due()
        # Promote due delayed jobs even when no worker is free: otherwise next_deadline() stays
        # in the past and the shell's timer fires again at once, spinning until a slot frees.
        self.queue.promote(now)
        if self.dispatch_per_turn:
            # One pass at the turn's end (core/node.py), when it has something to do: jobs to
            # place, or workers whose freeness may have changed (the free set stays exact).
            self.dispatch_due = bool(self._touched or len(self.queue) or self._lookaheads_open)
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
        fresh = [(name, entry) for name, entry in self.workers.items()
                 if self._is_free(name, entry)]
        entries = self.free.entries
        # Rebuilt only if it differs: with 1,000 idle workers it never does, and rebuilding
        # (a sorted insert per worker, twice a second) cost more than the check.
        if len(fresh) != len(entries) or any(entries.get(name) is not entry
                                             for name, entry in fresh):
            self.free.clear()
            for name, entry in fresh:
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
            self.placement.place(job_id, entry, len(names))
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

