"""Schedules in the cluster simulation: added at the start, firing through every fault.

Theory of operation: `add_schedules` has the first client add N schedules (every second with
catch-up once; every 2 s with catch-up skip and no overlap; a six-field cron every 3 s in
Europe/Paris), through the real request path, so they are journaled and replicated like any
record. Every fire is checked by the job table itself on every apply (a tick fires after the
last one, or the node cannot apply it: no double fire survives replay, which the checker does
on every node). `check_schedules`, at the end, lets the settled cluster run a few more
simulated seconds and checks no fire was lost: every tick between the add and the last fire
is accounted for exactly once, as fired, skipped, or missed-and-folded into a later fire;
each fired tick is one job in the leader's table, keyed NAME@TICK; and the schedules kept
firing up to the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobSpec

if TYPE_CHECKING:
    from tcpsched.testing.sim import Simulation

RUN_ON_S = 6.0  # simulated seconds the settled cluster runs before the check
KINDS = (
    {"every": 1.0},
    {"every": 2.0, "catch_up": "skip", "no_overlap": True},
    {"cron": "*/3 * * * * *", "tz": "Europe/Paris"},
)
PERIOD_S = (1.0, 2.0, 3.0)


def add_schedules(sim: Simulation, count: int) -> None:
    client = next(iter(sim.clients.values()))
    for i in range(count):
        client.send(m.ScheduleAdd(req_id=0, name=f"sched{i}",
                                  job=JobSpec(kind="shell", command=f"sim schedule {i}"),
                                  **KINDS[i % len(KINDS)]))  # type: ignore[arg-type]


def check_schedules(sim: Simulation) -> None:
    end = sim.clock.now + RUN_ON_S
    while sim._heap and sim.clock.now < end:
        sim._step()
    sim.checker.full_check()
    leader = sim.leader()
    if leader is None or leader.node is None:
        sim.fail("no leader to check the schedules on")
        return
    table = leader.node.table
    count = sim.config.schedules
    if len(table.schedules) != count:
        sim.fail(f"{count} schedules added, the leader has {len(table.schedules)}")
    by_schedule: dict[str, int] = {}
    for key in table.keys:
        name, at, _tick = key.partition("@")
        if at:
            by_schedule[name] = by_schedule.get(name, 0) + 1
    wall = leader.wall
    for i, schedule in enumerate(table.schedules.schedules.values()):
        name = schedule.name
        _newest, ticks = schedule.timing.due(schedule.created_at, schedule.last_tick)
        accounted = schedule.fired + schedule.skipped + schedule.missed
        if accounted != ticks:
            sim.fail(f"schedule {name}: {ticks} ticks from its add to its last fire, but "
                     f"{schedule.fired} fired + {schedule.skipped} skipped + "
                     f"{schedule.missed} missed = {accounted}: a tick was lost or doubled")
        if by_schedule.get(name, 0) != schedule.fired:
            sim.fail(f"schedule {name} fired {schedule.fired} times but the table holds "
                     f"{by_schedule.get(name, 0)} jobs keyed {name}@...")
        period = PERIOD_S[i % len(PERIOD_S)]
        if wall - schedule.last_tick > period + 1.0:
            sim.fail(f"schedule {name}: last tick {schedule.last_tick:.3f} is "
                     f"{wall - schedule.last_tick:.1f}s behind the leader's clock: it stopped "
                     "firing")
