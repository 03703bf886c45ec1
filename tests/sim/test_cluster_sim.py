"""Seeded simulations of a whole cluster under faults; every invariant checked after each step."""

from __future__ import annotations

import pytest

from tcpsched.testing.sim import InvariantViolation, SimConfig, run_seed

SEEDS = range(50)


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_cluster_keeps_every_promise(seed: int) -> None:
    """Crashes, hangs, cuts and drains never lose, double-finish or over-assign a job."""
    try:
        summary = run_seed(seed)
    except InvariantViolation as exc:
        pytest.fail(str(exc), pytrace=False)
    assert summary["jobs"] == SimConfig().jobs


@pytest.mark.parametrize("seed", range(10))
def test_one_small_worker_under_heavy_faults_still_finishes_everything(seed: int) -> None:
    """With a single one-slot worker and many faults, every job still ends once faults stop."""
    config = SimConfig(workers=1, slots_max=1, jobs=15, faults_per_s=1.5)
    try:
        summary = run_seed(seed, config)
    except InvariantViolation as exc:
        pytest.fail(str(exc), pytrace=False)
    assert summary["succeeded"] + summary["failed"] == 15


def test_same_seed_same_run() -> None:
    """A seed replays exactly: two runs of one seed give the same summary."""
    assert run_seed(7) == run_seed(7)


def test_violation_names_the_replay_command() -> None:
    """A broken promise reports the seed and the command that replays it."""
    config = SimConfig(jobs=5, workers=1, slots_max=1, fault_window_s=5.0, settle_s=0.001,
                       job_s_max=50.0)
    with pytest.raises(InvariantViolation) as info:
        run_seed(3, config)
    assert "python -m tcpsched.testing.sim --seed 3" in str(info.value)
