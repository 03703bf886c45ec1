"""Typed journal records of schedules (core/schedules.py), checked like every record on
replay (`core/record_types.py` registers them): a bad cron expression, an unknown time zone or
a bad job template in a record is refused where it is read, with what is wrong."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from tcpsched.core.jobs import JobSpec
from tcpsched.core.record_types import (
    SubmitRecord,
    _bool,
    _int_in,
    _optional_str,
    _position,
    _time,
)
from tcpsched.core.schedules import CATCH_UP, TICKS_COUNTED_MAX, name_problem, timing_problem


def _schedule_name(_inst: object, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)


_SPEC_FIELDS = frozenset(f.name for f in attrs.fields(JobSpec))


def _template(_inst: object, _attribute: attrs.Attribute[Any], value: Any) -> None:
    """The job spec each tick submits: JobSpec's own validators decide."""
    if type(value) is not dict:
        raise ValueError("a schedule's job must be a map")
    unknown = value.keys() - _SPEC_FIELDS
    if unknown:
        raise ValueError(f"a schedule's job has unknown field(s) {sorted(unknown)}")
    spec = dict(value)
    for name in ("args", "tags", "after"):
        if name in spec:
            if type(spec[name]) is not list:
                raise ValueError(f"job {name} must be a list")
            spec[name] = tuple(spec[name])
    try:
        JobSpec(**spec)
    except TypeError as exc:
        raise ValueError(f"bad job spec in schedule ({exc})") from None


@attrs.frozen
class ScheduleAddRecord:
    OP: ClassVar[str] = "schedule_add"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    name: str = attrs.field(validator=_schedule_name)
    job: dict[str, Any] = attrs.field(validator=_template)
    at: float = attrs.field(validator=_time)
    cron: str | None = attrs.field(default=None, validator=_optional_str)
    tz: str | None = attrs.field(default=None, validator=_optional_str)
    every: float | None = None
    no_overlap: bool = attrs.field(default=False, validator=_bool)
    catch_up: str = "once"

    def __attrs_post_init__(self) -> None:
        problem = timing_problem(self.cron, self.tz, self.every)
        if problem is not None:
            raise ValueError(f"schedule {self.name!r}: {problem}")
        if self.catch_up not in CATCH_UP:
            raise ValueError(f"catch_up must be one of {CATCH_UP}, not {self.catch_up!r}")


@attrs.frozen
class ScheduleRemoveRecord:
    OP: ClassVar[str] = "schedule_remove"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    name: str = attrs.field(validator=_schedule_name)


@attrs.frozen
class SchedulePauseRecord:
    OP: ClassVar[str] = "schedule_pause"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    name: str = attrs.field(validator=_schedule_name)
    at: float = attrs.field(validator=_time)


@attrs.frozen
class ScheduleResumeRecord:
    OP: ClassVar[str] = "schedule_resume"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    name: str = attrs.field(validator=_schedule_name)
    at: float = attrs.field(validator=_time)


@attrs.frozen
class FireRecord:
    """A tick of a schedule and, in the same record, the job it created (`job`, a submit's
    job map) or why it was skipped (`skipped`): one record, so replay cannot split them."""

    OP: ClassVar[str] = "fire"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    name: str = attrs.field(validator=_schedule_name)
    tick: float = attrs.field(validator=_time)
    at: float = attrs.field(validator=_time)
    missed: int = attrs.field(default=0, validator=_int_in(0, TICKS_COUNTED_MAX))
    job: dict[str, Any] | None = None
    skipped: str | None = attrs.field(default=None, validator=_optional_str)

    def __attrs_post_init__(self) -> None:
        if (self.job is None) == (self.skipped is None):
            raise ValueError("a fire record holds a job or says why the tick was skipped")
        if self.job is not None:
            SubmitRecord(epoch=self.epoch, seq=self.seq, job=self.job)  # a submit's checks


SCHEDULE_RECORD_TYPES: tuple[type, ...] = (
    ScheduleAddRecord, ScheduleRemoveRecord, SchedulePauseRecord, ScheduleResumeRecord,
    FireRecord)
