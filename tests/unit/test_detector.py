"""The heartbeat failure detector, driven by an injected clock (no I/O, no event loop)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.detector import ALIVE, DEAD, SUSPECT, DetectorConfig, FailureDetector

INTERVAL = 0.5
TIMEOUT = 2.0


def make(interval: float = INTERVAL, timeout: float = TIMEOUT) -> FailureDetector:
    return FailureDetector(DetectorConfig(heartbeat_interval_s=interval, timeout_s=timeout))


def run_checks(det: FailureDetector, until: float) -> list[tuple[float, str, str]]:
    """Run every check the detector asks for up to `until`; the transitions, with times."""
    seen = []
    while (deadline := det.next_deadline()) is not None and deadline <= until:
        seen.extend((deadline, name, state) for name, state in det.check(deadline))
    return seen


def test_new_worker_is_alive() -> None:
    """A watched worker starts alive; an unknown one reads as dead."""
    det = make()
    det.watch("w1", 0.0)
    assert det.state("w1") == ALIVE
    assert det.state("nobody") == DEAD


def test_silence_makes_suspect_then_dead() -> None:
    """Without heartbeats: alive, then suspect after two intervals, then dead at the timeout."""
    det = make()
    det.watch("w1", 0.0)
    changes = run_checks(det, 10.0)
    assert [(name, state) for _, name, state in changes] == [("w1", SUSPECT), ("w1", DEAD)]
    (t_suspect, _, _), (t_dead, _, _) = changes
    assert 2 * INTERVAL <= t_suspect < 2 * INTERVAL + det.config.check_period_s + 1e-9
    assert TIMEOUT <= t_dead < TIMEOUT + det.config.check_period_s + 1e-9
    assert det.state("w1") == DEAD


def test_heartbeat_brings_suspect_back() -> None:
    """A heartbeat from a suspect worker makes it alive again, and reports that it did."""
    det = make()
    det.watch("w1", 0.0)
    run_checks(det, 1.5)
    assert det.state("w1") == SUSPECT
    assert det.heartbeat("w1", 1.5) is True
    assert det.state("w1") == ALIVE
    assert det.heartbeat("w1", 1.6) is False  # already alive: nothing changed
    assert run_checks(det, 1.6 + 2 * INTERVAL - 0.01) == []


def test_dead_is_final_until_watched_again() -> None:
    """A heartbeat cannot revive the dead; only a new registration (watch) does."""
    det = make()
    det.watch("w1", 0.0)
    run_checks(det, 5.0)
    assert det.heartbeat("w1", 5.0) is False
    assert det.state("w1") == DEAD
    det.watch("w1", 6.0)
    assert det.state("w1") == ALIVE


def test_disconnect_makes_suspect_at_once_and_dead_at_timeout() -> None:
    """A closed connection is suspect immediately; dead once the timeout since the last beat."""
    det = make()
    det.watch("w1", 0.0)
    det.heartbeat("w1", 1.0)
    assert det.disconnected("w1") is True
    assert det.state("w1") == SUSPECT
    assert det.disconnected("w1") is False
    changes = run_checks(det, 10.0)
    assert [(n, s) for _, n, s in changes] == [("w1", DEAD)]
    assert changes[0][0] >= 1.0 + TIMEOUT


def test_watch_disconnected_starts_suspect() -> None:
    """A placeholder for a worker not yet reconnected (after recovery) starts suspect."""
    det = make()
    det.watch("w1", 0.0, connected=False)
    assert det.state("w1") == SUSPECT


def test_no_checks_when_everyone_is_dead() -> None:
    """Once every worker is dead the detector asks for no more timer ticks."""
    det = make()
    det.watch("w1", 0.0)
    run_checks(det, 10.0)
    assert det.next_deadline() is None


def test_statistics_count_states() -> None:
    """statistics() counts workers by state."""
    det = make()
    det.watch("a", 0.0)
    det.watch("b", 0.0)
    det.watch("c", 0.0)
    det.disconnected("b")
    stats = det.statistics()
    assert (stats.alive, stats.suspect, stats.dead) == (2, 1, 0)


@given(
    seed=st.integers(0, 2**32),
    interval=st.sampled_from([0.1, 0.2, 0.5, 1.0]),
    jitter_fraction=st.floats(0.0, 0.9),
)
def test_jittered_heartbeats_never_flap(seed: int, interval: float, jitter_fraction: float) -> None:
    """Heartbeats late by up to 90% of an interval never make a worker suspect or dead."""
    rng = random.Random(seed)
    det = make(interval=interval, timeout=4 * interval)
    det.watch("w1", 0.0)
    t = 0.0
    for _ in range(200):
        t += interval + rng.uniform(0.0, jitter_fraction * interval)
        assert run_checks(det, t) == []
        det.heartbeat("w1", t)
        assert det.state("w1") == ALIVE


@given(gap=st.floats(0.0, 10.0), timeout=st.floats(0.5, 5.0))
def test_state_follows_silence(gap: float, timeout: float) -> None:
    """After `gap` seconds of silence the state is exactly what the thresholds say."""
    interval = timeout / 4
    det = make(interval=interval, timeout=timeout)
    det.watch("w1", 0.0)
    det.check(gap)
    expected = DEAD if gap >= timeout else SUSPECT if gap >= 2 * interval else ALIVE
    assert det.state("w1") == expected
