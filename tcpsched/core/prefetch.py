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

How many places the leader fills is measured in time, not only counted (`lookahead_places`):
the lookahead exists to cover a leader round trip, so it needs as many jobs as a worker gets
through in about `LOOKAHEAD_COVER_S` (5 ms: a round trip with an fsync and a follower's, on a
slow disk). The leader keeps an average of each worker's recent job run times (`JobTime`, from
the start and finish times its results carry) and fills that many places, at most `prefetch`
(the worker's cap, `--prefetch`), at least one. Short jobs get the whole cap: no-op calls take
well under a round trip, and with a lookahead of 2 a one-slot worker sat idle most of the time
(2 workers x 1 slot, 8,000 no-op calls: ~1,000 jobs/s with 2 places, ~2,000 with 16, and a
third less CPU per job in the leader, which handles several results and assignments per turn).
Jobs of `LONG_JOB_S` (50 ms) or more get no lookahead at all: a round trip costs them a few
percent at most, and a job waiting behind a long one could have started on a worker that frees
up sooner. So a high-priority job submitted later waits behind about 5 ms of work at any
worker, whatever the cap, as far as the worker's past jobs tell its next ones: when its jobs get
longer, what it was given stays with it, and the next fill follows the new average.

The leader cannot tell a waiting attempt from a running one until its result comes: an attempt
it assigns while it counts every slot of the worker busy is recorded as `running` with no
`started_at`, and the result brings the worker's own start time (see `Scheduler._start`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcpsched.core import messages as m

PREFETCH_MAX = 1000  # what a worker may ask for: the lookahead is meant to be small
LOOKAHEAD_COVER_S = 0.005  # the work a lookahead holds, in seconds of the worker's job times
LONG_JOB_S = 0.05  # jobs this long or longer get no lookahead
JOB_TIME_WEIGHT = 0.25  # of the newest run time in the average


def lookahead_places(prefetch: int, slots: int, job_s: float | None) -> int:
    """How many of a worker's `prefetch` places to fill, given the average run time of its
    recent jobs (`job_s`; None: no job of it has finished yet, so one place a slot)."""
    if prefetch <= 0:
        return 0
    if job_s is None:
        return min(prefetch, slots)
    if job_s >= LONG_JOB_S:
        return 0
    if job_s <= 0.0:
        return prefetch
    return min(prefetch, max(1, math.ceil(LOOKAHEAD_COVER_S * slots / job_s)))


class JobTime:
    """A moving average of the run times of one worker's jobs (seconds, its own clock)."""

    __slots__ = ("average_s",)

    def __init__(self) -> None:
        self.average_s: float | None = None

    def add(self, started_at: float, finished_at: float) -> None:
        sample = max(finished_at - started_at, 0.0)
        average = self.average_s
        self.average_s = sample if average is None else (
            average + JOB_TIME_WEIGHT * (sample - average))


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
