"""Seeded simulations of a whole cluster under faults; every invariant checked after each step.

Each run is three coordinator cores, workers and clients on a simulated network, disk and
clock (`tcpsched.testing.sim`): crashes that lose unflushed writes, pauses, clock jumps,
partitions (one-way and asymmetric ones too), lossy peer links, connection resets; then faults
stop and a leader must be elected and every acknowledged job must finish.
"""

from __future__ import annotations

import pytest

from tcpsched.testing.sim import InvariantViolation, SimConfig, run_seed

SEEDS = range(200)
STEPS = 2000


def _run(seed: int, config: SimConfig | None = None) -> dict:
    try:
        return run_seed(seed, config)
    except InvariantViolation as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_cluster_keeps_every_promise(seed: int) -> None:
    """2,000 steps of faults never break a safety invariant, and afterwards a leader is
    elected and every acknowledged job finishes."""
    summary = _run(seed, SimConfig(steps=STEPS))
    assert summary["jobs"] > 0
    assert summary["succeeded"] + summary["failed"] + summary["cancelled"] >= summary["jobs"]


@pytest.mark.parametrize("seed", range(5))
def test_asymmetric_partition_keeps_one_leader_and_does_not_flap(seed: int) -> None:
    """3 reaches 1, 2 reaches 1, 3 and 2 cannot see each other: 3 keeps leading in its
    epoch, nobody else is elected, and submits are still acknowledged through 1."""
    summary = _run(seed, SimConfig(scenario="asymmetric"))
    report = summary["scenario"]
    assert report["leader_at_start"] == 3 and report["leader_at_end"] == 3
    assert report["elections_during"] == 0
    assert report["epoch_at_end"] == report["epoch_at_start"]
    assert report["acked_during"] > 0


@pytest.mark.parametrize("seed", range(5))
def test_after_heavy_faults_a_leader_is_elected_and_every_job_finishes(seed: int) -> None:
    """Liveness: after a long run of frequent faults, a leader within the bound, all jobs done."""
    config = SimConfig(steps=4000, faults_per_s=4.0, jobs=40)
    summary = _run(seed, config)
    assert summary["leader_after_s"] <= config.leader_bound_s
    assert summary["succeeded"] + summary["failed"] + summary["cancelled"] == summary["jobs"]


@pytest.mark.parametrize(("coordinators", "seed"), [(1, 0), (1, 1), (5, 0), (5, 1), (5, 2)])
def test_other_group_sizes_keep_every_promise(coordinators: int, seed: int) -> None:
    """A lone coordinator and a group of five hold the same promises."""
    summary = _run(seed, SimConfig(coordinators=coordinators, steps=STEPS))
    assert summary["jobs"] > 0


def test_same_seed_same_run() -> None:
    """A seed replays exactly: two runs of one seed give the same summary."""
    assert run_seed(7) == run_seed(7)


def test_violation_names_the_replay_command() -> None:
    """A broken promise reports the seed and the command that replays it."""
    config = SimConfig(jobs=5, workers=1, slots_max=1, steps=300, settle_s=0.001,
                       job_s_max=50.0)
    with pytest.raises(InvariantViolation) as info:
        run_seed(3, config)
    command = ("python -m tcpsched.testing.sim --seed 3 --workers 1 --slots-max 1 --jobs 5 "
               "--steps 300 --set settle_s=0.001 --set job_s_max=50.0 --verbose")
    assert command in str(info.value)


def test_the_replay_command_replays_the_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """Running the printed command fails the same way, on the same seed."""
    from tcpsched.testing.sim import main

    code = main(["--seed", "3", "--steps", "300", "--jobs", "5", "--workers", "1",
                 "--slots-max", "1", "--set", "settle_s=0.001", "--set", "job_s_max=50.0"])
    assert code == 1
    assert "FAIL seed 3: 5 job(s) never reached a terminal state" in capsys.readouterr().out


def test_a_seed_replays_exactly_in_another_process() -> None:
    """The replay command reproduces the run in a new process, whatever its hash seed."""
    import os
    import subprocess
    import sys

    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-m", "tcpsched.testing.sim", "--seed", "5"],
                              env=env, capture_output=True, text=True, timeout=120, check=True)
        outputs.add(done.stdout.splitlines()[0])
    assert len(outputs) == 1


@pytest.mark.parametrize("seed", range(100))
def test_seeded_cluster_with_worker_prefetch_keeps_every_promise(seed: int) -> None:
    """Workers holding 1 and 2 assignments beyond their slots (`--prefetch`): the same
    promises hold under the same faults, and every acknowledged job finishes."""
    summary = _run(seed, SimConfig(steps=STEPS, prefetch_max=2))
    assert summary["jobs"] > 0
    assert summary["succeeded"] + summary["failed"] + summary["cancelled"] >= summary["jobs"]


@pytest.mark.parametrize(("coordinators", "seed"),
                         [(1, seed) for seed in range(30)] + [(3, seed) for seed in range(60)])
def test_seeded_cluster_with_background_fsync_keeps_every_promise(coordinators: int,
                                                                  seed: int) -> None:
    """Leaders fsync beside the loop (runtime/syncer.py): `Synced` after a sync that takes up
    to 0.2 s, writes made meanwhile left to the next one, a crash keeping any prefix of what
    was not synced, under three times the usual faults. The same promises hold, and every
    acknowledged job finishes. (Reporting the last seq written instead of the last synced one
    breaks a promise in about half of the single-coordinator seeds here.)"""
    summary = _run(seed, SimConfig(steps=STEPS, coordinators=coordinators, prefetch_max=2,
                                   background_sync=True, sync_s_max=0.2, faults_per_s=5.0))
    assert summary["jobs"] > 0
    assert summary["succeeded"] + summary["failed"] + summary["cancelled"] >= summary["jobs"]
