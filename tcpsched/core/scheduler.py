"""The leader's brain: job table + queue + placement + failure detector, as effects.

Theory of operation: the shell feeds `step(event, now)` every connection event and calls it
with `Tick` at `next_deadline()`. Each step may change the job table, only ever through
`_record(...)`, which applies a journal record to the table and emits it as a `Journal` effect;
then `_advance(now)` lets time act (the detector declares workers suspect or dead, delayed jobs
become ready, waits time out, old finished jobs are forgotten) and hands ready jobs to workers
with free slots, in queue order, through the placement policy.

Attempts: starting a job increments `attempts`; a worker names the attempt in everything it
reports, and anything about an attempt that is not the job's current one on that worker is
stale: it is acknowledged, logged and ignored. A worker declared dead loses its attempts: each
goes back to the queue (keeping its place) or, after `poison_workers_max` lost workers, fails.
A failed attempt retries after exponential backoff with full jitter while retries remain.

`now` is Unix time in seconds, passed in; randomness comes from the injected `random.Random`.
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.detector import ALIVE, DEAD, SUSPECT, DetectorConfig, FailureDetector
from tcpsched.core.dispatch import make_policy
from tcpsched.core.events import Close, Closed, Connected, Effect, Journal, Received, Send, Tick
from tcpsched.core.jobqueue import JobQueue
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.state import JobTable, job_to_dict

if TYPE_CHECKING:
    import random

log = logging.getLogger(__name__)

JOB_ID_PREFIX_MIN = 4
# Replies that carry many records share this much room for their jobs' stdout and stderr, so
# a `list` or `wait` of many chatty jobs stays far below the frame limit.
REPLY_OUTPUT_CHARS = 4 * 1024 * 1024
OUTPUT_CHARS_PER_RECORD_MIN = 1024


def output_budget(records: int) -> int:
    """Characters of stdout (and of stderr) each record of a multi-record reply may carry."""
    return max(OUTPUT_CHARS_PER_RECORD_MIN, REPLY_OUTPUT_CHARS // max(2 * records, 1))
RETENTION_CHECK_PERIOD_S = 1.0


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
    dead_workers_kept_s: float = 600.0
    list_limit_max: int = 100_000


def retry_delay(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(failures-1))]."""
    ceiling = min(cap_s, base_s * (2 ** max(failures - 1, 0)))
    return rng.uniform(0.0, ceiling)


@attrs.define
class WorkerEntry:
    """What the leader knows of one worker; `running` maps job id to the attempt it runs."""

    name: str
    conn: int | None
    slots: int
    tags: tuple[str, ...]
    address: str
    registered_at: float
    running: dict[str, int] = attrs.field(factory=dict)
    draining: bool = False
    dead_at: float | None = None

    def free_slots(self) -> int:
        return self.slots - len(self.running)


@attrs.define(eq=False)
class _Waiter:
    conn: int
    req_id: int
    job_ids: tuple[str, ...]
    remaining: set[str]
    deadline: float | None
    done: bool = False


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        rng: random.Random,
        now: float,
        table: JobTable | None = None,
    ) -> None:
        self.config = config
        self._rng = rng
        self.table = table if table is not None else JobTable()
        self.queue = JobQueue()
        self.policy = make_policy(config.policy, rng)
        self.detector = FailureDetector(
            DetectorConfig(config.heartbeat_interval_s, config.heartbeat_timeout_s)
        )
        self.workers: dict[str, WorkerEntry] = {}
        self._conn_roles: dict[int, str] = {}
        self._conn_addresses: dict[int, str] = {}
        self._conn_worker: dict[int, str] = {}
        self._waiters_by_job: dict[str, list[_Waiter]] = {}
        self._waiters_by_conn: dict[int, list[_Waiter]] = {}
        self._waiter_deadlines: list[tuple[float, int, _Waiter]] = []
        self._waiter_seq = 0
        self._next_retention_check = now + RETENTION_CHECK_PERIOD_S
        self._effects: list[Effect] = []
        self.workers_lost = 0
        self.started_at = now
        self.extra_stats: dict[str, Any] = {}  # figures the shell adds (journal, connections)
        self._recover(now)

    # -- recovery -------------------------------------------------------------------------------

    def _recover(self, now: float) -> None:
        """Rebuild the queue from the table; running jobs wait for their worker to come back.

        A worker that held running jobs when the leader stopped gets `heartbeat_timeout_s` to
        re-register with them; until then it is a suspect placeholder, and then it is dead and
        its jobs are requeued like any lost worker's.
        """
        jobs = self.table.jobs.values()
        pending_state = JobState.PENDING
        # One comprehension over a million jobs costs half what the same loop does.
        self.queue.load([(j.id, j.spec.priority, j.seq, j.not_before)
                         for j in jobs if j.state is pending_state])
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

    def step(self, event: Any, now: float) -> list[Effect]:
        self._effects = []
        if isinstance(event, Received):
            self._on_message(event.conn, event.msg, now)
        elif isinstance(event, Connected):
            self._conn_roles[event.conn] = event.role
            self._conn_addresses[event.conn] = event.address
        elif isinstance(event, Closed):
            self._on_closed(event.conn, event.reason, now)
        elif not isinstance(event, Tick):
            raise TypeError(f"unknown event {event!r}")
        self._advance(now)
        effects, self._effects = self._effects, []
        return effects

    def next_deadline(self) -> float | None:
        candidates = [
            self.detector.next_deadline(),
            self.queue.next_deadline(),
            self._next_waiter_deadline(),
        ]
        if self.table.finished_order and self.config.keep_finished_for_s is not None:
            candidates.append(self._next_retention_check)
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def statistics(self) -> dict[str, Any]:
        t = self.table.statistics()
        states = [self.worker_state(name) for name in self.workers]
        return {
            "pending": t.pending,
            "running": t.running,
            "succeeded": t.succeeded,
            "failed": t.failed,
            "cancelled": t.cancelled,
            "workers_alive": states.count(ALIVE),
            "workers_suspect": states.count(SUSPECT),
            "workers_draining": states.count("draining"),
            "workers_dead": states.count(DEAD),
            "slots_total": sum(
                w.slots for n, w in self.workers.items() if self.worker_state(n) == ALIVE
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
            **self.extra_stats,
        }

    # -- effects helpers --------------------------------------------------------------------------

    def _send(self, conn: int | None, msg: Any) -> None:
        if conn is not None:
            self._effects.append(Send(conn, msg))

    def _record(self, record: dict[str, Any]) -> JobRecord | None:
        job = self.table.apply(record)
        self._effects.append(Journal(record))
        if job is not None and job.state.is_terminal:
            self._job_finished(job)
        return job

    def _reply(self, conn: int, req_id: int, value: Any) -> None:
        self._send(conn, m.Reply(req_id=req_id, value=value))

    def _error(self, conn: int, req_id: int, kind: str, message: str) -> None:
        self._send(conn, m.ErrorReply(req_id=req_id, kind=kind, message=message))

    # -- connections ---------------------------------------------------------------------------

    def _on_closed(self, conn: int, reason: str, now: float) -> None:
        self._conn_roles.pop(conn, None)
        self._conn_addresses.pop(conn, None)
        for waiter in self._waiters_by_conn.pop(conn, []):
            waiter.done = True
        name = self._conn_worker.pop(conn, None)
        if name is None:
            return
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
                return
            name = self._conn_worker.get(conn)
            if name is None:
                self._effects.append(Close(conn, f"{msg.TYPE} before register"))
                return
            entry = self.workers[name]
            if kind is m.Heartbeat:
                self._on_heartbeat(entry, msg, now)
            elif kind is m.Result:
                self._on_result(entry, msg, now)
            elif kind is m.HandBack:
                self._on_hand_back(entry, msg, now)
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
            jobs = self._resolve_all(conn, msg.req_id, msg.job_ids)
            if jobs is not None:
                self._reply(conn, msg.req_id, [job.to_public() for job in jobs])
        elif isinstance(msg, m.Wait):
            self._on_wait(conn, msg, now)
        elif isinstance(msg, m.ListJobs):
            self._on_list(conn, msg)
        elif isinstance(msg, m.Cancel):
            self._on_cancel(conn, msg, now)
        elif isinstance(msg, m.Workers):
            self._reply(conn, msg.req_id, self.worker_list())
        elif isinstance(msg, m.Stats):
            self._reply(conn, msg.req_id, self.statistics())
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
        for spec in msg.jobs:
            if spec.after or spec.tags:
                self._error(conn, msg.req_id, "bad_request",
                            "job dependencies (after) and tag routing are not supported yet")
                return
        ids = []
        for spec in msg.jobs:
            ids.append(self.submit(spec, now))
        self._reply(conn, msg.req_id, ids)

    def submit(self, spec: JobSpec, now: float) -> str:
        """Queue one job (or find the one its idempotency key already made); returns its id."""
        if spec.key is not None:
            existing = self.table.keys.get(spec.key)
            if existing is not None:
                return existing
        job = JobRecord(
            id=self._new_job_id(), seq=self.table.next_seq, spec=spec, submitted_at=now,
            not_before=now + spec.delay if spec.delay > 0 else 0.0,
        )  # fmt: skip
        self._record({"op": "submit", "job": job_to_dict(job)})
        self.queue.push(job.id, spec.priority, job.seq, job.not_before)
        return job.id

    def resolve(self, ref: str) -> JobRecord | None:
        """A job by id, or by an unambiguous id prefix of at least 4 characters."""
        job = self.table.get(ref)
        if job is not None or len(ref) < JOB_ID_PREFIX_MIN:
            return job
        found = [j for j_id, j in self.table.jobs.items() if j_id.startswith(ref)]
        return found[0] if len(found) == 1 else None

    def _resolve_all(self, conn: int, req_id: int, refs: tuple[str, ...]) -> list[JobRecord] | None:
        jobs = []
        for ref in refs:
            job = self.resolve(ref)
            if job is None:
                self._error(conn, req_id, "not_found", f"no job {ref!r}")
                return None
            jobs.append(job)
        return jobs

    def _on_wait(self, conn: int, msg: m.Wait, now: float) -> None:
        jobs = self._resolve_all(conn, msg.req_id, msg.job_ids)
        if jobs is None:
            return
        remaining = {job.id for job in jobs if not job.state.is_terminal}
        ids = tuple(job.id for job in jobs)
        if not remaining or (msg.timeout is not None and msg.timeout <= 0):
            budget = output_budget(len(jobs))
            self._reply(conn, msg.req_id, [job.to_public(budget) for job in jobs])
            return
        deadline = now + msg.timeout if msg.timeout is not None else None
        waiter = _Waiter(conn, msg.req_id, ids, remaining, deadline)
        for job_id in remaining:
            self._waiters_by_job.setdefault(job_id, []).append(waiter)
        self._waiters_by_conn.setdefault(conn, []).append(waiter)
        if deadline is not None:
            self._waiter_seq += 1
            heapq.heappush(self._waiter_deadlines, (deadline, self._waiter_seq, waiter))

    def _finish_waiter(self, waiter: _Waiter) -> None:
        waiter.done = True
        records = []
        budget = output_budget(len(waiter.job_ids))
        for job_id in waiter.job_ids:
            job = self.table.get(job_id)
            records.append(job.to_public(budget) if job is not None else {"id": job_id,
                                                                   "state": "forgotten"})
        self._reply(waiter.conn, waiter.req_id, records)
        conn_waiters = self._waiters_by_conn.get(waiter.conn)
        if conn_waiters is not None:
            conn_waiters.remove(waiter)
            if not conn_waiters:
                del self._waiters_by_conn[waiter.conn]

    def _next_waiter_deadline(self) -> float | None:
        heap = self._waiter_deadlines
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _job_finished(self, job: JobRecord) -> None:
        for waiter in self._waiters_by_job.pop(job.id, ()):
            if waiter.done:
                continue
            waiter.remaining.discard(job.id)
            if not waiter.remaining:
                self._finish_waiter(waiter)

    def _on_list(self, conn: int, msg: m.ListJobs) -> None:
        if msg.state is not None and msg.state not in JobState.__members__.values():
            states = ", ".join(s.value for s in JobState)
            self._error(conn, msg.req_id, "bad_request",
                        f"unknown state {msg.state!r}; choose one of {states}")
            return
        limit = min(msg.limit, self.config.list_limit_max)
        budget = output_budget(limit)
        out = []
        if limit > 0:
            for job in self.table.newest_first():
                if msg.state is None or job.state.value == msg.state:
                    out.append(job.to_public(budget))
                    if len(out) >= limit:
                        break
        self._reply(conn, msg.req_id, out)

    def _on_cancel(self, conn: int, msg: m.Cancel, now: float) -> None:
        job = self.resolve(msg.job_id)
        if job is None:
            self._error(conn, msg.req_id, "not_found", f"no job {msg.job_id!r}")
            return
        self.cancel(job, now)
        self._reply(conn, msg.req_id, self.table.jobs[job.id].to_public())

    def cancel(self, job: JobRecord, now: float) -> None:
        if job.state is JobState.PENDING:
            self.queue.remove(job.id)
            self._record({"op": "cancel", "id": job.id, "at": now})
            log.info("job=%s cancelled while pending", job.id)
        elif job.state is JobState.RUNNING:
            self._record({"op": "cancel", "id": job.id, "at": now})
            entry = self.workers.get(job.worker or "")
            if entry is not None:
                self._send(entry.conn, m.Kill(job_id=job.id, attempt=job.attempts,
                                              reason="cancelled"))
            log.info("job=%s cancelled while running on worker=%s", job.id, job.worker)

    # -- workers --------------------------------------------------------------------------------

    def worker_state(self, name: str) -> str:
        entry = self.workers[name]
        state = self.detector.state(name)
        if state != DEAD and entry.draining:
            return "draining"
        return state

    def worker_list(self) -> list[dict[str, Any]]:
        return [
            {
                "name": entry.name,
                "address": entry.address,
                "slots": entry.slots,
                "running": len(entry.running),
                "tags": list(entry.tags),
                "state": self.worker_state(name),
                "last_heartbeat": self.detector.last_heartbeat(name) or entry.dead_at,
            }
            for name, entry in sorted(self.workers.items())
        ]

    def _on_register(self, conn: int, msg: m.Register, now: float) -> None:
        if conn in self._conn_worker:
            self._effects.append(Close(conn, "register sent twice"))
            return
        name = msg.name
        old = self.workers.get(name)
        if old is not None and old.conn is not None and old.conn != conn:
            # Same name, new connection: the old one is a previous life of this worker.
            self._conn_worker.pop(old.conn, None)
            self._effects.append(Close(old.conn, f"worker {name} registered again"))
        was_dead = old is None or self.detector.state(name) == DEAD
        previous = dict(old.running) if old is not None and not was_dead else {}
        entry = WorkerEntry(
            name=name, conn=conn, slots=msg.slots, tags=msg.tags,
            address=self._conn_addresses.get(conn, ""), registered_at=now, draining=msg.draining,
        )  # fmt: skip
        self.workers[name] = entry
        self._conn_worker[conn] = name
        self.detector.watch(name, now)
        kill = []
        for ref in msg.running:
            job = self.table.get(ref.job_id)
            if (
                job is not None and job.state is JobState.RUNNING and job.worker == name
                and job.attempts == ref.attempt and previous.get(ref.job_id) == ref.attempt
            ):
                entry.running[ref.job_id] = ref.attempt
            else:
                kill.append(ref)
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
        self._send(conn, m.Registered(
            heartbeat_interval=self.config.heartbeat_interval_s, epoch=self.config.epoch,
            kill=tuple(kill),
        ))  # fmt: skip
        log.info("worker=%s registered slots=%d running=%d%s", name, msg.slots,
                 len(entry.running), " (again)" if old is not None else "")

    def _on_heartbeat(self, entry: WorkerEntry, msg: m.Heartbeat, now: float) -> None:
        if self.detector.heartbeat(entry.name, now):
            log.info("worker=%s alive again", entry.name)
        for ref in msg.running:
            if entry.running.get(ref.job_id) != ref.attempt:
                job = self.table.get(ref.job_id)
                # A job we just assigned may race a heartbeat; only attempts we no longer
                # want (an older attempt, or a job that moved on) are killed.
                if job is None or job.attempts != ref.attempt or job.worker != entry.name \
                        or job.state is not JobState.RUNNING:
                    self._send(entry.conn, m.Kill(job_id=ref.job_id, attempt=ref.attempt,
                                                  reason="stale attempt"))

    def _on_result(self, entry: WorkerEntry, msg: m.Result, now: float) -> None:
        self._send(entry.conn, m.ResultAck(job_id=msg.job_id, attempt=msg.attempt))
        self.detector.heartbeat(entry.name, now)
        if entry.running.get(msg.job_id) == msg.attempt:
            del entry.running[msg.job_id]
        job = self.table.get(msg.job_id)
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
        if msg.state == "succeeded":
            self._record({"op": "finish", "id": job.id, "attempt": msg.attempt,
                          "state": "succeeded", "at": now, "started_at": msg.started_at,
                          "result": msg.result, **outcome})
            return
        failures = job.failures + 1
        if failures <= job.spec.retries:
            delay = retry_delay(failures, self.config.retry_base_s, self.config.retry_cap_s,
                                self._rng)
            self._record({"op": "requeue", "id": job.id, "reason": "failed",
                          "not_before": now + delay, **outcome})
            self.queue.push(job.id, job.spec.priority, job.seq, now + delay)
            log.info("job=%s attempt=%d failed (%s); retry %d/%d in %.2fs", job.id, msg.attempt,
                     msg.error or f"exit {msg.exit_code}", failures, job.spec.retries, delay)
        else:
            self._record({"op": "finish", "id": job.id, "attempt": msg.attempt,
                          "state": "failed", "at": now, "started_at": msg.started_at,
                          "result": msg.result, **outcome})

    def _on_hand_back(self, entry: WorkerEntry, msg: m.HandBack, now: float) -> None:
        if entry.running.get(msg.job_id) != msg.attempt:
            return
        del entry.running[msg.job_id]
        job = self.table.get(msg.job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempts != msg.attempt:
            return
        self._record({"op": "requeue", "id": job.id, "reason": "handed_back",
                      "error": f"handed back by {entry.name}: {msg.reason}"})
        self.queue.push(job.id, job.spec.priority, job.seq)
        log.info("job=%s handed back by worker=%s; requeued", job.id, entry.name)

    def _lose_attempt(self, job_id: str, attempt: int, worker: str, now: float) -> None:
        job = self.table.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempts != attempt \
                or job.worker != worker:
            return
        lost = job.lost_workers + 1
        if lost >= self.config.poison_workers_max:
            self._record({"op": "finish", "id": job.id, "attempt": attempt, "state": "failed",
                          "at": now, "lost": True, "poisoned": True,
                          "error": f"lost {lost} workers"})
            log.warning("job=%s failed: lost %d workers (poison job)", job.id, lost)
        else:
            self._record({"op": "requeue", "id": job.id, "reason": "lost",
                          "error": f"worker {worker} lost"})
            self.queue.push(job.id, job.spec.priority, job.seq)
            log.info("job=%s attempt=%d lost with worker=%s; requeued", job.id, attempt, worker)

    def _declare_dead(self, entry: WorkerEntry, now: float, *, lost: bool = True) -> None:
        if lost:
            self.workers_lost += 1
            log.warning("worker=%s dead: no heartbeat for %.1fs; %d job(s) to reassign",
                        entry.name, self.config.heartbeat_timeout_s, len(entry.running))
        self.detector.forget(entry.name)
        entry.dead_at = now
        running, entry.running = entry.running, {}
        for job_id, attempt in running.items():
            self._lose_attempt(job_id, attempt, entry.name, now)
        if entry.conn is not None:
            # A hung worker may still hold its connection; cut it so that, if it wakes up,
            # it reconnects, re-registers, and is told to kill what it no longer owns.
            self._conn_worker.pop(entry.conn, None)
            self._effects.append(Close(entry.conn, "declared dead"))
            entry.conn = None

    # -- time and dispatch ----------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        deadline = self.detector.next_deadline()
        if deadline is not None and now >= deadline:
            for name, state in self.detector.check(now):
                entry = self.workers[name]
                if state == DEAD:
                    self._declare_dead(entry, now)
                elif state == SUSPECT:
                    log.info("worker=%s suspect: no heartbeat for %.1fs", name,
                             now - (self.detector.last_heartbeat(name) or now))
        self._expire_waiters(now)
        self._apply_retention(now)
        # Promote due delayed jobs even when no worker is free: otherwise next_deadline() stays
        # in the past and the shell's timer fires again at once, spinning until a slot frees.
        self.queue.promote(now)
        self._dispatch(now)

    def _expire_waiters(self, now: float) -> None:
        heap = self._waiter_deadlines
        while heap and (heap[0][2].done or heap[0][0] <= now):
            _, _, waiter = heapq.heappop(heap)
            if not waiter.done:
                self._finish_waiter(waiter)

    def _dispatch(self, now: float) -> None:
        queue = self.queue
        if not len(queue):
            return
        free = {
            name: entry for name, entry in self.workers.items()
            if entry.conn is not None and not entry.draining and entry.free_slots() > 0
            and self.detector.state(name) == ALIVE
        }  # fmt: skip
        while free:
            job_id = queue.pop(now)
            if job_id is None:
                return
            load = {name: len(e.running) / e.slots for name, e in free.items()}
            name = self.policy.choose(list(free), load)
            entry = free[name]
            self._start(job_id, entry, now)
            if entry.free_slots() <= 0:
                del free[name]

    def _start(self, job_id: str, entry: WorkerEntry, now: float) -> None:
        job = self.table.jobs[job_id]
        attempt = job.attempts + 1
        self._record({"op": "start", "id": job_id, "attempt": attempt, "worker": entry.name,
                      "at": now})
        entry.running[job_id] = attempt
        spec = job.spec
        self._send(entry.conn, m.Assign(
            job_id=job_id, attempt=attempt, epoch=self.config.epoch, kind=spec.kind,
            command=spec.command, function=spec.function, args=spec.args, kwargs=spec.kwargs,
            timeout=spec.timeout,
        ))  # fmt: skip

    def _apply_retention(self, now: float) -> None:
        cfg = self.config
        finished = self.table.finished_order
        excess = len(finished) - cfg.keep_finished
        ids: list[str] = []
        if excess > max(1, cfg.keep_finished // 100):
            # Forget in batches (1% slack), so a busy cluster writes one record per batch.
            ids = [job_id for job_id, _ in zip(finished, range(excess), strict=False)]
        if cfg.keep_finished_for_s is not None and now >= self._next_retention_check:
            self._next_retention_check = now + RETENTION_CHECK_PERIOD_S
            horizon = now - cfg.keep_finished_for_s
            skip = len(ids)
            for i, (job_id, finished_at) in enumerate(finished.items()):
                if i < skip:
                    continue
                if finished_at > horizon:
                    break
                ids.append(job_id)
        for name, entry in list(self.workers.items()):
            if entry.dead_at is not None and now - entry.dead_at > cfg.dead_workers_kept_s \
                    and entry.conn is None:
                del self.workers[name]
        if ids:
            self._record({"op": "forget", "ids": ids})
