"""Prefetch (`--prefetch N`, core/prefetch.py): a worker holds assignments beyond its slots and
starts them the moment a slot frees; the queue, cancel and requeue stay with the leader."""

from __future__ import annotations

from typing import Any

from tcpsched.core import messages as m
from tcpsched.core import workerproto as wp
from tcpsched.core.events import Connected, Received
from tcpsched.core.jobs import JobState
from tcpsched.core.prefetch import (
    LONG_JOB_S,
    LOOKAHEAD_COVER_S,
    JobTime,
    Lookahead,
    lookahead_places,
)
from tests.unit.test_scheduler import Harness as LeaderHarness
from tests.unit.test_workerproto import Harness as WorkerHarness
from tests.unit.test_workerproto import assign, ref, sent


def started(effects: list[Any]) -> list[str]:
    return [e.assign.job_id for e in effects if isinstance(e, wp.StartJob)]


# -- the worker's side ------------------------------------------------------------------------


def test_lookahead_keeps_arrival_order_and_its_depth() -> None:
    """The lookahead hands out its oldest assignment first and has room for `depth` only."""
    waiting = Lookahead(2)
    waiting.put(assign("a"))
    assert waiting.has_room()
    waiting.put(assign("b"))
    assert not waiting.has_room() and waiting.items() == [("a", 1), ("b", 1)]
    assert waiting.remove("a", attempt=2) is None  # another attempt is not taken out
    taken = waiting.take_oldest()
    assert taken is not None and taken.job_id == "a" and len(waiting) == 1


def test_assignments_beyond_the_slots_wait_and_start_as_one_finishes() -> None:
    """Up to `slots` start at once, `prefetch` more wait; beyond both it is handed back; a
    finished attempt's slot goes to the oldest waiting one in the same step."""
    h = WorkerHarness(slots=1, prefetch=2)
    session, _ = h.register()
    effects = [e for job in ("j1", "j2", "j3", "j4") for e in h.receive(session, assign(job))]
    assert started(effects) == ["j1"]
    assert [b.job_id for b in sent(effects, m.HandBack)] == ["j4"]
    assert h.proto.statistics().waiting == 2
    effects = h.finish("j1", 1)
    assert started(effects) == ["j2"]
    assert [r.job_id for r in sent(effects, m.Result)] == ["j1"]
    assert started(h.finish("j2", 1)) == ["j3"]
    assert started(h.finish("j3", 1)) == []


def test_waiting_assignments_are_reported_as_held() -> None:
    """Heartbeats and Register name prefetched attempts too, and Register says the depth, so
    the leader counts them as this worker's and never loses them as missing."""
    h = WorkerHarness(slots=1, prefetch=2)
    session, register = h.register()
    for job in ("j1", "j2", "j3"):
        h.receive(session, assign(job))
    (beat, *_) = sent(h.advance(0.6), m.Heartbeat)
    assert beat.running == (ref("j1"), ref("j2"), ref("j3"))
    h.step(wp.SessionClosed(session, "reset"))
    _, register = h.connect()
    assert register.running == (ref("j1"), ref("j2"), ref("j3")) and register.prefetch == 2


def test_a_killed_waiting_assignment_never_starts() -> None:
    """A Kill of a prefetched attempt takes it out without running it and reports it as a
    cancelled result (which frees its place at the leader); the next one starts instead."""
    h = WorkerHarness(slots=1, prefetch=2)
    session, _ = h.register()
    for job in ("j1", "j2", "j3"):
        h.receive(session, assign(job))
    effects = h.receive(session, m.Kill(job_id="j2", attempt=1, reason="cancelled", epoch=1))
    assert not any(isinstance(e, wp.KillJob) for e in effects)
    (report,) = sent(effects, m.Result)
    assert (report.job_id, report.state) == ("j2", "cancelled")
    assert started(h.finish("j1", 1)) == ["j3"]
    assert started(h.finish("j3", 1)) == []


def test_a_drain_hands_back_what_waits_at_once() -> None:
    """Draining: a prefetched attempt has nothing to finish, so it goes back at once, while the
    running one gets its drain timeout."""
    h = WorkerHarness(slots=1, prefetch=2)
    session, _ = h.register()
    for job in ("j1", "j2", "j3"):
        h.receive(session, assign(job))
    effects = h.step(wp.DrainRequested())
    assert [b.job_id for b in sent(effects, m.HandBack)] == ["j2", "j3"]
    assert started(h.finish("j1", 1)) == []


def test_a_repeated_assignment_of_a_waiting_attempt_is_a_duplicate() -> None:
    """The same attempt twice waits once; a newer attempt replaces the waiting one."""
    h = WorkerHarness(slots=1, prefetch=2)
    session, _ = h.register()
    h.receive(session, assign("j1"))
    h.receive(session, assign("j2"))
    assert not sent(h.receive(session, assign("j2")), m.HandBack)
    h.receive(session, assign("j2", attempt=2))
    assert h.proto.waiting.items() == [("j2", 2)]
    (effect,) = [e for e in h.finish("j1", 1) if isinstance(e, wp.StartJob)]
    assert effect.assign.attempt == 2


def test_without_prefetch_a_busy_worker_hands_back() -> None:
    """`--prefetch 0` is the old rule: an Assign beyond the free slots is handed back."""
    h = WorkerHarness(slots=1, prefetch=0)
    session, _ = h.register()
    h.receive(session, assign("j1"))
    assert [b.job_id for b in sent(h.receive(session, assign("j2")), m.HandBack)] == ["j2"]


# -- the leader's side ------------------------------------------------------------------------


def connect(h: LeaderHarness, name: str, slots: int = 1, prefetch: int = 2) -> int:
    conn = h._next_conn
    h._next_conn += 1
    h.conns[name] = conn
    h.step(Connected(conn, "worker", name))
    h.step(Received(conn, m.Register(name=name, slots=slots, prefetch=prefetch)))
    return conn


def test_the_leader_assigns_slots_plus_prefetch_and_no_start_time_for_waiting_ones() -> None:
    """On a result the worker is refilled up to slots + prefetch; the attempts beyond its
    slots are running on it with no started_at until their result brings the worker's own."""
    h = LeaderHarness()
    connect(h, "w1", slots=1, prefetch=2)
    ids = [h.submit() for _ in range(6)]
    assert [a.job_id for a in h.assigns("w1")] == ids[:1]
    h.result("w1", ids[0], 1)
    assert [a.job_id for a in h.assigns("w1")] == ids[:4]
    table = h.sched.table.jobs
    assert table[ids[1]].started_at is not None
    assert table[ids[2]].started_at is None and table[ids[2]].state is JobState.RUNNING
    row = h.sched.worker_list()[0]
    assert (row["slots"], row["running"], row["prefetch"], row["prefetched"]) == (1, 1, 2, 2)
    h.result("w1", ids[1], 1)
    h.now += 1.0
    h.result("w1", ids[2], 1)
    assert table[ids[2]].started_at == h.now  # the worker's own time, from its result
    assert [a.job_id for a in h.assigns("w1")] == ids


def test_jobs_submitted_while_a_worker_is_busy_wait_in_the_queue() -> None:
    """Prefetch places are filled only when the worker reports a result, from the head of the
    queue: jobs submitted while it is busy wait in the coordinator, in priority order."""
    h = LeaderHarness()
    connect(h, "w1", slots=1, prefetch=2)
    first = h.submit()
    low, high = h.submit(priority=0), h.submit(priority=5)
    assert [a.job_id for a in h.assigns("w1")] == [first]
    h.result("w1", first, 1)
    assert [a.job_id for a in h.assigns("w1")] == [first, high, low]


def test_cancelling_a_prefetched_job_kills_it_and_frees_its_place() -> None:
    """Cancel of a prefetched job: cancelled at once, the worker told to kill it; its report
    frees the place for the next job of the queue."""
    h = LeaderHarness()
    connect(h, "w1", slots=1, prefetch=1)
    ids = [h.submit() for _ in range(4)]
    h.result("w1", ids[0], 1)
    assert [a.job_id for a in h.assigns("w1")] == ids[:3]
    h._req += 1
    h.step(Received(1000, m.Cancel(req_id=h._req, job_id=ids[2])))
    assert h.job(ids[2])["state"] == "cancelled"
    assert [k.job_id for k in h.sent_to("w1", m.Kill)] == [ids[2]]
    h.result("w1", ids[2], 1, state="cancelled")
    assert [a.job_id for a in h.assigns("w1")] == ids
    assert h.job(ids[2])["state"] == "cancelled"


def test_a_dead_workers_prefetched_jobs_are_requeued_and_run_elsewhere() -> None:
    """A worker declared dead loses its prefetched attempts with its running one: all go back
    to the queue and to the next worker."""
    h = LeaderHarness()
    connect(h, "w1", slots=1, prefetch=2)
    ids = [h.submit() for _ in range(4)]
    h.result("w1", ids[0], 1)
    assert [a.job_id for a in h.assigns("w1")] == ids
    h.kill("w1")
    h.advance(3.0)
    assert all(h.job(i)["state"] == "pending" for i in ids[1:])
    connect(h, "w2", slots=1, prefetch=2)
    h.result("w2", ids[1], 2)
    assert [a.job_id for a in h.assigns("w2")] == ids[1:]
    assert all(h.job(i)["worker"] == "w2" and h.job(i)["attempts"] == 2 for i in ids[1:])


def test_heartbeats_that_name_prefetched_jobs_keep_them() -> None:
    """Reconciliation counts prefetched attempts as held: beats naming them lose nothing, and
    an attempt left out of them (never received) is lost and requeued as before."""
    h = LeaderHarness()
    connect(h, "w1", slots=1, prefetch=2)
    ids = [h.submit() for _ in range(4)]
    h.result("w1", ids[0], 1)
    h.advance(5.0, beating=("w1",))
    assert all(h.job(i)["state"] == "running" for i in ids[1:])
    for _ in range(4):
        h.now += 0.5
        h.heartbeat("w1", running=((ids[1], 1), (ids[2], 1)))
    assert h.job(ids[3])["state"] == "pending"
    assert all(h.job(i)["state"] == "running" for i in ids[1:3])


def test_a_high_priority_job_takes_the_first_place_that_frees() -> None:
    """The queue stays with the leader: a high-priority job submitted while every place holds
    low-priority jobs is the next one assigned when a place frees, so it waits behind no more
    than the prefetch depth at that worker."""
    h = LeaderHarness()
    prefetch = 2
    connect(h, "w1", slots=1, prefetch=prefetch)
    low = [h.submit(priority=0) for _ in range(7)]
    h.result("w1", low[0], 1)
    assert [a.job_id for a in h.assigns("w1")] == low[:4]
    high = h.submit(priority=9)
    assert h.assigns("w1")[-1].job_id == low[3]
    h.result("w1", low[1], 1)
    assert h.assigns("w1")[-1].job_id == high
    ahead = [j for j in h.sched.workers["w1"].running if j != high]
    assert ahead == low[2:4] and len(ahead) <= prefetch


def test_lookahead_places_cover_a_round_trip_of_the_workers_job_times() -> None:
    """Rule: the leader fills as many places as the worker gets through in LOOKAHEAD_COVER_S
    (at least one, at most its cap); none for jobs of LONG_JOB_S or more; one a slot before
    any of its jobs has finished; all of the cap for jobs that take no time."""
    assert lookahead_places(0, 1, 0.0) == 0
    assert lookahead_places(16, 1, None) == 1 and lookahead_places(16, 4, None) == 4
    assert lookahead_places(16, 1, 0.0) == 16
    assert lookahead_places(16, 1, LOOKAHEAD_COVER_S / 5) == 5
    assert lookahead_places(16, 2, LOOKAHEAD_COVER_S / 5) == 10
    assert lookahead_places(16, 1, LOOKAHEAD_COVER_S / 100) == 16
    assert lookahead_places(16, 1, LOOKAHEAD_COVER_S * 2) == 1
    assert lookahead_places(16, 8, LONG_JOB_S * 0.99) == 1
    assert lookahead_places(16, 8, LONG_JOB_S) == 0
    average = JobTime()
    average.add(10.0, 10.5)
    assert average.average_s == 0.5
    average.add(20.0, 19.0)  # a clock that went back counts as no time
    assert average.average_s == 0.375


def test_the_leader_sizes_a_workers_lookahead_by_its_job_times() -> None:
    """Short jobs fill the whole cap; as the worker's jobs get slower its lookahead shrinks,
    and once they take LONG_JOB_S or more it gets no prefetched jobs at all (a job waiting
    behind a long one could have started elsewhere)."""
    h = LeaderHarness()
    connect(h, "w1", slots=1, prefetch=8)
    ids = [h.submit() for _ in range(60)]
    assert len(h.assigns("w1")) == 1
    h.result("w1", ids[0], 1)  # no time at all: the whole cap
    assert len(h.assigns("w1")) == 1 + 1 + 8
    h.result("w1", ids[1], 1, took=LOOKAHEAD_COVER_S / 2.5)  # average cover/10: still the cap
    assert len(h.sched.workers["w1"].running) == 1 + 8
    for i in range(2, 40):
        h.result("w1", ids[i], 1, took=LOOKAHEAD_COVER_S / 2.5)  # the average nears cover/2.5
    assert len(h.sched.workers["w1"].running) == 1 + 3
    for _ in range(10):
        oldest = next(iter(h.sched.workers["w1"].running))
        h.result("w1", oldest, 1, took=2 * LONG_JOB_S)
    average = h.sched.workers["w1"].job_time.average_s
    assert average is not None and average >= LONG_JOB_S
    assert len(h.sched.workers["w1"].running) == 1  # its slot only
    assert any(h.job(i)["state"] == "pending" for i in ids)
