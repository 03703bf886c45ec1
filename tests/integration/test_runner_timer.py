"""The runner's one timer, in process on the real event loop: a deadline that moves later keeps
the armed timer (no new one per event), and the core still hears its Tick only once the later
deadline has come; a deadline that moves earlier is armed at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tcpsched.core.events import Tick
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
