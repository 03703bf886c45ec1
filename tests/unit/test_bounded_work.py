"""Bounded work per loop turn: big requests in steps, stalls excused, prefixes by index,
results trimmed in listings and counted by retention. The scheduler is driven directly."""

from __future__ import annotations

from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.codec import FRAME_BYTES_MAX, encode
from tcpsched.core.detector import ALIVE, DEAD, DetectorConfig, FailureDetector
from tcpsched.core.events import Received, Tick
from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.queries import WORK_PER_TURN
from tcpsched.core.scheduler import SUBMITS_PER_TURN
from tcpsched.core.state import JobTable, job_to_dict
from tests.unit.test_scheduler import CLIENT, Harness

MB = 1024 * 1024


def replies(h: Harness, req_id: int) -> list[Any]:
    return [msg for c, msg in h.sent if c == CLIENT and getattr(msg, "req_id", None) == req_id]


def submit_batch(h: Harness, count: int, **options: Any) -> int:
    h._req += 1
    jobs = tuple(JobSpec(kind="shell", command=f"echo {i}", **options) for i in range(count))
    h.step(Received(CLIENT, m.Submit(req_id=h._req, jobs=jobs)))
    return h._req


def tick_until_answered(h: Harness, req_id: int, beating: tuple[str, ...] = ()) -> int:
    """Tick at one instant (each tick is one loop turn) until the request is answered;
    the workers in `beating` heartbeat between turns. Returns the turns it took."""
    turns = 0
    while not replies(h, req_id):
        turns += 1
        assert turns < 10_000
        for name in beating:
            h.heartbeat(name)
        h.step(Tick())
    return turns


def finish(h: Harness, name: str, job_id: str, result: Any = None, stdout: str = "") -> None:
    attempt = h.sched.table.jobs[job_id].attempts
    h.step(Received(h.conns[name], m.Result(
        job_id=job_id, attempt=attempt, state="succeeded", exit_code=0, result=result,
        stdout=stdout, stderr="", error=None, started_at=h.now, finished_at=h.now)))


# -- the detector and stalls of the leader's loop ------------------------------------------


def test_stall_of_the_leaders_loop_is_not_a_workers_silence() -> None:
    """A gap between steps longer than the check period is the leader's stall: the silence it
    covers is excused, and the heartbeat queued meanwhile, read next, keeps the worker alive."""
    det = FailureDetector(DetectorConfig(heartbeat_interval_s=0.5, timeout_s=2.0))
    det.watch("w1", 0.0)
    det.loop_ran(0.0)
    det.heartbeat("w1", 0.4)
    det.loop_ran(0.4)
    assert det.loop_ran(10.0) > 9.0  # nothing ran for 9.6 s
    assert det.check(10.0) == []
    assert det.state("w1") == ALIVE
    det.heartbeat("w1", 10.01)
    assert det.state("w1") == ALIVE


def test_worker_silent_after_a_stall_dies_after_the_timeout_of_running_time() -> None:
    """A worker that really is gone is still found dead: a timeout after the stall ended,
    less the silence before it."""
    det = FailureDetector(DetectorConfig(heartbeat_interval_s=0.5, timeout_s=2.0))
    det.watch("w1", 0.0)
    det.loop_ran(0.0)
    det.loop_ran(10.0)
    t = 10.0
    while det.state("w1") != DEAD:
        t += 0.1
        det.loop_ran(t)
        det.check(t)
    assert 10.0 + 2.0 - 0.25 - 1e-6 <= t <= 10.0 + 2.0 + 1e-6


def test_long_step_then_tick_judges_nobody_before_their_heartbeats_are_read() -> None:
    """Through the scheduler: a tick that ends a long stall comes before the heartbeats
    queued in it, and declares nobody suspect or dead."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.advance(1.0, beating=("w1",))
    h.now += 6.0  # one step (a big request) kept the loop for 6 s
    h.step(Tick())
    assert h.sched.worker_state("w1") == "alive"
    h.heartbeat("w1")
    h.advance(1.0, beating=("w1",))
    assert h.sched.statistics()["workers_lost"] == 0
    assert h.job(job)["attempts"] == 1
    assert h.sched.statistics()["loop_stall_max_s"] >= 5.0


# -- big requests in bounded steps ------------------------------------------------------------


def test_big_submit_is_recorded_over_turns_and_acknowledged_once_all_are() -> None:
    """A batch far over one turn's work is recorded a bounded number of jobs per turn, with
    heartbeats read between turns; its one reply comes once every job is recorded."""
    h = Harness()
    h.connect("w1")
    count = 10 * SUBMITS_PER_TURN + 7
    req = submit_batch(h, count, delay=600.0)
    assert len(h.sched.table) == SUBMITS_PER_TURN and not replies(h, req)
    turns = tick_until_answered(h, req, beating=("w1",))
    assert turns == 10
    (reply,) = replies(h, req)
    assert len(reply.value) == count == len(h.sched.table)
    assert h.sched.worker_state("w1") == "alive"


def test_requests_of_one_connection_are_answered_in_order() -> None:
    """A small submit sent after a big one waits behind it: seq order is submission order."""
    h = Harness()
    big = submit_batch(h, 3 * SUBMITS_PER_TURN, delay=600.0)
    small = submit_batch(h, 1, delay=600.0)
    assert not replies(h, small)
    tick_until_answered(h, small)
    (first,), (second,) = replies(h, big), replies(h, small)
    seqs = [h.sched.table.jobs[j].seq for j in (*first.value, *second.value)]
    assert seqs == sorted(seqs)


def test_big_list_and_wait_are_built_over_turns() -> None:
    """A listing and a prefix wait over a big table take several turns, not one, and
    their replies hold every record asked for."""
    h = Harness()
    req = submit_batch(h, 6000, delay=600.0)
    tick_until_answered(h, req)
    (reply,) = replies(h, req)
    ids = reply.value
    h._req += 1
    listing = h._req
    h.step(Received(CLIENT, m.ListJobs(req_id=listing, limit=100_000)))
    assert tick_until_answered(h, listing) >= 6000 * 20 // WORK_PER_TURN
    (listed,) = replies(h, listing)
    assert [r["id"] for r in listed.value] == list(reversed(ids))
    h._req += 1
    waiting = h._req
    h.step(Received(CLIENT, m.Wait(req_id=waiting, job_ids=tuple(i[:8] for i in ids),
                                   timeout=0)))
    assert tick_until_answered(h, waiting) >= 1
    (waited,) = replies(h, waiting)
    assert [r["id"] for r in waited.value] == ids


def test_closed_connection_drops_its_reads_but_finishes_its_submit() -> None:
    """A client gone mid-request: its listing is abandoned, its batch recorded whole."""
    h = Harness()
    other = 2000
    from tcpsched.core.events import Closed, Connected
    h.step(Connected(other, "client", "other"))
    jobs = tuple(JobSpec(kind="shell", command="true", delay=600.0)
                 for _ in range(3 * SUBMITS_PER_TURN))
    h.step(Received(other, m.Submit(req_id=1, jobs=jobs)))
    h.step(Received(other, m.ListJobs(req_id=2, limit=100_000)))
    h.step(Closed(other, "reset"))
    while h.sched.backlog:
        h.step(Tick())
    assert len(h.sched.table) == len(jobs)


# -- prefixes ------------------------------------------------------------------------------------


def test_prefix_index_follows_submits_and_forgets() -> None:
    """Ids found by prefix through the index, also for jobs submitted or forgotten after it
    was built; an ambiguous prefix names no job."""
    h = Harness(keep_finished=1)
    h.connect("w1")
    first = h.submit()
    table = h.sched.table
    assert h.sched.resolve(first[:6]).id == first
    second = h.submit()
    assert h.sched.resolve(second[:6]).id == second
    finish(h, "w1", first)
    finish(h, "w1", second)
    third = h.submit()
    finish(h, "w1", third)
    assert first not in table  # forgotten by the count limit
    assert h.sched.resolve(first[:6]) is None
    assert table.ids_with_prefix(third[:4]) == [third]
    twins = JobTable()
    for seq, job_id in enumerate(("abcd0001", "abcd0002"), 1):
        job = JobRecord(id=job_id, seq=seq, spec=JobSpec(kind="shell", command="true"))
        twins.apply({"op": "submit", "job": job_to_dict(job)})
    assert sorted(twins.ids_with_prefix("abcd")) == ["abcd0001", "abcd0002"]
    from tcpsched.core.queries import resolve
    assert resolve(twins, "abcd") is None and resolve(twins, "abcd0002").id == "abcd0002"


# -- results in listings and in retention -------------------------------------------------------


def test_list_of_jobs_with_big_results_fits_a_frame() -> None:
    """Twenty 1 MB results: the listing trims each like output and encodes within the frame
    limit; `status` of one still shows its result whole."""
    h = Harness(keep_output_chars=None)
    h.connect("w1", slots=20)
    ids = [h.submit() for _ in range(20)]
    for job_id in ids:
        finish(h, "w1", job_id, result="r" * MB)
    h._req += 1
    h.step(Received(CLIENT, m.ListJobs(req_id=h._req, limit=100)))
    tick_until_answered(h, h._req)
    (reply,) = replies(h, h._req)
    assert len(reply.value) == 20
    assert len(encode(reply)) < FRAME_BYTES_MAX
    assert all("`status" in r["result"] and len(r["result"]) < MB for r in reply.value)
    h._req += 1
    h.step(Received(CLIENT, m.Status(req_id=h._req, job_ids=(ids[0],))))
    (status,) = replies(h, h._req)
    assert status.value[0]["result"] == "r" * MB


def test_list_replaces_a_big_structured_result_with_a_note() -> None:
    """A big list result is not cut into a different list: it is shown as a note instead."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    finish(h, "w1", job, result=list(range(200_000)))
    h._req += 1
    h.step(Received(CLIENT, m.ListJobs(req_id=h._req, limit=100)))
    (reply,) = replies(h, h._req)
    note = reply.value[0]["result"]
    assert isinstance(note, str) and "list result" in note and job in note


def test_retention_counts_results_in_the_output_budget() -> None:
    """With a 1,000,000-character output budget, 150 jobs with 1 MB results are forgotten
    down to the budget, oldest first, not all kept."""
    h = Harness(keep_output_chars=1_000_000)
    h.connect("w1", slots=150)
    ids = [h.submit() for _ in range(150)]
    for job_id in ids:
        finish(h, "w1", job_id, result="x" * MB)
    table = h.sched.table
    assert len(table) <= 1  # one result alone is over the budget
    assert table.finished_output_chars <= 1_000_000
    assert h.sched.statistics()["finished"] == 150


def test_snapshot_restores_counted_results() -> None:
    """A table rebuilt from a snapshot counts the same results as the live one."""
    h = Harness(keep_output_chars=None)
    h.connect("w1")
    job = h.submit()
    finish(h, "w1", job, result={"big": "y" * 5000}, stdout="out")
    rebuilt = JobTable.from_snapshot(h.sched.table.snapshot())
    assert rebuilt.finished_output_chars == h.sched.table.finished_output_chars > 5000
    assert rebuilt.result_chars == h.sched.table.result_chars
