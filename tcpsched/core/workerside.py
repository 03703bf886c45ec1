"""The leader's side of the worker protocol, an object `Scheduler` owns (`worker_side`).

Theory of operation: a worker registers (naming the attempts it still runs), heartbeats (the
same list), reports each attempt's result, may hand an attempt back, and may drain. Every report
names an attempt; one that is not the job's current attempt on that worker is stale: it is
acknowledged, logged and ignored, and the worker is told to kill what it should not run. A
worker that registers again under its name is a new life of it: attempts its last life ran and
this one no longer reports were lost with it; but a second process under the name of a live
worker is refused (`workers.name_conflict`). Registering advertises what the worker runs, so a
job parked because nobody could run it is looked at again. A worker declared dead loses its
attempts: each goes back to the queue (keeping its place) or, after `poison_workers_max` lost
workers, fails.
A failed attempt retries after exponential backoff with full jitter while retries remain.

Fencing and reconciliation: a worker that refuses an order of ours because it has seen a higher
epoch answers `Fenced`; one that registers says the highest epoch it has seen. Either way, if
that epoch is above ours, this coordinator is behind its cluster: it logs why, cuts that
worker's connection rather than keep ordering it in vain, and emits `HigherEpoch` (a node steps
down; a coordinator alone adopts an epoch above it). A refused `Assign` never ran, so its
attempt goes back to the queue at once. And a leader checks each heartbeat against what it
believes the worker runs: an attempt the worker leaves out of `MISSING_BEATS_MAX` heartbeats in
a row, each arriving at least `MISSING_GRACE_BEATS` intervals after the assignment (time for the
`Assign` to get there), is lost and requeued like a lost worker's job. Without this, an
assignment the worker never took would stay `running` forever.

`WorkerProtocolSide` is given the scheduler's job table, queue, detector, breaker and worker
entries (shared, not copied), the step's clocks and outbox (`core/sides.py`), and two callables:
`record`, the scheduler's single `_record` path (the only way it changes the table, so every
change is journaled), and `unpark` (a registration may make parked jobs placeable). It owns the
connection -> worker map and the count of lost workers. The scheduler routes each worker
message to one of its `on_*` handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tcpsched.core import messages as m
from tcpsched.core.capabilities import Capabilities
from tcpsched.core.detector import DEAD
from tcpsched.core.events import Close, HigherEpoch
from tcpsched.core.jobs import JobState
from tcpsched.core.printable import worker_problem
from tcpsched.core.workers import (
    WorkerEntry,
    is_current,
    name_conflict,
    sort_reported,
    stale_reported,
    worker_rows,
    worker_state,
)

if TYPE_CHECKING:
    import random

    from tcpsched.core.breaker import CircuitBreaker
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.jobqueue import JobQueue
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.scheduler_config import SchedulerConfig
    from tcpsched.core.sides import Outbox, Record, StepClock
    from tcpsched.core.state import JobTable

# The scheduler logs its worker events under its own name, as before the split.
log = logging.getLogger("tcpsched.core.scheduler")

TRIPPED = "tripped"  # `workers` state of a worker whose circuit breaker is open
MISSING_GRACE_BEATS = 2  # heartbeat intervals an Assign gets to reach its worker
MISSING_BEATS_MAX = 2  # heartbeats in a row that leave an attempt out before it is lost: one
# may have been written before a resumed (SIGSTOPped) worker read the Assign behind it


def retry_delay(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(failures-1))]."""
    ceiling = min(cap_s, base_s * (2 ** max(failures - 1, 0)))
    return rng.uniform(0.0, ceiling)


class WorkerProtocolSide:
    """Handlers for what workers send, and for losing a worker (see the module docstring for
    what it is given)."""

    def __init__(
        self, *, config: SchedulerConfig, table: JobTable, queue: JobQueue,
        detector: FailureDetector, breaker: CircuitBreaker, workers: dict[str, WorkerEntry],
        rng: random.Random, clock: StepClock, out: Outbox, record: Record,
        unpark: Callable[[float], None], conn_addresses: dict[int, str],
    ) -> None:  # fmt: skip
        self.config = config
        self.table = table
        self.queue = queue
        self.detector = detector
        self.breaker = breaker
        self.workers = workers
        self._rng = rng
        self._clock = clock
        self._effects = out.effects
        self._send = out.send
        self._record = record
        self._unpark = unpark
        self._conn_addresses = conn_addresses  # conn -> peer address (the scheduler's)
        self.conn_worker: dict[int, str] = {}  # conn -> the worker registered on it
        self.workers_lost = 0

    @property
    def _now(self) -> float:
        """The monotonic clock of the current step."""
        return self._clock.now

    @property
    def _wall(self) -> float:
        """Unix time of the current step: only for the times records show."""
        return self._clock.wall

    def worker_state(self, name: str) -> str:
        return worker_state(self.workers[name], self.detector)

    def worker_list(self) -> list[dict[str, Any]]:
        rows = worker_rows(self.workers, self.detector, self._wall - self._now)
        breaker = self.breaker
        for row in rows:
            if row["state"] != DEAD and breaker.is_tripped(row["name"], self._now):
                row["state"] = TRIPPED
                row["reason"] = breaker.reason(row["name"])
        return rows

    def on_register(self, conn: int, msg: m.Register, now: float) -> None:
        if conn in self.conn_worker:
            self._effects.append(Close(conn, "register sent twice"))
            return
        if msg.epoch_seen > self.config.epoch:
            # It would refuse every order of ours: say so to both sides and let it go.
            reason = (f"worker {msg.name} has seen epoch {msg.epoch_seen}, above ours "
                      f"{self.config.epoch}")
            log.warning("node=%d epoch=%d is behind its cluster: %s; not registering it",
                        self.config.node_id, self.config.epoch, reason)
            self._send(conn, m.Refused(code="epoch", reason=f"coordinator is stale: {reason}"))
            self._effects.append(Close(conn, "worker has seen a higher epoch"))
            self._effects.append(HigherEpoch(msg.epoch_seen, reason))
            return
        problem = worker_problem(msg.name, msg.tags)
        if problem is not None:
            self._send(conn, m.Refused(code="name", reason=f"registration refused: {problem}"))
            self._effects.append(Close(conn, f"registration refused: {problem}"))
            return
        name = msg.name
        old = self.workers.get(name)
        conflict = name_conflict(old, conn, msg.incarnation, self.detector)
        if conflict is not None:
            log.warning("worker=%s: refused a second registration from %s: %s", name,
                        self._conn_addresses.get(conn, "?"), conflict)
            self._send(conn, m.Refused(code="name", reason=conflict))
            self._effects.append(Close(conn, "worker name in use"))
            return
        if old is not None and old.conn is not None and old.conn != conn:
            # Same name, new connection: the old one is a previous life of this worker.
            self.conn_worker.pop(old.conn, None)
            self._effects.append(Close(old.conn, f"worker {name} registered again"))
        was_dead = old is None or self.detector.state(name) == DEAD
        previous = dict(old.running) if old is not None and not was_dead else {}
        entry = WorkerEntry(
            name=name, conn=conn, slots=msg.slots, tags=msg.tags,
            address=self._conn_addresses.get(conn, ""), registered_at=now, draining=msg.draining,
            incarnation=msg.incarnation, prefetch=msg.prefetch,
            capabilities=Capabilities(allow_shell=msg.allow_shell, allow_call=msg.allow_call),
        )  # fmt: skip
        self.workers[name] = entry
        self.conn_worker[conn] = name
        self.detector.watch(name, now)
        entry.running, kill = sort_reported(name, msg.running, previous, self.table)
        for ref in kill:
            log.info("worker=%s job=%s attempt=%d is stale: told to kill it",
                     name, ref.job_id, ref.attempt)
        # Attempts we believed it ran but it no longer reports were lost with its last life:
        # it restarted before the timeout, which is a lost worker all the same.
        lost = {j: a for j, a in previous.items() if j not in entry.running}
        if lost:
            self.workers_lost += 1
            log.warning("worker=%s came back without %d job(s): lost with its last life",
                        name, len(lost))
        for job_id, attempt in lost.items():
            self._lose_attempt(job_id, attempt, name, now)
        limits = self.config.wire_limits
        self._send(conn, m.Registered(
            heartbeat_interval=self.config.heartbeat_interval_s, epoch=self.config.epoch,
            kill=tuple(kill), frame_bytes_max=limits.frame_bytes_max,
            array_items_max=limits.array_items_max, map_items_max=limits.map_items_max,
        ))  # fmt: skip
        self._unpark(now)
        log.info("worker=%s registered slots=%d running=%d%s", name, msg.slots,
                 len(entry.running), " (again)" if old is not None else "")

    def on_heartbeat(self, entry: WorkerEntry, msg: m.Heartbeat, now: float) -> None:
        if self.detector.heartbeat(entry.name, now):
            log.info("worker=%s alive again", entry.name)
        held = msg.held if msg.held < entry.slots else entry.slots  # min(), without its cost
        if held != entry.held:
            log.info("worker=%s holds %d slot(s) for stopped calls still running", entry.name,
                     held)
            entry.held = held
        if not msg.running and not entry.running and not entry.unreported:
            return  # an idle worker's: nothing to kill, nothing to reconcile
        for ref in stale_reported(entry, msg.running, self.table):
            self._send(entry.conn, m.Kill(job_id=ref.job_id, attempt=ref.attempt,
                                          reason="stale attempt", epoch=self.config.epoch))
        self._reconcile(entry, msg.running, now)

    def _reconcile(self, entry: WorkerEntry, reported: tuple[m.AttemptRef, ...],
                   now: float) -> None:
        """Lose the attempts this worker keeps leaving out of its heartbeats (see the module's
        theory of operation); results and hand-backs travel ahead of the heartbeat on the same
        connection, so an attempt that ended is already gone from `entry.running` here."""
        if not entry.running and not entry.unreported:
            return
        has = {ref.job_id: ref.attempt for ref in reported}
        grace_s = MISSING_GRACE_BEATS * self.config.heartbeat_interval_s
        unreported: dict[str, int] = {}
        lost = []
        for job_id, attempt in entry.running.items():
            if has.get(job_id) == attempt:
                continue
            assigned_at = entry.assigned_at.get(job_id)
            if assigned_at is not None and now - assigned_at < grace_s:
                continue
            beats = entry.unreported.get(job_id, 0) + 1
            if beats >= MISSING_BEATS_MAX:
                lost.append((job_id, attempt))
            else:
                unreported[job_id] = beats
        entry.unreported = unreported
        entry.assigned_at = {j: t for j, t in entry.assigned_at.items() if j in entry.running}
        for job_id, attempt in lost:
            del entry.running[job_id]
            entry.assigned_at.pop(job_id, None)
            log.warning("worker=%s job=%s attempt=%d: left out of %d heartbeats: lost",
                        entry.name, job_id, attempt, MISSING_BEATS_MAX)
            self._lose_attempt(job_id, attempt, entry.name, now)

    def on_fenced(self, entry: WorkerEntry, msg: m.Fenced, now: float) -> None:
        epoch = self.config.epoch
        log.warning("worker=%s refused %s job=%s attempt=%s of epoch %d: it has seen epoch %d "
                    "(ours %d)", entry.name, msg.order, msg.job_id, msg.attempt,
                    msg.order_epoch, msg.epoch, epoch)
        if msg.order == "assign" and msg.job_id is not None and msg.attempt is not None \
                and entry.running.get(msg.job_id) == msg.attempt:
            # Refused, so never started: back to the queue, as if handed back.
            del entry.running[msg.job_id]
            self._requeue_handed_back(msg.job_id, msg.attempt, f"refused by {entry.name}: "
                                  f"assigned in epoch {msg.order_epoch}, it has seen {msg.epoch}")
        if msg.epoch > epoch and entry.conn is not None:
            reason = f"worker {entry.name} has seen epoch {msg.epoch}, above ours {epoch}"
            log.warning("node=%d epoch=%d is behind its cluster: %s; closing its connection",
                        self.config.node_id, epoch, reason)
            # Detached at once, so nothing more is dispatched to it in vain; what it runs stays
            # assigned, for it to report when it registers again.
            self.conn_worker.pop(entry.conn, None)
            self._effects.append(Close(entry.conn, "worker has seen a higher epoch"))
            entry.conn = None
            self.detector.disconnected(entry.name)
            self._effects.append(HigherEpoch(msg.epoch, reason))

    def _requeue_handed_back(self, job_id: str, attempt: int, error: str) -> None:
        job = self.table.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempts != attempt:
            return
        self._record({"op": "requeue", "id": job.id, "reason": "handed_back", "error": error})
        self.queue.push(job.id, job.spec.priority, job.seq)
        log.info("job=%s attempt=%d requeued: %s", job.id, attempt, error)

    def on_result(self, entry: WorkerEntry, msg: m.Result, now: float) -> None:
        self._send(entry.conn, m.ResultAck(job_id=msg.job_id, attempt=msg.attempt,
                                           epoch=self.config.epoch))
        self.detector.heartbeat(entry.name, now)
        if entry.running.get(msg.job_id) == msg.attempt:
            del entry.running[msg.job_id]
        job = self.table.get(msg.job_id)
        # `is_current`, spelled out: this runs for every result.
        if (
            job is None or job.state is not JobState.RUNNING
            or job.attempts != msg.attempt or job.worker != entry.name
        ):
            log.info("worker=%s job=%s attempt=%d: stale result ignored (%s)", entry.name,
                     msg.job_id, msg.attempt, "unknown job" if job is None else job.state.value)
            return
        outcome = {
            "exit_code": msg.exit_code, "stdout": msg.stdout, "stderr": msg.stderr,
            "error": msg.error,
        }  # fmt: skip
        self._judge_worker(entry, job, msg.state == "succeeded", now)
        if msg.state != "cancelled":  # a cancelled attempt may have been killed unstarted
            entry.job_time.add(msg.started_at, msg.finished_at)
        if msg.state == "succeeded":
            self._record({"op": "finish", "id": job.id, "attempt": msg.attempt,
                          "state": "succeeded", "at": self._wall, "started_at": msg.started_at,
                          "finished_at": msg.finished_at,
                          "result": msg.result, **outcome})
            return
        failures = job.failures + 1
        if failures <= job.spec.retries:
            delay = retry_delay(failures, self.config.retry_base_s, self.config.retry_cap_s,
                                self._rng)
            self._record({"op": "requeue", "id": job.id, "reason": "failed",
                          "not_before": self._wall + delay, **outcome})
            self.queue.push(job.id, job.spec.priority, job.seq, now + delay)
            log.info("job=%s attempt=%d failed (%s); retry %d/%d in %.2fs", job.id, msg.attempt,
                     msg.error or f"exit {msg.exit_code}", failures, job.spec.retries, delay)
        else:
            self._record({"op": "finish", "id": job.id, "attempt": msg.attempt,
                          "state": "failed", "at": self._wall, "started_at": msg.started_at,
                          "finished_at": msg.finished_at,
                          "result": msg.result, **outcome})

    def _judge_worker(self, entry: WorkerEntry, job: JobRecord, ok: bool, now: float) -> None:
        """Tell the circuit breaker how the attempt went on this worker (`core/breaker.py`)."""
        signature = job.spec.function or job.spec.command or ""
        if ok:
            if self.breaker.succeeded(entry.name, job.id, signature):
                log.info("worker=%s circuit closed: job=%s succeeded on it", entry.name, job.id)
            return
        reason = self.breaker.failed(entry.name, job.id, signature, now)
        if reason is not None:
            log.warning("worker=%s tripped for %.0fs: %s", entry.name,
                        (self.breaker.until(entry.name) or now) - now, reason)

    def on_hand_back(self, entry: WorkerEntry, msg: m.HandBack, now: float) -> None:
        if entry.running.get(msg.job_id) != msg.attempt:
            return
        del entry.running[msg.job_id]
        self.breaker.released(entry.name, msg.job_id)
        self._requeue_handed_back(msg.job_id, msg.attempt,
                              f"handed back by {entry.name}: {msg.reason}")

    def _lose_attempt(self, job_id: str, attempt: int, worker: str, now: float) -> None:
        job = self.table.get(job_id)
        if job is None or not is_current(job, attempt, worker):
            return
        lost = job.lost_workers + 1
        if lost >= self.config.poison_workers_max:
            self._record({"op": "finish", "id": job.id, "attempt": attempt, "state": "failed",
                          "at": self._wall, "lost": True, "poisoned": True,
                          "error": f"lost {lost} workers"})
            log.warning("job=%s failed: lost %d workers (poison job)", job.id, lost)
        else:
            self._record({"op": "requeue", "id": job.id, "reason": "lost",
                          "error": f"worker {worker} lost"})
            self.queue.push(job.id, job.spec.priority, job.seq)
            log.info("job=%s attempt=%d lost with worker=%s; requeued", job.id, attempt, worker)

    def declare_dead(self, entry: WorkerEntry, now: float, *, lost: bool = True) -> None:
        if lost:
            self.workers_lost += 1
            log.warning("worker=%s dead: no heartbeat for %.1fs; %d job(s) to reassign",
                        entry.name, self.config.heartbeat_timeout_s, len(entry.running))
        entry.last_heartbeat_at = (self.detector.last_heartbeat(entry.name)
                                   or entry.last_heartbeat_at)
        self.detector.forget(entry.name)
        entry.dead_at = now
        running, entry.running = entry.running, {}
        for job_id, attempt in running.items():
            self.breaker.released(entry.name, job_id)
            self._lose_attempt(job_id, attempt, entry.name, now)
        if entry.conn is not None:
            # A hung worker may still hold its connection; cut it so that, if it wakes up,
            # it reconnects, re-registers, and is told to kill what it no longer owns.
            self.conn_worker.pop(entry.conn, None)
            self._effects.append(Close(entry.conn, "declared dead"))
            entry.conn = None
