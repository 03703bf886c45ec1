"""Clients waiting for jobs to finish: who waits for what, and until when.

Theory of operation: a `wait` request for jobs that are not all finished becomes a `Waiter`,
indexed three ways: under each job it still waits for (a finishing job finds its waiters in one
dict lookup), under its connection (a closed connection abandons its waiters), and, when it has
a timeout, in a heap of deadlines. A waiter is answered at most once: when its last job
finishes, or when its deadline passes (with the jobs as they are then); never if its connection
closes first. `done` marks a waiter answered or abandoned, and the job lists and the heap drop
such waiters lazily, so closing a connection costs nothing per job.

`Waits` only decides which waiters are due and unlinks them; the scheduler sends the replies
(`queries.wait_records`), so nothing here reads the job table.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

@attrs.define(eq=False)
class Waiter:
    """One pending `wait` request; `remaining` are the ids of its jobs not finished yet."""

    conn: int
    req_id: int
    job_ids: tuple[str, ...]
    remaining: set[str]
    deadline: float | None
    done: bool = False


_NOBODY: tuple[Waiter, ...] = ()


class Waits:
    """The waiters of every connection, by job, by connection and by deadline."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[Waiter]] = {}
        self.by_conn: dict[int, list[Waiter]] = {}
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = 0  # breaks deadline ties in arrival order; waiters themselves don't compare

    def add(self, conn: int, req_id: int, job_ids: tuple[str, ...], remaining: set[str],
            deadline: float | None) -> None:
        waiter = Waiter(conn, req_id, job_ids, remaining, deadline)
        for job_id in remaining:
            self.by_job.setdefault(job_id, []).append(waiter)
        self.by_conn.setdefault(conn, []).append(waiter)
        if deadline is not None:
            self._seq += 1
            heapq.heappush(self._deadlines, (deadline, self._seq, waiter))

    def job_finished(self, job_id: str) -> Sequence[Waiter]:
        """The waiters this job was the last one of; they are answered from now on."""
        waiting = self.by_job.pop(job_id, None)
        if waiting is None:
            return _NOBODY
        due = []
        for waiter in waiting:
            if waiter.done:
                continue
            waiter.remaining.discard(job_id)
            if not waiter.remaining:
                self._answered(waiter)
                due.append(waiter)
        return due

    def expire(self, now: float) -> list[Waiter]:
        """The waiters whose deadline has passed; they are answered from now on."""
        heap = self._deadlines
        due = []
        while heap and (heap[0][2].done or heap[0][0] <= now):
            _, _, waiter = heapq.heappop(heap)
            if not waiter.done:
                self._answered(waiter)
                due.append(waiter)
        return due

    def closed(self, conn: int) -> None:
        """The connection is gone: its waiters will never be answered."""
        for waiter in self.by_conn.pop(conn, ()):
            waiter.done = True

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _answered(self, waiter: Waiter) -> None:
        waiter.done = True
        conn_waiters = self.by_conn.get(waiter.conn)
        if conn_waiters is not None:
            conn_waiters.remove(waiter)
            if not conn_waiters:
                del self.by_conn[waiter.conn]

