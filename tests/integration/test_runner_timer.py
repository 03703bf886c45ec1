"""The runner's one timer, in process on the real event loop: a deadline that moves later keeps
the armed timer (no new one per event), and the core still hears its Tick only once the later
deadline has come; a deadline that moves earlier is armed at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tcpsched.core.events import Journal, Tick
from tcpsched.runtime.runner import MemoryJournal, Runner


class MovingDeadline:
    """A core whose deadline is whatever the test says; it records when each Tick came."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.ticks: list[tuple[float, float | None]] = []  # (clock at the Tick, deadline then)
        self.ticked = asyncio.Event()

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Any]:
        if isinstance(event, Tick):
            self.ticks.append((now, self.deadline))
            self.deadline = None
            self.ticked.set()
        return []

    def next_deadline(self) -> float | None:
        return self.deadline


def test_a_later_deadline_keeps_the_timer_and_ticks_only_when_due() -> None:
    """Pushed back 50 times, the deadline is armed once; the Tick comes at the last one."""

    async def main() -> None:
        core = MovingDeadline()
        runner = Runner(core, MemoryJournal(), {})
        core.deadline = time.monotonic() + 0.02
        runner.feed("nudge")
        first = runner._timer
        assert first is not None
        for _ in range(50):
            core.deadline += 0.001
            runner.feed("nudge")
            assert runner._timer is first  # kept: it re-arms itself when it fires
        last = core.deadline
        await asyncio.wait_for(core.ticked.wait(), 10)
        ((at, deadline),) = core.ticks
        assert deadline == last and at >= last - 0.002  # the loop's clock rounds to 1 ms
        runner.stop()

    asyncio.run(main())


def test_an_earlier_deadline_is_armed_at_once() -> None:
    """Brought forward, the deadline gets a new timer, and its Tick is not held back."""

    async def main() -> None:
        core = MovingDeadline()
        runner = Runner(core, MemoryJournal(), {})
        core.deadline = time.monotonic() + 60.0
        runner.feed("nudge")
        far = runner._timer
        soon = core.deadline = time.monotonic() + 0.01
        runner.feed("nudge")
        assert runner._timer is not far
        await asyncio.wait_for(core.ticked.wait(), 10)
        assert [deadline for _at, deadline in core.ticks] == [soon]
        runner.stop()

    asyncio.run(main())


class Journaling(MovingDeadline):
    """Every event journals a record, so every turn has an end (and a flush)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Any]:
        super().step(event, now, wall)
        return [] if isinstance(event, Tick) else [Journal({"op": "forget", "ids": []})]

    def next_deadline(self) -> float | None:
        self.asked += 1
        return super().next_deadline()


def test_a_busy_turn_asks_the_core_for_its_deadline_once() -> None:
    """200 events in one loop turn: the deadline is asked for at the turn's end, not per event,
    and a deadline set during the turn is still armed and ticks."""

    async def main() -> None:
        core = Journaling()
        runner = Runner(core, MemoryJournal(), {})
        for _ in range(200):
            runner.feed("message")
        assert core.asked == 0
        core.deadline = time.monotonic() + 0.01
        await asyncio.wait_for(core.ticked.wait(), 10)
        assert core.asked <= 3
        assert len(core.ticks) == 1
        runner.stop()

    asyncio.run(main())
