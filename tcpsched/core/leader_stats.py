"""The leader's `stats` reply, computed from the pieces the scheduler hands over."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcpsched.core.detector import ALIVE, DEAD, SUSPECT
from tcpsched.core.workers import DRAINING, worker_state

if TYPE_CHECKING:
    from tcpsched.core.backpressure import Admission
    from tcpsched.core.breaker import CircuitBreaker
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.scheduler_config import SchedulerConfig
    from tcpsched.core.state import JobTable
    from tcpsched.core.workers import WorkerEntry


def leader_statistics(
    *, table: JobTable, workers: dict[str, WorkerEntry], detector: FailureDetector,
    breaker: CircuitBreaker, admission: Admission, config: SchedulerConfig, policy: str,
    now: float, workers_lost: int, backlog: int, live_output_chars: int, extra: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The leader's figures: jobs by state and counters from the table, workers by state,
    breaker and admission figures, and what the shell adds (`extra`)."""
    t = table.statistics()
    states = [worker_state(entry, detector) for entry in workers.values()]
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
        "workers_tripped": breaker.tripped_count(now),
        "breaker_trips": breaker.trips,
        "max_pending": admission.max_pending,
        "refused_submits": admission.refused_batches,
        "refused_jobs": admission.refused_jobs,
        "slots_total": sum(
            w.slots for w in workers.values() if worker_state(w, detector) == ALIVE
        ),
        "leader": config.node_id,
        "epoch": config.epoch,
        "policy": policy,
        "submitted": t.submitted,
        "finished": table.counters.get("finished", 0),
        "reassigned": t.reassigned,
        "retried": t.retried,
        "poisoned": t.poisoned,
        "handed_back": t.handed_back,
        "workers_lost": workers_lost,
        "jobs_in_memory": len(table),
        "loop_stall_max_s": round(detector.stall_max_s, 3),
        "backlog": backlog,
        "live_output_chars": live_output_chars,
        **extra,
    }
