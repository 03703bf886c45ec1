"""Cron and interval schedules with a simulated clock: ticks, DST, catch-up, no-overlap, and
the records that carry them (core/schedules.py, core/schedule_side.py)."""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.events import Connected, Journal, Received, Send, Tick
from tcpsched.core.jobs import JobSpec, JobState
from tcpsched.core.record_types import typed_record
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.schedules import (
    TICKS_COUNTED_MAX,
    Timing,
    decide,
    iso,
    tick_key,
    timing_problem,
)
from tcpsched.core.state import JobTable
from tcpsched.runtime.journal_lines import encode_line, segment_name
from tcpsched.runtime.snapshot import (
    SNAPSHOT_NAME,
    read_snapshot,
    read_snapshot_log,
    write_snapshot,
)
from tcpsched.runtime.storage import check

PARIS = ZoneInfo("Europe/Paris")
CLIENT = 1000
T0 = datetime(2026, 12, 2, 10, 0, 30, tzinfo=PARIS).timestamp()  # half a minute past 10:00


def paris(ts: float) -> str:
    return datetime.fromtimestamp(ts, PARIS).strftime("%m-%d %H:%M%z")


def local(*parts: int) -> float:
    return datetime(*parts, tzinfo=PARIS).timestamp()


class Leader:
    """A scheduler run on one simulated clock (monotonic == wall), and what it journaled."""

    def __init__(self, now: float = T0, table: JobTable | None = None) -> None:
        self.now = now
        self.sched = Scheduler(SchedulerConfig(), random.Random(3), now, table=table)
        self.records: list[dict[str, Any]] = []
        self.sent: list[Any] = []
        self._req = 0
        self.step(Connected(CLIENT, "client", "test"))

    def step(self, event: Any) -> None:
        for effect in self.sched.step(event, self.now, self.now):
            if isinstance(effect, Journal):
                self.records.append(effect.record)
            elif isinstance(effect, Send):
                self.sent.append(effect.msg)

    def request(self, build: Any) -> Any:
        self._req += 1
        self.step(Received(CLIENT, build(self._req)))
        (reply,) = [msg for msg in self.sent if getattr(msg, "req_id", None) == self._req]
        return reply

    def add(self, name: str = "s", **options: Any) -> Any:
        return self.request(lambda r: m.ScheduleAdd(
            req_id=r, name=name, job=JobSpec(kind="shell", command="true"), **options))

    def run_until(self, end: float) -> None:
        """Step at each deadline the scheduler asks for (as the shell does), up to `end`."""
        while True:
            deadline = self.sched.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.step(Tick())
        self.now = end
        self.step(Tick())

    def fires(self, name: str = "s") -> list[dict[str, Any]]:
        return [r for r in self.records if r["op"] == "fire" and r["name"] == name]


def replay(records: list[dict[str, Any]]) -> JobTable:
    table = JobTable()
    for record in records:
        table.apply(record)
    return table


def test_every_minute_fires_once_per_tick_with_its_tick_key() -> None:
    """A cron of every minute fires each minute once, each job keyed NAME@tick."""
    leader = Leader()
    assert isinstance(leader.add(cron="* * * * *", tz="Europe/Paris"), m.Reply)
    leader.run_until(T0 + 5 * 60)
    fires = leader.fires()
    assert [paris(f["tick"]) for f in fires] == [
        f"12-02 10:0{i}+0100" for i in range(1, 6)]
    assert [f["job"]["key"] for f in fires] == [tick_key("s", f["tick"]) for f in fires]
    assert all(f["at"] >= f["tick"] for f in fires)
    assert len(leader.sched.table.keys) == 5


def test_every_seconds_anchored_on_the_whole_second() -> None:
    """--every S ticks every S seconds from the whole second after the schedule was added."""
    leader = Leader(now=1_000_000.25)
    leader.add(every=2.0)
    leader.run_until(1_000_010.0)
    assert [f["tick"] for f in leader.fires()] == [1_000_003.0, 1_000_005.0, 1_000_007.0,
                                                    1_000_009.0]


def test_spring_forward_in_paris_fires_a_skipped_time_after_the_gap() -> None:
    """02:30 does not exist on 29 March 2026 in Paris: cronsim fires it at 03:00, once."""
    timing = Timing(cron="30 2 * * *", tz="Europe/Paris")
    ticks = timing.upcoming(local(2026, 3, 28, 12, 0), 3)
    assert [paris(t) for t in ticks] == ["03-29 03:00+0200", "03-30 02:30+0200",
                                         "03-31 02:30+0200"]
    hourly = Timing(cron="0 * * * *", tz="Europe/Paris").upcoming(local(2026, 3, 29, 0, 30), 3)
    assert [paris(t) for t in hourly] == ["03-29 01:00+0100", "03-29 03:00+0200",
                                          "03-29 04:00+0200"]


def test_fall_back_in_paris_fires_a_repeated_time_once() -> None:
    """02:30 happens twice on 25 October 2026 in Paris: it fires once (the first); an hourly
    cron fires in both 02:00 hours, an hour of real time apart."""
    timing = Timing(cron="30 2 * * *", tz="Europe/Paris")
    ticks = timing.upcoming(local(2026, 10, 24, 12, 0), 2)
    assert [paris(t) for t in ticks] == ["10-25 02:30+0200", "10-26 02:30+0100"]
    hourly = Timing(cron="0 * * * *", tz="Europe/Paris").upcoming(local(2026, 10, 25, 1, 30), 3)
    assert [paris(t) for t in hourly] == ["10-25 02:00+0200", "10-25 02:00+0100",
                                          "10-25 03:00+0100"]
    assert hourly[1] - hourly[0] == 3600


def test_dst_days_fire_through_the_leader_once_per_tick() -> None:
    """Driven through the scheduler across both DST changes, no tick fires twice."""
    for start in (local(2026, 3, 28, 23, 0), local(2026, 10, 24, 23, 0)):
        leader = Leader(now=start)
        leader.add(cron="30 2 * * *", tz="Europe/Paris")
        leader.run_until(start + 2 * 86400)
        ticks = [f["tick"] for f in leader.fires()]
        assert len(ticks) == len(set(ticks)) == 2


def test_no_overlap_skips_a_tick_while_the_previous_run_is_unfinished() -> None:
    """--no-overlap journals a skipped tick naming the running job, and show says so."""
    leader = Leader(now=1_000_000.0)
    leader.add(every=10.0, no_overlap=True)
    leader.run_until(1_000_035.0)  # no worker: the first job stays pending
    fires = leader.fires()
    assert fires[0]["job"] is not None
    first = fires[0]["job"]["id"]
    assert [f.get("skipped") for f in fires[1:]] == [f"previous run {first} still pending "
                                                     "(--no-overlap)"] * 2
    shown = leader.request(lambda r: m.ScheduleShow(req_id=r, name="s")).value
    assert shown["running"] == f"{first} still pending"
    assert shown["runs"][0]["skipped"].startswith(f"previous run {first}")
    assert shown["runs"][-1]["job"] == first and shown["runs"][-1]["state"] == "pending"
    leader.request(lambda r: m.Cancel(req_id=r, job_id=first))
    leader.run_until(1_000_045.0)
    assert leader.fires()[-1].get("job") is not None


def test_catch_up_once_fires_a_gap_once_after_recovery() -> None:
    """Ticks missed while no leader existed fire once (the newest), the others counted."""
    leader = Leader(now=1_000_000.0)
    leader.add(every=1.0)
    leader.run_until(1_000_003.5)
    assert len(leader.fires()) == 3
    table = replay(leader.records)
    later = Leader(now=1_000_010.2, table=table)  # a new leader 6.7 s later
    later.step(Tick())
    (fire,) = later.fires()
    assert fire["tick"] == 1_000_010.0 and fire["missed"] == 6 and fire["job"] is not None
    later.run_until(1_000_012.5)
    assert [f["tick"] for f in later.fires()] == [1_000_010.0, 1_000_011.0, 1_000_012.0]


def test_catch_up_skip_journals_the_gap_as_skipped() -> None:
    """With --catch-up skip, ticks missed while no leader existed are skipped, not fired."""
    leader = Leader(now=1_000_000.0)
    leader.add(every=1.0, catch_up="skip")
    leader.run_until(1_000_002.5)
    later = Leader(now=1_000_009.5, table=replay(leader.records))
    later.step(Tick())
    (fire,) = later.fires()
    assert fire.get("job") is None and "missed while no leader" in fire["skipped"]
    assert fire["tick"] == 1_000_009.0 and fire["missed"] == 6
    later.run_until(1_000_010.5)
    assert later.fires()[-1]["tick"] == 1_000_010.0 and later.fires()[-1].get("job") is not None


def test_pause_resume_and_remove() -> None:
    """A paused schedule does not fire; resumed, it owes nothing for the pause; removed, it
    is gone from the list."""
    leader = Leader(now=1_000_000.0)
    leader.add(every=1.0)
    leader.run_until(1_000_002.5)
    leader.request(lambda r: m.ScheduleChange(req_id=r, name="s", action="pause"))
    leader.run_until(1_000_010.5)
    assert len(leader.fires()) == 2
    leader.request(lambda r: m.ScheduleChange(req_id=r, name="s", action="resume"))
    leader.run_until(1_000_012.5)
    assert [f["tick"] for f in leader.fires()][2:] == [1_000_011.0, 1_000_012.0]
    assert all(f["missed"] == 0 for f in leader.fires())
    leader.request(lambda r: m.ScheduleChange(req_id=r, name="s", action="remove"))
    assert leader.request(lambda r: m.ScheduleList(req_id=r)).value == []
    leader.run_until(1_000_020.0)
    assert len(leader.fires()) == 4
    missing = leader.request(lambda r: m.ScheduleShow(req_id=r, name="s"))
    assert isinstance(missing, m.ErrorReply) and missing.kind == "not_found"


def test_add_refuses_bad_timing_and_a_different_resend() -> None:
    """Bad cron, unknown zone and a second schedule of the same name are clear errors; the
    same add twice is one schedule."""
    leader = Leader()
    bad = leader.add(cron="61 * * * *")
    assert isinstance(bad, m.ErrorReply) and "bad cron expression" in bad.message
    zone = leader.add(cron="* * * * *", tz="Mars/Olympus")
    assert isinstance(zone, m.ErrorReply) and "unknown time zone" in zone.message
    assert isinstance(leader.add(every=5.0), m.Reply)
    assert isinstance(leader.add(every=5.0), m.Reply)
    other = leader.add(every=6.0)
    assert isinstance(other, m.ErrorReply) and other.kind == "conflict"
    assert len(leader.sched.table.schedules) == 1


def test_show_lists_next_fire_times() -> None:
    """schedule show gives the next N fire times of a cron in its zone."""
    leader = Leader()
    leader.add(cron="*/5 * * * *", tz="Europe/Paris")
    shown = leader.request(lambda r: m.ScheduleShow(req_id=r, name="s", count=3)).value
    assert [paris(t) for t in shown["next_at"]] == ["12-02 10:05+0100", "12-02 10:10+0100",
                                                    "12-02 10:15+0100"]
    assert shown["next"][0] == iso(shown["next_at"][0])


def test_snapshot_keeps_schedules_and_their_runs() -> None:
    """A table rebuilt from its snapshot has the same schedules, last tick and runs."""
    leader = Leader(now=1_000_000.0)
    leader.add(every=1.0)
    leader.run_until(1_000_003.5)
    table = leader.sched.table
    rebuilt = JobTable.from_snapshot(table.snapshot())
    assert rebuilt.schedules.to_json() == table.schedules.to_json()
    assert rebuilt.keys == table.keys


def test_a_fire_replayed_twice_is_refused() -> None:
    """Replay refuses a fire at or before the last fired tick: a tick cannot fire twice."""
    leader = Leader(now=1_000_000.0)
    leader.add(every=1.0)
    leader.run_until(1_000_001.5)
    table = replay(leader.records)
    fire = dict(leader.fires()[0], job=None, skipped="again")
    with pytest.raises(ValueError, match="not after its last tick"):
        table.apply(fire)
    assert table.counts[JobState.PENDING] == 1


@pytest.mark.parametrize(("record", "message"), [
    ({"op": "schedule_add", "name": "s", "job": {"kind": "shell", "command": "true"},
      "at": 1.0, "cron": "*/5 * * *"}, "bad cron expression"),
    ({"op": "schedule_add", "name": "s", "job": {"kind": "shell", "command": "true"},
      "at": 1.0, "cron": "* * * * *", "tz": "Nowhere/City"}, "unknown time zone"),
    ({"op": "schedule_add", "name": "s", "job": {"kind": "shell", "command": "true"},
      "at": 1.0}, "exactly one of --cron and --every"),
    ({"op": "schedule_add", "name": "a b", "job": {"kind": "shell", "command": "true"},
      "at": 1.0, "every": 5}, "schedule name"),
    ({"op": "fire", "name": "s", "tick": 5.0, "at": 5.0}, "holds a job or says why"),
    ({"op": "fire", "name": "s", "tick": 5.0, "at": 5.0, "skipped": "x",
      "job": {"id": "j", "seq": 1, "kind": "shell", "command": "true"}}, "holds a job or"),
])
def test_bad_schedule_records_are_refused_on_replay(record: dict[str, Any], message: str
                                                    ) -> None:
    """typed_record (what replay and --check use) refuses a bad schedule record clearly."""
    with pytest.raises(ValueError, match=message):
        typed_record(record, 1, 1)


def test_timing_problem_accepts_what_cronsim_accepts() -> None:
    """Five- and six-field crons, named days and months, are valid; nonsense is not."""
    assert timing_problem("0 9 * * MON-FRI", "Europe/Paris", None) is None
    assert timing_problem("*/10 * * * * *", None, None) is None
    assert "bad cron" in (timing_problem("every day", None, None) or "")
    assert "--every must be" in (timing_problem(None, None, 0.5) or "")
    # JSON (a REST body, a journal line) can hold an integer no float holds.
    assert "--every must be" in (timing_problem(None, None, 10**400) or "")


def test_decide_is_pure_on_the_clock_passed_in() -> None:
    """decide() only reads the schedule and the times it is given."""
    table = JobTable()
    table.apply({"op": "schedule_add", "name": "s", "at": 100.0, "every": 10.0,
                 "job": {"kind": "shell", "command": "true"}})
    schedule = table.schedules.schedules["s"]
    assert decide(schedule, 105.0, 0.0, None) is None
    assert decide(schedule, 130.0, 0.0, None).tick == 130.0  # type: ignore[union-attr]
    assert decide(schedule, 130.0, 0.0, None).missed == 2  # type: ignore[union-attr]


def test_check_refuses_a_journal_with_a_bad_cron_record(tmp_path: Path) -> None:
    """coordinator --check names the line and the bad cron expression of a schedule record
    whose CRC is valid."""
    good = {"op": "schedule_add", "name": "s", "job": {"kind": "shell", "command": "true"},
            "at": 1.0, "every": 5.0}
    bad = {**good, "name": "t", "every": None, "cron": "*/5 * *"}
    bad.pop("every")
    after = {"op": "schedule_pause", "name": "s", "at": 2.0}  # a bad LAST line would be torn
    (tmp_path / segment_name(1)).write_bytes(encode_line(1, good, 1) + encode_line(2, bad, 1)
                                             + encode_line(3, after, 1))
    code, lines = check(tmp_path)
    assert code == 1
    assert "bad cron expression '*/5 * *'" in lines[-1] and ":2" in lines[-1], lines[-1]


def test_schedules_survive_a_snapshot_file(tmp_path: Path) -> None:
    """The snapshot file keeps the schedules (after the header's log position) and a fire's
    job with a non-JSON argument."""
    leader = Leader(now=1_000_000.0)
    leader.request(lambda r: m.ScheduleAdd(
        req_id=r, name="s", every=1.0,
        job=JobSpec(kind="call", function="m:f", args=(b"\x00raw",), kwargs={"log": 1})))
    leader.run_until(1_000_002.5)
    table = leader.sched.table
    write_snapshot(tmp_path, 9, table.image(), epoch=1, promise=(1, 1))
    _seq, rebuilt, _size = read_snapshot(tmp_path / SNAPSHOT_NAME)
    assert rebuilt.schedules.to_json() == table.schedules.to_json()
    assert rebuilt.schedules.schedules["s"].job["args"] == [b"\x00raw"]
    assert read_snapshot_log(tmp_path / SNAPSHOT_NAME) == (1, (1, 1))


def test_a_long_gap_of_a_per_second_cron_folds_into_its_newest_tick() -> None:
    """A day without a leader for a cron firing every second: one fire, for the newest tick,
    with the missed ticks counted (up to the counting bound)."""
    timing = Timing(cron="* * * * * *", tz="Europe/Paris")
    newest, count = timing.due(T0, T0 + 86400.5)
    assert newest == math.floor(T0 + 86400.5)
    assert count == TICKS_COUNTED_MAX
    assert timing.due(T0, T0 + 5.5) == (math.floor(T0) + 5, 5)


@given(st.sampled_from(["* * * * *", "*/7 * * * *", "30 2 * * *", "0 * * * *",
                        "15 1-3 * * SUN", "*/20 * * * * *"]),
       st.sampled_from([None, "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
       st.floats(1.7e9, 1.9e9), st.floats(0, 5 * 86400))
@settings(max_examples=150, deadline=None)
def test_ticks_increase_and_due_agrees_with_upcoming(cron: str, tz: str | None, start: float,
                                                     span: float) -> None:
    """Ticks strictly increase (DST included), and due() counts exactly the ticks upcoming()
    lists in the window."""
    timing = Timing(cron=cron, tz=tz)
    ticks = timing.upcoming(start, 50)
    assert all(a < b for a, b in itertools.pairwise([start, *ticks]))
    inside = [t for t in ticks if t <= start + span]
    if len(inside) < len(ticks):  # the window ends before the 50th tick: due() must agree
        assert timing.due(start, start + span) == (inside[-1] if inside else None, len(inside))


def test_a_schedule_with_tags_fires_jobs_that_carry_them() -> None:
    """A schedule's job may be routed by tags: each fired job carries the schedule's tags (so
    only a worker having them runs it), while --after and --id stay refused."""
    leader = Leader()
    added = leader.request(lambda r: m.ScheduleAdd(
        req_id=r, name="gpu", every=60.0,
        job=JobSpec(kind="shell", command="true", tags=("gpu",))))
    assert isinstance(added, m.Reply)
    leader.run_until(T0 + 3 * 60)
    fires = leader.fires("gpu")
    assert fires and all(f["job"]["tags"] == ["gpu"] for f in fires)
    refused = leader.request(lambda r: m.ScheduleAdd(
        req_id=r, name="child", every=60.0,
        job=JobSpec(kind="shell", command="true", after=(fires[0]["job"]["id"],))))
    assert isinstance(refused, m.ErrorReply) and "--after" in refused.message


def test_schedule_add_parses_tags_on_the_command_line() -> None:
    """`schedule add ... --tags a,b` builds a job spec with those tags (the CLI's spec builder
    reads the same options as `submit`)."""
    from tcpsched import cli_parser

    parser = cli_parser.build_parser()
    args = parser.parse_args(["schedule", "add", "n", "--every", "5", "--tags", "gpu,ssd",
                              "--shell", "true"])
    spec = cli_parser.spec_from_args(args)
    assert spec.tags == ("gpu", "ssd") and spec.after == ()
