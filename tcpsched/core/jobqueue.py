"""The pending-job queue: higher priority first, FIFO within a priority, delays, lazy removal.

Theory of operation: two heaps. `_ready` orders runnable jobs by (-priority, seq), so equal
priorities leave in submission order; a job that comes back after a lost worker keeps its old
`seq` and so its place ahead of later submissions. `_delayed` orders jobs by the time they may
run (a `--delay`, or a retry's backoff); `promote(now)` moves due ones to `_ready`. Removal is
lazy: `_live` maps a job id to the one heap entry that counts, and entries that no longer match
are skipped when they reach the top. Every operation is O(log n) amortized.

A restart may queue its recovered ready jobs as one run instead (`load_run`): the stored
rows of jobs of one priority, already in seq order, which the heap would only have copied
into a million (-priority, seq, id) entries of 64 bytes each. A job of the run is live while
`_live` maps its id to `_IN_RUN`; `pop` takes the run's head or the ready heap's top,
whichever comes first, and a push or removal of a run job makes its run place dead as it
does a heap entry's.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

ReadyEntry = tuple[int, int, str]  # (-priority, seq, job_id)
DelayedEntry = tuple[float, int, str, int]  # (not_before, seq, job_id, priority)
_entry_id = operator.itemgetter(2)  # the job id, in either kind of entry
_IN_RUN: Any = ("in the run",)  # `_live`'s value for a job queued in the run


class JobQueue:
    def __init__(self) -> None:
        self._ready: list[ReadyEntry] = []
        self._delayed: list[DelayedEntry] = []
        self._live: dict[str, ReadyEntry | DelayedEntry] = {}
        # `load_run`: rows with a job id at 0 and its seq at 1, of priority -_run_key, from
        # `_run_at` on; empty once taken.
        self._run: Sequence[Sequence[Any]] = ()
        self._run_at = 0
        self._run_key = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def push(self, job_id: str, priority: int, seq: int, not_before: float = 0.0) -> None:
        """Queue a job (replacing any earlier entry of it); it may run from `not_before` on."""
        if not_before > 0.0:
            delayed: DelayedEntry = (not_before, seq, job_id, priority)
            self._live[job_id] = delayed
            heapq.heappush(self._delayed, delayed)
        else:
            entry: ReadyEntry = (-priority, seq, job_id)
            self._live[job_id] = entry
            heapq.heappush(self._ready, entry)

    def load(self, jobs: Iterable[tuple[str, int, int, float]]) -> None:
        """Queue many (job_id, priority, seq, not_before) at once: one O(n) heapify instead of
        n pushes, which matters when a restart rebuilds a queue of a million jobs."""
        items = jobs if isinstance(jobs, list) else list(jobs)
        self.load_entries([(-p, seq, job_id) for job_id, p, seq, nb in items if nb <= 0.0],
                          [(nb, seq, job_id, p) for job_id, p, seq, nb in items if nb > 0.0])

    def load_entries(self, ready: list[ReadyEntry], delayed: list[DelayedEntry]) -> None:
        """`load`, given the heap entries themselves: (-priority, seq, job_id) for jobs that
        may run now, (not_before, seq, job_id, priority) for the others. A restart builds
        these straight from the jobs, sparing a million intermediate tuples and a pass."""
        live = self._live
        live.update(zip(map(_entry_id, ready), ready, strict=True))
        live.update(zip(map(_entry_id, delayed), delayed, strict=True))
        self._ready.extend(ready)
        self._delayed.extend(delayed)
        heapq.heapify(self._ready)
        heapq.heapify(self._delayed)

    def load_run(self, rows: Sequence[Sequence[Any]], priority: int) -> None:
        """Queue many ready jobs of one `priority` at once, as one run: `rows` hold each
        job's id at 0 and its seq at 1, in ascending seq order (the order they leave in). Only
        into an empty queue (a restart's)."""
        if self._live or not rows:
            raise ValueError("a run is loaded once, into an empty queue, and holds jobs")
        self._live.update(zip(map(operator.itemgetter(0), rows), repeat(_IN_RUN)))
        self._run, self._run_at, self._run_key = rows, 0, -priority

    def _run_head(self) -> Sequence[Any] | None:
        """The run's first live row (dead ones are passed over), or None once it is done."""
        run, at, live = self._run, self._run_at, self._live
        while at < len(run):
            row = run[at]
            if live.get(row[0]) is _IN_RUN:
                self._run_at = at
                return row
            at += 1
        self._run, self._run_at = (), 0  # done: let the rows go
        return None

    def remove(self, job_id: str) -> bool:
        """Forget a job; its heap entry is dropped when it surfaces. True if it was queued."""
        return self._live.pop(job_id, None) is not None

    def promote(self, now: float) -> None:
        """Move every delayed job whose time has come to the ready heap."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            entry = heapq.heappop(delayed)
            _not_before, seq, job_id, priority = entry
            if self._live.get(job_id) is entry:
                ready: ReadyEntry = (-priority, seq, job_id)
                self._live[job_id] = ready
                heapq.heappush(self._ready, ready)
        self._drop_dead(delayed)

    def _drop_dead(self, heap: list) -> None:  # type: ignore[type-arg]
        live = self._live
        while heap and live.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)

    def _next(self, now: float) -> tuple[str | None, bool]:
        """The job that runs next at `now` (None if none is ready), and whether it is the
        run's head rather than the ready heap's top."""
        self.promote(now)
        ready = self._ready
        self._drop_dead(ready)
        head = self._run_head() if self._run else None
        if head is not None and (not ready or (self._run_key, head[1], head[0]) < ready[0]):
            return head[0], True
        return (ready[0][2] if ready else None), False

    def peek(self, now: float) -> str | None:
        """The job that would run next at `now`, without taking it."""
        return self._next(now)[0]

    def pop(self, now: float) -> str | None:
        """Take the job that runs next at `now`, or None if none is ready."""
        job_id, in_run = self._next(now)
        if job_id is not None:
            if in_run:
                self._run_at += 1
            else:
                heapq.heappop(self._ready)
            del self._live[job_id]
        return job_id

    def ready_count(self, now: float) -> int:
        """How many jobs may run now (O(n): for statistics, not the hot path)."""
        self.promote(now)
        return sum(1 for e in self._live.values() if e is _IN_RUN or len(e) == 3)

    def next_deadline(self) -> float | None:
        """When the earliest delayed job becomes ready, if any."""
        self._drop_dead(self._delayed)
        return self._delayed[0][0] if self._delayed else None
