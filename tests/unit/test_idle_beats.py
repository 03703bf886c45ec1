"""Idle workers' heartbeats on the leader: most change nothing, and cost it next to nothing,
yet time still acts on the first step at or after each deadline (core/scheduler.py,
`_idle_beat_step`), whoever's heartbeat that step is."""

from __future__ import annotations

from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.events import Journal, Received
from tcpsched.core.jobs import JobSpec
from tcpsched.core.workerside import MISSING_BEATS_MAX, MISSING_GRACE_BEATS
from tests.unit.test_scheduler import Harness


def _count_calls(obj: Any, name: str) -> list[int]:
    """Wrap `obj.name` so each call is counted in the returned one-item list."""
    calls = [0]
    inner = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return inner(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


def _beat_without_ticks(h: Harness, seconds: float, beating: tuple[str, ...]) -> None:
    """Only heartbeats come in, every 0.1s: no timer fires, so time acts through them alone."""
    end = h.now + seconds
    while h.now < end:
        h.now = min(end, h.now + 0.1)
        for name in beating:
            h.heartbeat(name)


def test_an_idle_heartbeat_before_any_deadline_skips_the_timed_work() -> None:
    """Heartbeats of idle workers while nothing timed is due do not run the timed work (the
    detector's check, waits, retention, the resync): only the first step at or after the
    earliest deadline does."""
    h = Harness()
    h.connect("w1")
    h.connect("w2")
    advances = _count_calls(h.sched, "_advance")
    deadline = h.sched.next_deadline()
    assert deadline is not None and deadline > h.now
    for _ in range(50):
        h.heartbeat("w1")
        h.heartbeat("w2")
    assert advances[0] == 0
    assert h.sched.next_deadline() == deadline
    h.now = deadline
    h.heartbeat("w1")
    assert advances[0] == 1
    assert h.sched.next_deadline() > deadline  # the detector's check ran and set the next


def test_a_silent_worker_is_declared_dead_by_other_workers_heartbeats_alone() -> None:
    """A worker that stops beating is suspect, then dead, on time, even when the only steps
    the leader takes are other idle workers' heartbeats."""
    h = Harness()
    h.connect("quiet")
    h.connect("w2")
    _beat_without_ticks(h, 1.2, beating=("w2",))
    assert h.sched.worker_state("quiet") == "suspect"
    _beat_without_ticks(h, 1.0, beating=("w2",))
    assert h.sched.worker_state("quiet") == "dead"
    assert h.sched.worker_state("w2") == "alive"


def test_a_heartbeat_that_leaves_out_an_assigned_attempt_is_still_noticed() -> None:
    """An attempt a busy worker leaves out of its heartbeats is lost after MISSING_BEATS_MAX
    of them (past the Assign's grace), with only heartbeats coming in."""
    h = Harness()
    h.connect("w1")
    job_id = h.submit()
    (assign,) = h.assigns("w1")
    _beat_without_ticks(h, MISSING_GRACE_BEATS * 0.5 + 0.1, beating=())
    for _ in range(MISSING_BEATS_MAX):
        h.heartbeat("w1", running=())
    # Lost, and started again (on the only worker there is) as the next attempt.
    assert h.job(job_id)["attempts"] == assign.attempt + 1
    assert h.sched.workers["w1"].running[job_id] == assign.attempt + 1


def test_a_delayed_job_submitted_between_idle_heartbeats_moves_the_deadline() -> None:
    """`next_deadline()` stays known across idle heartbeats, and is asked again once anything
    else changes the scheduler: here a delayed job submitted directly, due before the
    detector's next check (at most a quarter second away)."""
    h = Harness()
    h.connect("w1", slots=1)
    for _ in range(3):
        h.heartbeat("w1")
    before = h.sched.next_deadline()
    h.sched.submit(JobSpec(kind="shell", command="true", delay=0.1), h.now)
    assert before is not None and before > h.now + 0.1
    assert h.sched.next_deadline() == h.now + 0.1


def test_a_wait_request_between_idle_heartbeats_moves_the_deadline() -> None:
    """A client's wait with a timeout, arriving between idle heartbeats, is timed out on time:
    its deadline is the next one, and the first idle heartbeat after it answers it."""
    h = Harness()
    h.connect("w1", slots=1)
    job_id = h.submit(command="sleep 100")
    h.heartbeat("w1")
    h.step(Received(1000, m.Wait(req_id=99, job_ids=(job_id,), timeout=0.1)))
    h.heartbeat("w1")
    assert h.sched.next_deadline() == h.now + 0.1
    h.now += 0.15
    h.heartbeat("w1")
    assert [msg for _, msg in h.sent if getattr(msg, "req_id", None) == 99]


def test_the_resync_rebuilds_the_free_set_only_when_it_drifted() -> None:
    """Once per heartbeat interval the free set is checked against every worker: left as it
    is when it matches (the usual case, so no rebuild), rebuilt when it does not."""
    h = Harness()
    for name in ("w1", "w2", "w3"):
        h.connect(name)
    h.advance(0.6, beating=("w1", "w2", "w3"))
    rebuilds = _count_calls(h.sched.free, "clear")
    h.advance(1.2, beating=("w1", "w2", "w3"))
    assert rebuilds[0] == 0
    h.sched.free.set("w2", None)  # a refresh that was missed
    h.advance(0.6, beating=("w1", "w2", "w3"))
    assert rebuilds[0] == 1
    assert h.sched.free.names == ["w1", "w2", "w3"]


def test_a_schedule_due_by_the_wall_clock_fires_on_an_idle_heartbeat() -> None:
    """Schedules run on the wall clock: after a step of it (NTP), an idle worker's heartbeat
    fires what became due, as any other step does, although no monotonic deadline has come."""
    h = Harness()
    h.connect("w1")
    h.step(Received(1000, m.ScheduleAdd(req_id=1, name="s", every=60.0,
                                        job=JobSpec(kind="shell", command="true"))))
    for _ in range(3):
        h.heartbeat("w1")
    effects = h.sched.step(Received(h.conns["w1"], m.Heartbeat()), h.now, h.now + 120.0)
    fires = [e.record for e in effects if isinstance(e, Journal) and e.record["op"] == "fire"]
    assert len(fires) == 1 and fires[0]["name"] == "s"
