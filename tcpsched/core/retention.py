"""Which finished jobs the leader forgets, and when it looks.

Theory of operation: finished jobs stay in the table, in the order they finished, until one of
three limits forgets them: a count (`keep_finished`), an age (`keep_finished_for_s`, optional)
and the stdout + stderr they hold all together (`keep_output_chars`): each job may keep up to
1 MiB of each, so a count alone would not bound memory and snapshots. Whichever limit bites,
the oldest finished jobs go first.
The count is enforced in batches with 1% slack, so a busy cluster writes one `forget` record per
batch rather than one per finished job. The age is checked at most once per
`RETENTION_CHECK_PERIOD_S`; `next_check` is when the next look is due, which the scheduler
offers as a deadline while finished jobs exist. `Retention` only chooses ids; the scheduler
journals the `forget` record.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

RETENTION_CHECK_PERIOD_S = 1.0


class Retention:
    def __init__(self, keep_finished: int, keep_finished_for_s: float | None, now: float,
                 keep_output_chars: int | None = None) -> None:
        self.keep_finished = keep_finished
        self.keep_finished_for_s = keep_finished_for_s
        self.keep_output_chars = keep_output_chars
        self.next_check = now + RETENTION_CHECK_PERIOD_S

    def due(self, finished: dict[str, float], now: float, output_chars: int = 0,
            size: Callable[[str], int] | None = None) -> list[str]:
        """Ids to forget now, oldest first; `finished` maps id to finished_at in finish order,
        `output_chars` is the output they hold in all and `size(id)` one job's share."""
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
        budget = self.keep_output_chars
        if budget is not None and size is not None and output_chars > budget:
            left = output_chars - sum(size(job_id) for job_id in ids)
            # Forget down to 99% of the budget, so the next batch is a while away.
            target = budget - budget // 100
            for job_id in itertools.islice(finished, len(ids), None):
                if left <= target:
                    break
                left -= size(job_id)
                ids.append(job_id)
        return ids
