"""Requests whose work the leader spreads over loop turns, so no request stalls the loop.

Theory of operation: a request that may be big (a submit of 150,000 jobs, a listing of
100,000, a wait on 100,000 prefixes) is handled by a generator that does a bounded amount of
work and yields (see `core/queries.py`). `run_or_queue` runs its first step at once: a small
request is answered in the step it arrived in, as before. One that yields is queued behind its
connection's earlier ones (requests of one connection are answered, and submits recorded, in
the order they came), and the scheduler offers "now" as a deadline while anything is queued,
so the shell ticks it again on the next loop turn, after reading whatever arrived meanwhile
(heartbeats among it). Each tick advances one generator one step; connections take turns.

When a connection closes, its queued reads are dropped (nobody is left to answer), but a
submit it started is finished: a batch is recorded whole, never in part.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import Any

import attrs

Work = Generator[None, None, Any]


@attrs.define(eq=False)
class _Item:
    work: Work
    finish_on_close: bool


class Backlog:
    def __init__(self) -> None:
        self._by_conn: dict[int, deque[_Item]] = {}  # in turn order: the first goes next
        self.steps = 0  # steps run from the queue, for statistics

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_conn.values())

    def __bool__(self) -> bool:
        return bool(self._by_conn)

    def run_or_queue(self, conn: int, work: Work, *, finish_on_close: bool = False) -> None:
        """Run the first step of `work` now, unless the connection has work queued already;
        queue what is left."""
        items = self._by_conn.get(conn)
        if items is not None:
            items.append(_Item(work, finish_on_close))
            return
        try:
            next(work)
        except StopIteration:
            return
        self._by_conn[conn] = deque([_Item(work, finish_on_close)])

    def step(self) -> None:
        """Advance the first connection's oldest work by one step; that connection then goes
        to the back of the line."""
        if not self._by_conn:
            return
        conn = next(iter(self._by_conn))
        items = self._by_conn[conn]
        self.steps += 1
        try:
            next(items[0].work)
        except StopIteration:
            items.popleft()
        # The step may have queued more for this connection (it is still in the dict).
        del self._by_conn[conn]
        if items:
            self._by_conn[conn] = items

    def closed(self, conn: int) -> None:
        """The connection is gone: drop its reads, keep its submits."""
        items = self._by_conn.get(conn)
        if items is None:
            return
        kept = deque(item for item in items if item.finish_on_close)
        if kept:
            self._by_conn[conn] = kept
        else:
            del self._by_conn[conn]
