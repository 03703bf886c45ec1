"""What the scheduler hands the sides it composes: the step's clocks and its outbox.

Theory of operation: `Scheduler` owns one object per idea (the worker protocol, live output,
schedules, placements, dependencies, groups), each built with exactly what it needs: the job
table, the queue, the detector, the worker entries, and the narrow pieces defined here. A side
never holds the scheduler itself. It changes the table only through the `Record` callable it is
given, which is the scheduler's single `_record` path: that applies the record, journals it and
runs the hooks of the other sides, so every change is journaled wherever it is decided.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from tcpsched.core import messages as m
from tcpsched.core.events import Effect, Send

if TYPE_CHECKING:
    from tcpsched.core.jobs import JobRecord

class Record(Protocol):
    """The scheduler's `_record`: apply one journal record to the table (`built`: the job a
    submit already made), journal it, run the hooks of every side; returns the job it changed."""

    def __call__(self, record: dict[str, Any], built: JobRecord | None = None
                 ) -> JobRecord | None: ...


class StepClock:
    """The clocks of the step being taken: `now` (monotonic, for every duration and deadline)
    and `wall` (Unix time, only for the times records show). The scheduler sets both at the
    start of each step; the sides read them."""

    __slots__ = ("now", "wall")

    def __init__(self, now: float, wall: float) -> None:
        self.now = now
        self.wall = wall


class Outbox:
    """The effects of the step being taken, one list shared by the scheduler and its sides;
    the scheduler empties it at the start of a step and hands it to the shell at the end."""

    __slots__ = ("effects",)

    def __init__(self) -> None:
        self.effects: list[Effect] = []

    def take(self) -> list[Effect]:
        effects = self.effects[:]
        self.effects.clear()
        return effects

    def send(self, conn: int | None, msg: Any) -> None:
        if conn is not None:
            self.effects.append(Send(conn, msg))

    def reply(self, conn: int, req_id: int, value: Any) -> None:
        self.send(conn, m.Reply(req_id=req_id, value=value))

    def error(self, conn: int, req_id: int, kind: str, message: str) -> None:
        self.send(conn, m.ErrorReply(req_id=req_id, kind=kind, message=message))
