"""The leader's side of schedules: the client requests, and firing ticks when they are due.

Theory of operation: an object `Scheduler` owns (`schedules`). The schedule table itself is
replicated state (`JobTable.schedules`); what lives here is only derived from it: the next fire
time of each schedule (`_fire_at`, Unix time), rebuilt from the table when a node begins to
lead, so a new leader computes what is due from the last fired tick the log recorded. Every
step, `fire_due` journals one `fire` record per due schedule (the tick's job inside it,
or why it was skipped, see `core/schedules.decide`), and `schedules_deadline` turns the soonest
fire time into a deadline on the monotonic clock for `Scheduler.next_deadline`. Followers run
no scheduler, so they never fire.

`LeaderSchedules` is given the job table, the queue (a fired tick's job is queued at once), the
step's clocks and outbox (`core/sides.py`), `record` (the scheduler's single `_record` path, so
every fire and every schedule change is journaled) and `new_job_id`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.records import job_from_dict, job_to_dict
from tcpsched.core.schedules import (
    CATCH_UP,
    NEXT_SHOWN_MAX,
    SCHEDULES_MAX,
    Schedule,
    decide,
    iso,
    name_problem,
    tick_key,
    timing_problem,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tcpsched.core.jobqueue import JobQueue
    from tcpsched.core.sides import Outbox, Record, StepClock
    from tcpsched.core.state import JobTable

FIRES_PER_STEP = 100  # schedules fired in one step; more go on at the next loop turn
NEXT_LISTED = 1  # next fire times `schedule list` shows per schedule

log = logging.getLogger(__name__)


def spec_template(spec: JobSpec) -> dict[str, Any]:
    """A JobSpec as the map a schedule keeps (the spec fields of a job map)."""
    data = job_to_dict(JobRecord(id="-", seq=0, spec=spec))
    for name in ("id", "seq", "state"):
        data.pop(name, None)
    return data


def template_spec(template: dict[str, Any], key: str | None = None) -> JobSpec:
    spec = job_from_dict({"id": "-", "seq": 0, "state": "pending", **template}).spec
    return spec if key is None else attrs.evolve(spec, key=key)


class LeaderSchedules:
    """When each schedule fires next, firing it, and the schedule requests."""

    def __init__(self, *, table: JobTable, queue: JobQueue, clock: StepClock, out: Outbox,
                 record: Record, new_job_id: Callable[[], str]) -> None:
        """At the start of leadership: ticks due before now came due with no leader."""
        self.table = table
        self.queue = queue
        self._clock = clock
        self._reply = out.reply
        self._error = out.error
        self._record = record
        self._new_job_id = new_job_id
        self._leading_since = self._wall
        self._fire_at: dict[str, float] = {}
        self._soonest: float | None = None
        for name in self.table.schedules.schedules:
            self._plan(name, recompute_soonest=False)
        self._soonest = min(self._fire_at.values(), default=None)

    @property
    def _now(self) -> float:
        return self._clock.now

    @property
    def _wall(self) -> float:
        return self._clock.wall

    def _plan(self, name: str, *, recompute_soonest: bool = True) -> None:
        schedule = self.table.schedules.get(name)
        if schedule is None or schedule.paused:
            self._fire_at.pop(name, None)
        else:
            self._fire_at[name] = schedule.timing.next_after(schedule.last_tick)
        if recompute_soonest:
            self._soonest = min(self._fire_at.values(), default=None)

    def next_deadline(self) -> float | None:
        """The monotonic time of the soonest fire (the wall clock's offset taken as now)."""
        if self._soonest is None:
            return None
        return self._now + max(0.0, self._soonest - self._wall)

    def _unfinished(self, schedule: Schedule) -> str | None:
        job = self.table.get(schedule.last_job) if schedule.last_job is not None else None
        if job is None or job.state.is_terminal:
            return None
        return f"{job.id} still {job.state.value}"

    def is_due(self) -> bool:
        """Whether a fire is due by the wall clock (what `fire_due` acts on)."""
        return self._soonest is not None and self._wall >= self._soonest

    def fire_due(self) -> None:
        wall = self._wall
        if self._soonest is None or wall < self._soonest:
            return
        due = [name for name, at in self._fire_at.items() if at <= wall][:FIRES_PER_STEP]
        for name in due:
            schedule = self.table.schedules.schedules[name]
            decision = decide(schedule, wall, self._leading_since, self._unfinished(schedule))
            if decision is not None:
                self._fire(schedule, decision.tick, decision.missed, decision.skipped)
            self._plan(name, recompute_soonest=False)
        self._soonest = min(self._fire_at.values(), default=None)

    def _fire(self, schedule: Schedule, tick: float, missed: int, skipped: str | None) -> None:
        record: dict[str, Any] = {"op": "fire", "name": schedule.name, "tick": tick,
                                  "at": self._wall, "missed": missed}
        key = tick_key(schedule.name, tick)
        if skipped is None and key in self.table.keys:
            skipped = f"already fired as job {self.table.keys[key]}"  # defence in depth
        if skipped is not None:
            record["skipped"] = skipped
            self._record(record)
            log.info("schedule=%s tick=%s skipped: %s", schedule.name, iso(tick), skipped)
            return
        spec = template_spec(schedule.job, key)
        job = JobRecord(id=self._new_job_id(), seq=self.table.next_seq, spec=spec,
                        submitted_at=self._wall)
        record["job"] = job_to_dict(job)
        self._record(record)
        self.queue.push(job.id, spec.priority, job.seq, 0.0)
        log.info("schedule=%s tick=%s fired job=%s missed=%d", schedule.name, iso(tick), job.id,
                 missed)

    # -- requests -----------------------------------------------------------------------------

    def on_request(self, conn: int, msg: Any) -> None:
        if isinstance(msg, m.ScheduleAdd):
            self._on_schedule_add(conn, msg)
        elif isinstance(msg, m.ScheduleList):
            self._reply(conn, msg.req_id, [self.schedule_public(s, NEXT_LISTED)
                                           for s in self.table.schedules.schedules.values()])
        elif isinstance(msg, m.ScheduleShow):
            schedule = self._named(conn, msg.req_id, msg.name)
            if schedule is not None:
                self._reply(conn, msg.req_id, self.schedule_public(schedule, msg.count,
                                                                   runs=True))
        elif isinstance(msg, m.ScheduleChange):
            self._on_schedule_change(conn, msg)

    def _named(self, conn: int, req_id: int, name: str) -> Schedule | None:
        schedule = self.table.schedules.get(name)
        if schedule is None:
            self._error(conn, req_id, "not_found", f"no schedule named {name!r}")
        return schedule

    def _on_schedule_add(self, conn: int, msg: m.ScheduleAdd) -> None:
        spec = msg.job
        problem = (name_problem(msg.name) or timing_problem(msg.cron, msg.tz, msg.every)
                   or (None if msg.catch_up in CATCH_UP else
                       f"--catch-up must be one of {', '.join(CATCH_UP)}"))
        if problem is None and (spec.key is not None or spec.delay or spec.after):
            problem = ("a schedule's job has no --id (each tick's key is NAME@TICK), --delay "
                       "or --after")
        if problem is not None:
            self._error(conn, msg.req_id, "bad_request", problem)
            return
        template = spec_template(spec)
        existing = self.table.schedules.get(msg.name)
        if existing is not None:
            t = existing.timing
            same = ((t.cron, t.tz, t.every) == (msg.cron, msg.tz, msg.every)
                    and existing.job == template and existing.no_overlap == msg.no_overlap
                    and existing.catch_up == msg.catch_up)
            if same:  # a resend: the schedule it made
                self._reply(conn, msg.req_id, self.schedule_public(existing, NEXT_LISTED))
            else:
                self._error(conn, msg.req_id, "conflict",
                            f"schedule {msg.name!r} already exists with another spec; remove "
                            "it first, or choose another name")
            return
        if len(self.table.schedules) >= SCHEDULES_MAX:
            self._error(conn, msg.req_id, "bad_request",
                        f"there are {SCHEDULES_MAX} schedules already; remove one first")
            return
        record: dict[str, Any] = {"op": "schedule_add", "name": msg.name, "job": template,
                                  "at": self._wall, "catch_up": msg.catch_up}
        for name in ("cron", "tz", "every"):
            if getattr(msg, name) is not None:
                record[name] = getattr(msg, name)
        if msg.no_overlap:
            record["no_overlap"] = True
        self._record(record)
        self._plan(msg.name)
        schedule = self.table.schedules.schedules[msg.name]
        log.info("schedule=%s added: %s", msg.name, schedule.timing.describe())
        self._reply(conn, msg.req_id, self.schedule_public(schedule, NEXT_LISTED))

    def _on_schedule_change(self, conn: int, msg: m.ScheduleChange) -> None:
        schedule = self._named(conn, msg.req_id, msg.name)
        if schedule is None:
            return
        action = msg.action
        if action == "remove":
            shown = self.schedule_public(schedule, 0)
            self._record({"op": "schedule_remove", "name": msg.name})
            shown["removed"] = True
        else:
            if schedule.paused != (action == "pause"):
                self._record({"op": f"schedule_{action}", "name": msg.name, "at": self._wall})
            shown = self.schedule_public(schedule, NEXT_LISTED)
        self._plan(msg.name)
        log.info("schedule=%s %s", msg.name, {"remove": "removed", "pause": "paused",
                                                "resume": "resumed"}[action])
        self._reply(conn, msg.req_id, shown)

    # -- what users see -----------------------------------------------------------------------

    def schedule_public(self, schedule: Schedule, next_count: int, *, runs: bool = False
                        ) -> dict[str, Any]:
        """A schedule as `schedule list/show` and `--json` show it."""
        t = schedule.timing
        upcoming = [] if schedule.paused else t.upcoming(schedule.last_tick,
                                                         min(next_count, NEXT_SHOWN_MAX))
        job = schedule.job
        out: dict[str, Any] = {
            "name": schedule.name, "cron": t.cron, "tz": t.tz, "every": t.every,
            "no_overlap": schedule.no_overlap, "catch_up": schedule.catch_up,
            "paused": schedule.paused, "kind": job.get("kind"),
            "command": job.get("command"), "function": job.get("function"),
            "args": job.get("args", []), "kwargs": job.get("kwargs", {}),
            "created_at": schedule.created_at, "last_tick": schedule.last_tick,
            "last_job": schedule.last_job, "fired": schedule.fired,
            "skipped": schedule.skipped, "missed": schedule.missed,
            "next": [iso(tick) for tick in upcoming], "next_at": upcoming,
            "running": self._unfinished(schedule),
        }
        if runs:
            rows = []
            for run in reversed(schedule.runs):
                job_id = run["job"]
                record = self.table.get(job_id) if job_id is not None else None
                state = None if job_id is None else (
                    record.state.value if record is not None else "forgotten")
                rows.append({"tick": iso(run["tick"]), "tick_at": run["tick"],
                             "fired_at": run["at"], "job": job_id, "state": state,
                             "skipped": run["skipped"], "missed": run["missed"]})
            out["runs"] = rows
        return out
