"""Cron and interval schedules as pure, replicated state: when a schedule fires, and what
firing after a gap means.

Theory of operation: a schedule is a row of the replicated state (`ScheduleTable`, kept by the
job table, written in snapshots and changed only by journal records: schedule_add,
schedule_remove, schedule_pause, schedule_resume and fire). The leader fires a tick by
journaling ONE `fire` record that holds the job the tick creates (or why the tick was
skipped): the fire and its job are committed, replicated and replayed together, and a fire
record's tick must be later than the schedule's last fired tick (`ScheduleTable.check`), so a
tick can neither fire twice nor be half-fired across a failover.

What to fire is `decide(schedule, wall, leading_since, unfinished)`: the ticks in
(last fired tick, wall] are due. They are never fired one by one after a gap: the newest is
fired once and the others are counted as `missed` on its run (`--catch-up once`, the
default); with `--catch-up skip`, ticks that came due before this leader began leading (no
leader existed to fire them) are journaled as skipped instead. `--no-overlap` journals a tick
as skipped while the previous run is still pending or running.

Clocks: ticks are Unix (wall-clock) times, passed in by the caller; nothing here reads a
clock. Cron expressions are evaluated by cronsim in the schedule's time zone (zoneinfo), so
daylight-saving changes follow cronsim's documented rules (those of Debian cron): a time that
does not exist (spring forward) fires at the first minute after the gap, and a time that
happens twice (fall back) fires once, at its first occurrence. `--every S` ticks are
`anchor + k*S` on the Unix clock and know no time zone.
"""

from __future__ import annotations

import itertools
import math
import re
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from cronsim import CronSim, CronSimError

from tcpsched.core.jobs import is_finite
from tcpsched.core.records import decode_record, encode_record

CATCH_UP = ("once", "skip")
RUNS_KEPT = 20  # past runs (fired or skipped ticks) each schedule remembers for `show`
SCHEDULES_MAX = 10_000
EVERY_S_MIN = 1.0
EVERY_S_MAX = 366 * 86400.0
TICKS_COUNTED_MAX = 10_000  # missed ticks counted one by one; past that, "at least"
NEXT_SHOWN_MAX = 100
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
SCHEDULE_OPS = frozenset({"schedule_add", "schedule_remove", "schedule_pause",
                          "schedule_resume", "fire"})


def name_problem(name: Any) -> str | None:
    if type(name) is not str or NAME_RE.fullmatch(name) is None:
        return (f"schedule name {name!r} must be 1 to 64 letters, digits or _.:- (starting "
                "with a letter or digit)")
    return None


def timing_problem(cron: Any, tz: Any, every: Any) -> str | None:
    """Why (cron, tz, every) is no valid timing, or None."""
    if (cron is None) == (every is None):
        return "a schedule has exactly one of --cron and --every"
    if every is not None:
        if type(every) not in (int, float) or not is_finite(every) or not (
                EVERY_S_MIN <= every <= EVERY_S_MAX):
            return f"--every must be {EVERY_S_MIN:g} to {EVERY_S_MAX:g} seconds, not {every!r}"
        if tz is not None:
            return "--tz goes with --cron (--every counts seconds, in no time zone)"
        return None
    if type(cron) is not str or not cron.strip():
        return f"--cron must be a cron expression, not {cron!r}"
    zone = UTC
    if tz is not None:
        try:
            zone = zoneinfo.ZoneInfo(tz)  # type: ignore[assignment]
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            return f"unknown time zone {tz!r} (an IANA name such as Europe/Paris)"
    try:
        CronSim(cron, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        return f"bad cron expression {cron!r}: {exc}"
    return None


@attrs.frozen
class Timing:
    """When a schedule's ticks fall: a cron expression in a time zone, or every S seconds
    from `anchor`."""

    cron: str | None = None
    tz: str | None = None
    every: float | None = None
    anchor: float = 0.0

    def _zone(self) -> Any:
        return UTC if self.tz is None else zoneinfo.ZoneInfo(self.tz)

    def ticks_after(self, after: float) -> Iterator[float]:
        """The ticks strictly after Unix time `after`, in order (an endless iterator)."""
        if self.every is not None:
            k = max(math.floor((after - self.anchor) / self.every) + 1, 1)
            while True:
                tick = self.anchor + k * self.every
                k += 1
                if tick > after:
                    yield tick
        assert self.cron is not None
        zone = self._zone()
        last = after
        it = CronSim(self.cron, datetime.fromtimestamp(after, zone))
        behind = 0
        while True:
            tick = next(it).timestamp()
            if tick > last:
                behind = 0
                last = tick
                yield tick
                continue
            behind += 1
            if behind >= 100:
                # Iterating an aware time across a repeated hour (fall back) could circle in
                # it: start again past it.
                it = CronSim(self.cron, datetime.fromtimestamp(last, zone) + timedelta(hours=2))
                behind = 0

    def next_after(self, after: float) -> float:
        """The first tick strictly after Unix time `after`."""
        return next(self.ticks_after(after))

    def due(self, after: float, upto: float) -> tuple[float | None, int]:
        """(newest tick in (after, upto], how many ticks fall there; at most
        TICKS_COUNTED_MAX are counted)."""
        if upto <= after:
            return None, 0
        if self.every is not None:
            first = self.next_after(after)
            if first > upto:
                return None, 0
            count = math.floor((upto - first) / self.every) + 1
            return first + (count - 1) * self.every, min(count, TICKS_COUNTED_MAX)
        newest, count = None, 0
        for tick in self.ticks_after(after):
            if tick > upto:
                return newest, count
            newest, count = tick, count + 1
            if count >= TICKS_COUNTED_MAX:
                break
        # More ticks than we count: the newest one, found backwards from `upto`.
        back = CronSim(self.cron or "", datetime.fromtimestamp(math.floor(upto) + 1,
                                                                 self._zone()), reverse=True)
        for _ in range(100):
            tick = next(back).timestamp()
            if tick <= upto:
                return max(tick, newest or tick), count
        return newest, count

    def upcoming(self, after: float, count: int) -> list[float]:
        """The next `count` ticks after `after` (at most NEXT_SHOWN_MAX)."""
        return list(itertools.islice(self.ticks_after(after), min(count, NEXT_SHOWN_MAX)))

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"cron {self.cron!r}" + (f" ({self.tz})" if self.tz else " (UTC)")


def iso(ts: float) -> str:
    """A Unix time as ISO 8601 UTC, to the second (milliseconds when it has them)."""
    dt = datetime.fromtimestamp(ts, UTC)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of the job a tick creates: `NAME@tick`, so a tick is one job."""
    return f"{name}@{iso(tick)}"


@attrs.define
class Schedule:
    """One schedule as the replicated state holds it (mutable: only `ScheduleTable` changes
    it, from records)."""

    name: str
    timing: Timing
    job: dict[str, Any]  # the job spec each tick submits (JobSpec fields, raw user values)
    no_overlap: bool = False
    catch_up: str = "once"
    paused: bool = False
    created_at: float = 0.0
    last_tick: float = 0.0  # the last tick fired or skipped (or when counting began)
    last_job: str | None = None  # the job of the last fired tick
    fired: int = 0
    skipped: int = 0
    missed: int = 0
    runs: list[dict[str, Any]] = attrs.field(factory=list)  # newest last, RUNS_KEPT at most

    def to_json(self) -> dict[str, Any]:
        t = self.timing
        return {"name": self.name, "cron": t.cron, "tz": t.tz, "every": t.every,
                "anchor": t.anchor, "job": self.job, "no_overlap": self.no_overlap,
                "catch_up": self.catch_up, "paused": self.paused,
                "created_at": self.created_at, "last_tick": self.last_tick,
                "last_job": self.last_job, "fired": self.fired, "skipped": self.skipped,
                "missed": self.missed, "runs": list(self.runs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        problem = name_problem(data.get("name")) or timing_problem(
            data.get("cron"), data.get("tz"), data.get("every"))
        if problem is not None:
            raise ValueError(problem)
        return cls(name=data["name"],
                   timing=Timing(data.get("cron"), data.get("tz"), data.get("every"),
                                 data.get("anchor", 0.0)),
                   job=dict(data["job"]), no_overlap=bool(data.get("no_overlap")),
                   catch_up=data.get("catch_up", "once"), paused=bool(data.get("paused")),
                   created_at=data.get("created_at", 0.0), last_tick=data["last_tick"],
                   last_job=data.get("last_job"), fired=data.get("fired", 0),
                   skipped=data.get("skipped", 0), missed=data.get("missed", 0),
                   runs=list(data.get("runs", [])))


def anchor_for(every: float | None, at: float) -> float:
    """Where `--every` ticks start counting: the whole second at or after `at`."""
    return float(math.ceil(at)) if every is not None else 0.0


class ScheduleTable:
    """Every schedule, changed only by records (`apply`); `check` refuses an illegal one."""

    def __init__(self) -> None:
        self.schedules: dict[str, Schedule] = {}

    def __len__(self) -> int:
        return len(self.schedules)

    def get(self, name: str) -> Schedule | None:
        return self.schedules.get(name)

    def check(self, record: dict[str, Any]) -> None:
        """ValueError if `record` cannot apply to the table as it is."""
        op, name = record["op"], record["name"]
        schedule = self.schedules.get(name)
        if op == "schedule_add":
            if schedule is not None:
                raise ValueError(f"schedule_add of existing schedule {name!r}")
            if len(self.schedules) >= SCHEDULES_MAX:
                raise ValueError(f"more than {SCHEDULES_MAX} schedules")
            return
        if schedule is None:
            raise ValueError(f"{op} names unknown schedule {name!r}")
        if op == "fire" and record["tick"] <= schedule.last_tick:
            # The exactly-once rule, checked on every apply: a tick fires after the last.
            raise ValueError(f"fire of schedule {name!r} at tick {iso(record['tick'])}, not "
                             f"after its last tick {iso(schedule.last_tick)}")

    def apply(self, record: dict[str, Any], job_id: str | None = None) -> None:
        """Apply a checked record; `job_id` is the job a fire created."""
        op, name = record["op"], record["name"]
        if op == "schedule_add":
            every = record.get("every")
            at = record["at"]
            self.schedules[name] = Schedule(
                name=name, timing=Timing(record.get("cron"), record.get("tz"), every,
                                         anchor_for(every, at)),
                job=dict(record["job"]), no_overlap=record.get("no_overlap", False),
                catch_up=record.get("catch_up", "once"), created_at=at, last_tick=at)
            return
        schedule = self.schedules[name]
        if op == "schedule_remove":
            del self.schedules[name]
        elif op == "schedule_pause":
            schedule.paused = True
        elif op == "schedule_resume":
            # Ticks while paused are not owed: counting starts again now.
            schedule.paused = False
            schedule.last_tick = max(schedule.last_tick, record["at"])
        elif op == "fire":
            schedule.last_tick = record["tick"]
            missed = record.get("missed", 0)
            schedule.missed += missed
            if job_id is not None:
                schedule.fired += 1
                schedule.last_job = job_id
            else:
                schedule.skipped += 1
            run = {"tick": record["tick"], "at": record["at"], "job": job_id,
                   "skipped": record.get("skipped"), "missed": missed}
            schedule.runs.append(run)
            del schedule.runs[:-RUNS_KEPT]

    def to_json(self) -> list[dict[str, Any]]:
        """Every schedule, JSON-ready (user values in the job templates tagged as in records)."""
        rows = []
        for schedule in self.schedules.values():
            row = schedule.to_json()
            row["job"] = encode_record({"op": "schedule_add", "job": row["job"]})["job"]
            rows.append(row)
        return rows

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> ScheduleTable:
        table = cls()
        for row in rows:
            schedule = Schedule.from_json(decode_record({**row, "op": "schedule_add"}))
            table.schedules[schedule.name] = schedule
        return table


@attrs.frozen
class Decision:
    """What to journal for a schedule now: fire `tick` (a job), or skip it (`skipped` says
    why); `missed` ticks before it are folded into this one."""

    tick: float
    missed: int
    skipped: str | None = None


def decide(schedule: Schedule, wall: float, leading_since: float,
           unfinished: str | None) -> Decision | None:
    """The fire record due for `schedule` at Unix time `wall`, or None.

    `leading_since` is when this leader began leading: ticks before it came due with no
    leader to fire them. `unfinished` describes the previous run if it has not finished
    (for --no-overlap), else None."""
    if schedule.paused:
        return None
    newest, count = schedule.timing.due(schedule.last_tick, wall)
    if newest is None:
        return None
    if schedule.catch_up == "skip":
        recent_newest, _ = schedule.timing.due(max(schedule.last_tick, leading_since), wall)
        if recent_newest is None:
            return Decision(newest, count - 1, f"missed while no leader was elected "
                            f"(--catch-up skip; {count} tick(s))")
    if schedule.no_overlap and unfinished is not None:
        return Decision(newest, count - 1, f"previous run {unfinished} (--no-overlap)")
    return Decision(newest, count - 1)
