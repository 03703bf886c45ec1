"""The worker circuit breaker: its transitions (core/breaker.py) and how the scheduler uses it."""

from __future__ import annotations

from tcpsched.core.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker
from tests.unit.test_routing import TagHarness

CFG = BreakerConfig(failures_min=3, cooldown_s=10.0, cooldown_max_s=25.0)


def tripped_breaker(now: float = 0.0) -> CircuitBreaker:
    b = CircuitBreaker(CFG)
    b.succeeded("good", "j0", "mod:f")
    for i in range(3):
        b.failed("bad", f"j{i + 1}", "mod:f", now)
    return b


def test_failures_trip_only_when_the_same_function_succeeded_elsewhere() -> None:
    """Three failures in a row of a function that never succeeded anywhere trip nobody (the
    job is broken, not the host); once it succeeds on another worker, the next one trips."""
    b = CircuitBreaker(CFG)
    for i in range(5):
        assert b.failed("bad", f"j{i}", "mod:f", 0.0) is None
    assert b.state("bad", 0.0) == CLOSED
    b.succeeded("good", "ok", "mod:f")
    reason = b.failed("bad", "j9", "mod:f", 0.0)
    assert reason is not None and "succeeded on good" in reason
    assert b.state("bad", 0.0) == OPEN and not b.allows("bad", 5.0)


def test_a_success_resets_the_streak() -> None:
    """Failures interrupted by a success on the same worker never reach the threshold."""
    b2 = CircuitBreaker(CFG)
    b2.succeeded("good", "x", "mod:f")
    for i in range(6):
        b2.failed("w", f"a{i}", "mod:f", 0.0)
        if i % 2 == 1:
            b2.succeeded("w", f"s{i}", "mod:f")
    assert b2.state("w", 0.0) == CLOSED


def test_cooldown_then_one_probe_success_closes() -> None:
    """An open worker gets nothing during its cool-down, then exactly one probe job; its
    success closes the circuit."""
    b = tripped_breaker()
    assert not b.allows("bad", 9.9)
    assert b.next_deadline() == 10.0
    assert b.due(10.0) == ["bad"]
    assert b.state("bad", 10.0) == HALF_OPEN and b.allows("bad", 10.0)
    b.started("bad", "probe", 10.0)
    assert not b.allows("bad", 10.0)  # one probe at a time
    assert b.succeeded("bad", "probe", "mod:f") is True
    assert b.state("bad", 10.0) == CLOSED and b.allows("bad", 10.0)


def test_a_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    """A failed probe opens the circuit again for twice the cool-down, capped."""
    b = tripped_breaker()
    b.due(10.0)
    b.started("bad", "p1", 10.0)
    assert b.failed("bad", "p1", "mod:f", 10.0) is not None
    assert b.until("bad") == 30.0  # 10 + 2 * 10
    b.due(30.0)
    b.started("bad", "p2", 30.0)
    b.failed("bad", "p2", "mod:f", 30.0)
    assert b.until("bad") == 55.0  # capped at 25
    assert b.trips == 3


def test_a_probe_handed_back_lets_another_probe_go() -> None:
    """A probe that ends without a verdict (handed back, lost) frees the probe slot."""
    b = tripped_breaker()
    b.due(10.0)
    b.started("bad", "p1", 10.0)
    b.released("bad", "p1")
    assert b.allows("bad", 10.0)


def test_scheduler_trips_a_failing_worker_and_sends_the_retries_elsewhere() -> None:
    """A worker whose attempts keep failing while the same command succeeds on another is
    shown tripped with its reason, gets no more jobs, and the retries run on the other;
    explain of a pending job names the tripped worker."""
    h = TagHarness(breaker=BreakerConfig(failures_min=2, cooldown_s=60.0))
    h.connect_tagged("bad", ())
    h.connect_tagged("good", ())
    ids = [h.submit("run", retries=5) for _ in range(6)]
    for _round in range(20):
        for name, state in (("bad", "failed"), ("good", "succeeded")):
            for a in h.assigns(name):
                job = h.sched.table.jobs[a.job_id]
                if job.state.value == "running" and job.worker == name \
                        and job.attempts == a.attempt:
                    h.result(name, a.job_id, a.attempt, state=state, exit_code=int(
                        state == "failed"))
        h.advance(1.0, beating=("bad", "good"))
    assert all(h.sched.table.jobs[j].state.value == "succeeded" for j in ids)
    row = {r["name"]: r for r in h.sched.worker_list()}["bad"]
    assert row["state"] == "tripped" and "succeeded on good" in row["reason"]
    assert h.sched.statistics()["workers_tripped"] == 1
    # With good kept busy, a new job waits, and explain names the tripped worker.
    h.connect_tagged("good", ())  # same worker again: its slot is free; fill it
    busy = h.submit("long")
    pending = h.submit("next")
    assert h.sched.table.jobs[busy].worker == "good"
    reasons = h.explain(pending)["reasons"]
    assert any("worker bad circuit open" in r for r in reasons)
    assert any("capable worker(s) are full" in r for r in reasons)
