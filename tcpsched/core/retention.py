"""Which finished jobs the leader forgets, and when it looks.

Theory of operation: finished jobs stay in the table, in the order they finished, until one of
two limits forgets them: a count (`keep_finished`) and an age (`keep_finished_for_s`, optional).
The count is enforced in batches with 1% slack, so a busy cluster writes one `forget` record per
batch rather than one per finished job. The age is checked at most once per
`RETENTION_CHECK_PERIOD_S`; `next_check` is when the next look is due, which the scheduler
offers as a deadline while finished jobs exist. `Retention` only chooses ids; the scheduler
journals the `forget` record.
"""

from __future__ import annotations

RETENTION_CHECK_PERIOD_S = 1.0


class Retention:
    def __init__(self, keep_finished: int, keep_finished_for_s: float | None, now: float) -> None:
        self.keep_finished = keep_finished
        self.keep_finished_for_s = keep_finished_for_s
        self.next_check = now + RETENTION_CHECK_PERIOD_S

    def due(self, finished: dict[str, float], now: float) -> list[str]:
        """Ids to forget now, oldest first; `finished` maps id to finished_at in finish order."""
        excess = len(finished) - self.keep_finished
        ids: list[str] = []
        if excess > max(1, self.keep_finished // 100):
            ids = [job_id for job_id, _ in zip(finished, range(excess), strict=False)]
        if self.keep_finished_for_s is not None and now >= self.next_check:
            self.next_check = now + RETENTION_CHECK_PERIOD_S
            horizon = now - self.keep_finished_for_s
            skip = len(ids)
            for i, (job_id, finished_at) in enumerate(finished.items()):
                if i < skip:
                    continue
                if finished_at > horizon:
                    break
                ids.append(job_id)
        return ids
