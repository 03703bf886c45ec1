"""The pending-job queue: higher priority first, FIFO within a priority, delays, lazy removal.

Theory of operation: two heaps. `_ready` orders runnable jobs by (-priority, seq), so equal
priorities leave in submission order; a job that comes back after a lost worker keeps its old
`seq` and so its place ahead of later submissions. `_delayed` orders jobs by the time they may
run (a `--delay`, or a retry's backoff); `promote(now)` moves due ones to `_ready`. Removal is
lazy: `_live` maps a job id to the one heap entry that counts, and entries that no longer match
are skipped when they reach the top. Every operation is O(log n) amortized.

A restart may queue its recovered ready jobs as one run instead (`load_run`): the stored
rows of jobs of one priority, already in seq order, which the heap would only have copied
into a million (-priority, seq, id) entries of 64 bytes each and `_live` into a million more
map entries. `pop` takes the run's head or the ready heap's top, whichever comes first. A job
is live in at most one place: a push or removal of a job that is live in the run marks its
place dead (a byte each), found by its seq, which never changes (`seq_of`, a bisection).
"""

from __future__ import annotations

import bisect
import heapq
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

ReadyEntry = tuple[int, int, str]  # (-priority, seq, job_id)
DelayedEntry = tuple[float, int, str, int]  # (not_before, seq, job_id, priority)
_entry_id = operator.itemgetter(2)  # the job id, in either kind of entry
_row_seq = operator.itemgetter(1)


def _no_seq(_job_id: str) -> int | None:
    return None


class JobQueue:
    def __init__(self) -> None:
        self._ready: list[ReadyEntry] = []
        self._delayed: list[DelayedEntry] = []
        self._live: dict[str, ReadyEntry | DelayedEntry] = {}
        # `load_run`: rows with a job id at 0 and its seq at 1, of priority -_run_key, from
        # `_run_at` on, those marked in `_run_dead` dead; `_run_live` are not. Empty once taken.
        self._run: Sequence[Sequence[Any]] = ()
        self._run_at = 0
        self._run_key = 0
        self._run_dead = bytearray()
        self._run_live = 0
        self._seq_of: Callable[[str], int | None] = _no_seq

    def __len__(self) -> int:
        return len(self._live) + self._run_live

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live or (
            type(job_id) is str and self._run_live > 0 and self._run_place(job_id) is not None)

    def push(self, job_id: str, priority: int, seq: int, not_before: float = 0.0) -> None:
        """Queue a job (replacing any earlier entry of it); it may run from `not_before` on."""
        if self._run_live and job_id not in self._live:
            self._kill_in_run(job_id)
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

    def load_run(self, rows: Sequence[Sequence[Any]], priority: int,
                 seq_of: Callable[[str], int | None]) -> None:
        """Queue many ready jobs of one `priority` at once, as one run: `rows` hold each
        job's id at 0 and its seq at 1, in strictly ascending seq order (the order they leave
        in). `seq_of(job_id)` is a job's seq (None for no job), which must never change. Only
        into an empty queue (a restart's)."""
        if len(self) or not rows:
            raise ValueError("a run is loaded once, into an empty queue, and holds jobs")
        self._run, self._run_at, self._run_key = rows, 0, -priority
        self._run_dead = bytearray(len(rows))
        self._run_live = len(rows)
        self._seq_of = seq_of

    def _run_head(self) -> Sequence[Any] | None:
        """The run's first live row (dead ones are passed over), or None once it is done."""
        run, at, dead = self._run, self._run_at, self._run_dead
        while at < len(run) and dead[at]:
            at += 1
        self._run_at = at
        return run[at] if at < len(run) else None

    def _run_place(self, job_id: str) -> int | None:
        """Where `job_id` is live in the run, if it is."""
        seq = self._seq_of(job_id)
        run = self._run
        if seq is None or not run or seq > run[-1][1]:
            return None
        at = bisect.bisect_left(run, seq, lo=self._run_at, key=_row_seq)
        if at < len(run) and run[at][0] == job_id and not self._run_dead[at]:
            return at
        return None

    def _kill_in_run(self, job_id: str) -> bool:
        """Mark the run place of `job_id` dead; True if it was live there."""
        at = self._run_place(job_id)
        if at is None:
            return False
        self._run_dead[at] = 1
        self._run_taken()
        return True

    def _run_taken(self) -> None:
        """One live job fewer in the run; once none is left, let the rows go."""
        self._run_live -= 1
        if not self._run_live:
            self._run, self._run_at, self._run_dead = (), 0, bytearray()
            self._seq_of = _no_seq

    def remove(self, job_id: str) -> bool:
        """Forget a job; its heap entry is dropped when it surfaces. True if it was queued."""
        if self._live.pop(job_id, None) is not None:
            return True
        return self._run_live > 0 and self._kill_in_run(job_id)

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
        head = self._run_head() if self._run_live else None
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
                self._run_taken()
            else:
                heapq.heappop(self._ready)
                del self._live[job_id]
        return job_id

    def ready_count(self, now: float) -> int:
        """How many jobs may run now (O(n): for statistics, not the hot path)."""
        self.promote(now)
        return self._run_live + sum(1 for e in self._live.values() if len(e) == 3)

    def next_deadline(self) -> float | None:
        """When the earliest delayed job becomes ready, if any."""
        self._drop_dead(self._delayed)
        return self._delayed[0][0] if self._delayed else None
