"""The pending-job queue: higher priority first, FIFO within a priority, delays, lazy removal.

Theory of operation: two heaps. `_ready` orders runnable jobs by (-priority, seq), so equal
priorities leave in submission order; a job that comes back after a lost worker keeps its old
`seq` and so its place ahead of later submissions. `_delayed` orders jobs by the time they may
run (a `--delay`, or a retry's backoff); `promote(now)` moves due ones to `_ready`. Removal is
lazy: `_live` maps a job id to the one heap entry that counts, and entries that no longer match
are skipped when they reach the top. Every operation is O(log n) amortized.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable

ReadyEntry = tuple[int, int, str]  # (-priority, seq, job_id)
DelayedEntry = tuple[float, int, str, int]  # (not_before, seq, job_id, priority)
_entry_id = operator.itemgetter(2)  # the job id, in either kind of entry


class JobQueue:
    def __init__(self) -> None:
        self._ready: list[ReadyEntry] = []
        self._delayed: list[DelayedEntry] = []
        self._live: dict[str, ReadyEntry | DelayedEntry] = {}

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

    def peek(self, now: float) -> str | None:
        """The job that would run next at `now`, without taking it."""
        self.promote(now)
        self._drop_dead(self._ready)
        return self._ready[0][2] if self._ready else None

    def pop(self, now: float) -> str | None:
        """Take the job that runs next at `now`, or None if none is ready."""
        job_id = self.peek(now)
        if job_id is not None:
            heapq.heappop(self._ready)
            del self._live[job_id]
        return job_id

    def ready_count(self, now: float) -> int:
        """How many jobs may run now (O(n): for statistics, not the hot path)."""
        self.promote(now)
        return sum(1 for e in self._live.values() if len(e) == 3)

    def next_deadline(self) -> float | None:
        """When the earliest delayed job becomes ready, if any."""
        self._drop_dead(self._delayed)
        return self._delayed[0][0] if self._delayed else None
