"""Backpressure: the pending queue is bounded, and a submit that does not fit is refused whole.

Theory of operation: the leader admits a submit batch only if every new job in it fits under
`max_pending` together with the jobs already pending and those of batches admitted but still
being recorded (a big batch is recorded over several loop turns, `core/backlog.py`, so the
table's pending count alone would let two such batches in at once). Jobs whose idempotency key
already names a job are resends, not new, and take no room: a client resending after a failover
gets its ids back even when the queue is full. A refused batch records nothing (never half
accepted) and is answered `queue_full` with a retry-after hint: the time the cluster needs, at
the rate it has been starting jobs, to make room for the batch (or for a tenth of the queue,
if less: the client resends a refused batch as halves), within
[RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S] (RETRY_AFTER_UNKNOWN_S while no rate is known). The
client backs off and resends by itself.

Sizing the default: a small pending job (a short shell command with an idempotency key) costs
the leader about 750 bytes (its record, spec, key and queue entry: tracemalloc over 100,000
`Scheduler.submit` calls); arguments, environment and peak work (a reply, a snapshot) add to
it, so we budget 2 KiB a job: 1,000,000 pending jobs keep the leader near 2 GiB, within "a
few GiB" (finished jobs are bounded apart, by --keep-finished and --keep-output).
"""

from __future__ import annotations

import attrs

MAX_PENDING_DEFAULT = 1_000_000
RETRY_AFTER_MIN_S = 0.05
RETRY_AFTER_MAX_S = 5.0
# The hint before any start was seen (a fresh leader, workers not yet registered): short, so
# the client's own exponential backoff, not a guess of ours, sets the pace.
RETRY_AFTER_UNKNOWN_S = 0.25
RATE_HALF_LIFE_S = 2.0  # how fast the start-rate estimate follows the cluster
RETRY_SLICES = 10  # the hint is the time to free a tenth of the queue (or the excess)


@attrs.frozen
class Refusal:
    message: str
    retry_after_s: float
    never_fits: bool  # the batch alone is over the bound: resending it cannot help


class Admission:
    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.reserved = 0  # jobs of admitted batches not yet recorded
        self.refused_batches = 0
        self.refused_jobs = 0
        self._rate = 0.0  # jobs started per second, smoothed
        self._sample_at: float | None = None
        self._sample_started = 0

    def observe(self, started_total: int, now: float) -> None:
        """Feed the leader's count of started attempts, to estimate how fast room is made."""
        if self._sample_at is None:
            self._sample_at, self._sample_started = now, started_total
            return
        elapsed = now - self._sample_at
        if elapsed < 0.25:
            return
        rate = (started_total - self._sample_started) / elapsed
        weight = 1.0 if self._rate == 0 else min(1.0, elapsed / RATE_HALF_LIFE_S)
        self._rate += (rate - self._rate) * weight
        self._sample_at, self._sample_started = now, started_total

    def admit(self, new_jobs: int, pending: int) -> Refusal | None:
        """Reserve room for `new_jobs` (None), or say why not (nothing reserved)."""
        if new_jobs <= 0:
            return None
        if new_jobs > self.max_pending:
            self._count(new_jobs)
            return Refusal(f"queue full: a batch of {new_jobs} jobs can never fit under "
                           f"--max-pending {self.max_pending}; send smaller batches",
                           RETRY_AFTER_MAX_S, never_fits=True)
        held = pending + self.reserved
        if held + new_jobs > self.max_pending:
            self._count(new_jobs)
            # Come back once a slice of the queue is free, not the whole batch's room: the
            # client resends a refused batch as halves, which fit sooner.
            excess = min(held + new_jobs - self.max_pending,
                         max(1, self.max_pending // RETRY_SLICES))
            wait_s = excess / self._rate if self._rate > 0 else RETRY_AFTER_UNKNOWN_S
            retry_after = min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, wait_s))
            return Refusal(f"queue full: {held} jobs pending, the limit is "
                           f"{self.max_pending} (--max-pending); {new_jobs} more refused, "
                           f"retry in {retry_after:.2f}s", retry_after, never_fits=False)
        self.reserved += new_jobs
        return None

    def recorded(self, jobs: int) -> None:
        """Jobs of an admitted batch are now in the table (or the batch ended)."""
        self.reserved = max(0, self.reserved - jobs)

    def _count(self, jobs: int) -> None:
        self.refused_batches += 1
        self.refused_jobs += jobs
