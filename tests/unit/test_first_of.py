"""`_first_of` (runtime/executor.py), the thread-mode call's wait for its work, a kill or its
timeout: the right outcome each way, and nothing left behind on the kill switch."""

from __future__ import annotations

import asyncio

from tcpsched.runtime.executor import _first_of
from tcpsched.runtime.outcome import KillSwitch


async def test_work_done_first_is_none_and_leaves_no_listener() -> None:
    """The work ends before any kill or timeout: None, and the switch is as it was."""
    loop = asyncio.get_running_loop()
    work: asyncio.Future[int] = loop.create_future()
    kill = KillSwitch()
    loop.call_later(0.01, work.set_result, 3)
    assert await _first_of(work, kill, timeout=5.0) is None
    assert kill.listeners == []


async def test_a_pulled_switch_stops_the_wait_with_its_reason() -> None:
    """A kill during the wait (and one before it) ends it with the switch's reason."""
    loop = asyncio.get_running_loop()
    work: asyncio.Future[int] = loop.create_future()
    kill = KillSwitch()
    loop.call_later(0.01, kill.pull, "cancelled")
    assert await _first_of(work, kill, timeout=None) == "cancelled"
    assert kill.listeners == [] and not work.done()
    assert await _first_of(work, kill, timeout=None) == "cancelled"


async def test_the_timeout_stops_the_wait() -> None:
    """Neither work nor kill: the timeout's reason, in the words the record shows."""
    loop = asyncio.get_running_loop()
    work: asyncio.Future[int] = loop.create_future()
    kill = KillSwitch()
    assert await _first_of(work, kill, timeout=0.02) == "timed out after 0.02s"
    assert kill.listeners == []
