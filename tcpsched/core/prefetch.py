"""A worker's lookahead: assignments it holds beyond its slots, to start the moment one frees.

Theory of operation: with one slot, a worker that asks for its next job only when the last one
ends waits a whole leader round trip between jobs (the result's way in, the next start
record's commit on a majority, the `Assign`'s way out). So the leader may assign a worker up
to `slots + prefetch` attempts (`Register.prefetch` says how many); the worker runs `slots` of
them and keeps the rest here, in arrival order, starting the oldest as soon as a slot frees.

The queue stays in the coordinator: only `prefetch` attempts (a small number) wait here, so a
high-priority job submitted later waits behind at most that many at any worker. What waits here
is the worker's own as much as what runs: heartbeats and `Register` report it (so the leader's
reconciliation counts it as held), a `Kill` takes it out without running it (it is reported
like a killed attempt, as a cancelled `Result`), and a drain hands it back at once. A worker
that dies loses it like its running attempts, and the leader requeues both.

The leader fills a worker's prefetch places only in the step that handles one of its results
(`WorkerEntry.lookahead_open`), from the head of the queue as it stands then; other steps fill
free slots only. So jobs submitted while a worker is busy wait in the coordinator's queue, in
priority order, rather than in its lookahead in the order they came, and a worker busy with a
long job takes no more until it finishes one; a worker that is working through jobs always has
its next ones in hand.

The leader cannot tell a waiting attempt from a running one until its result comes: an attempt
it assigns while it counts every slot of the worker busy is recorded as `running` with no
`started_at`, and the result brings the worker's own start time (see `Scheduler._start`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcpsched.core import messages as m

PREFETCH_MAX = 1000  # what a worker may ask for: the lookahead is meant to be small


class Lookahead:
    """Assignments waiting for a slot, oldest first; at most `depth` of them."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._waiting: dict[str, m.Assign] = {}  # job id -> its assignment, in arrival order

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[m.Assign]:
        return iter(list(self._waiting.values()))

    def has_room(self) -> bool:
        return len(self._waiting) < self.depth

    def attempt(self, job_id: str) -> int | None:
        """The attempt of `job_id` waiting here, or None."""
        assign = self._waiting.get(job_id)
        return None if assign is None else assign.attempt

    def put(self, assign: m.Assign) -> None:
        """Keep `assign` until a slot frees; a newer attempt of the same job replaces it."""
        self._waiting.pop(assign.job_id, None)
        self._waiting[assign.job_id] = assign

    def remove(self, job_id: str, attempt: int | None = None) -> m.Assign | None:
        """Take `job_id` out (only that attempt, if given); the assignment, or None."""
        assign = self._waiting.get(job_id)
        if assign is None or (attempt is not None and assign.attempt != attempt):
            return None
        del self._waiting[job_id]
        return assign

    def take_oldest(self) -> m.Assign | None:
        """The assignment that has waited longest, taken out, or None."""
        for job_id in self._waiting:
            return self._waiting.pop(job_id)
        return None

    def take_all(self) -> list[m.Assign]:
        waiting = list(self._waiting.values())
        self._waiting.clear()
        return waiting

    def items(self) -> list[tuple[str, int]]:
        """(job id, attempt) of every waiting assignment."""
        return [(job_id, a.attempt) for job_id, a in self._waiting.items()]
