"""Schedules in the seeded simulation: three schedules fire through crashes, partitions,
pauses and clock jumps of the coordinator cores, and no tick is fired twice or lost
(tcpsched/testing/sim_schedules.py checks the accounting and the tick keys)."""

from __future__ import annotations

import pytest

from tcpsched.testing.sim import InvariantViolation, SimConfig, Simulation, run_seed
from tcpsched.testing.sim_schedules import check_schedules

SEEDS = range(30)


@pytest.mark.parametrize("seed", SEEDS)
def test_schedules_fire_each_tick_once_across_failovers(seed: int) -> None:
    """Every tick from a schedule's add to its last fire is fired, skipped or folded into a
    later fire exactly once, through every fault of the seed."""
    try:
        summary = run_seed(seed, SimConfig(schedules=3))
    except InvariantViolation as exc:
        pytest.fail(str(exc), pytrace=False)
    assert summary["elections"] >= 1


def test_the_check_sees_a_doubled_tick() -> None:
    """The end-of-run check is not vacuous: one fire counted twice fails it."""
    sim = Simulation(0, SimConfig(schedules=3, steps=300))
    sim.run()
    leader = sim.leader()
    assert leader is not None and leader.node is not None
    schedule = next(iter(leader.node.table.schedules.schedules.values()))
    assert schedule.fired > 0
    schedule.fired += 1  # what a tick fired twice would leave
    with pytest.raises(InvariantViolation, match=r"lost or doubled|does not give its schedules"):
        check_schedules(sim)
