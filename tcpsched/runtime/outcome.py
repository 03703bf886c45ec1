"""How one attempt ended (`Outcome`), and the switch the worker pulls to stop it (`KillSwitch`).

Shared by the executor's shell and thread paths and by the call pool, so each of them speaks
the same result to the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen
class Outcome:
    state: str  # "succeeded", "failed" or "cancelled"
    exit_code: int | None = None
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0


@attrs.define
class KillSwitch:
    """Set by the worker to stop a running attempt; `reason` ends up in the record."""

    event: asyncio.Event = attrs.field(factory=asyncio.Event)
    reason: str = ""
    # Called with the reason when it is pulled: lets a waiter stop without a task of its own.
    listeners: list[Callable[[str], object]] = attrs.field(factory=list)

    def pull(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()
            for listener in list(self.listeners):
                listener(reason)


def stopped(reason: str, started_at: float, finished_at: float, **fields: Any) -> Outcome:
    """An attempt ended by a timeout or a kill: cancelled if the user cancelled it."""
    state = "cancelled" if reason == "cancelled" else "failed"
    return Outcome(state, error=reason, started_at=started_at, finished_at=finished_at, **fields)
