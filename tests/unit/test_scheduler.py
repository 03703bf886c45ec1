"""The scheduler driven directly with events (no sockets, no clock): failures and recovery."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.events import Close, Closed, Connected, Effect, Received, Send, Tick
from tcpsched.core.jobs import JobSpec
from tcpsched.core.scheduler import Scheduler, SchedulerConfig, retry_delay

CLIENT = 1000


class Harness:
    """A scheduler plus the bookkeeping a test needs: connections, time, what was sent."""

    def __init__(self, **config: Any) -> None:
        options = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 2.0, **config}
        self.now = 1000.0
        self.sched = Scheduler(SchedulerConfig(**options), random.Random(7), self.now)
        self.sent: list[tuple[int, Any]] = []
        self.closed: list[int] = []
        self.conns: dict[str, int] = {}
        self._next_conn = 1
        self._req = 0
        self.step(Connected(CLIENT, "client", "test"))

    def step(self, event: Any) -> list[Effect]:
        effects = self.sched.step(event, self.now)
        for effect in effects:
            if isinstance(effect, Send):
                self.sent.append((effect.conn, effect.msg))
            elif isinstance(effect, Close):
                self.closed.append(effect.conn)
        return effects

    def advance(self, seconds: float, beating: tuple[str, ...] = ()) -> None:
        """Let time pass in small steps, firing every timer; `beating` workers keep beating."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 0.1)
            for name in beating:
                self.heartbeat(name)
            self.step(Tick())

    def connect(self, name: str, slots: int = 1,
                running: tuple[tuple[str, int], ...] = ()) -> int:
        conn = self._next_conn
        self._next_conn += 1
        self.conns[name] = conn
        self.step(Connected(conn, "worker", name))
        refs = tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in running)
        self.step(Received(conn, m.Register(name=name, slots=slots, running=refs)))
        return conn

    def heartbeat(self, name: str, running: tuple[tuple[str, int], ...] | None = None) -> None:
        if running is None:
            entry = self.sched.workers[name]
            refs = tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in entry.running.items())
        else:
            refs = tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in running)
        self.step(Received(self.conns[name], m.Heartbeat(running=refs)))

    def submit(self, command: str = "true", **options: Any) -> str:
        self._req += 1
        self.step(Received(CLIENT, m.Submit(req_id=self._req,
                                            jobs=(JobSpec(kind="shell", command=command,
                                                          **options),))))
        (reply,) = [msg for c, msg in self.sent if c == CLIENT and isinstance(msg, m.Reply)
                    and msg.req_id == self._req]
        return str(reply.value[0])

    def result(self, name: str, job_id: str, attempt: int, state: str = "succeeded",
               exit_code: int = 0, *, took: float = 0.0) -> None:
        self.step(Received(self.conns[name], m.Result(
            job_id=job_id, attempt=attempt, state=state, exit_code=exit_code, result=None,
            stdout="", stderr="", error=None if state == "succeeded" else f"exit {exit_code}",
            started_at=self.now - took, finished_at=self.now,
        )))  # fmt: skip

    def assigns(self, name: str) -> list[m.Assign]:
        conn = self.conns[name]
        return [msg for c, msg in self.sent if c == conn and isinstance(msg, m.Assign)]

    def sent_to(self, name: str, kind: type) -> list[Any]:
        conn = self.conns[name]
        return [msg for c, msg in self.sent if c == conn and isinstance(msg, kind)]

    def job(self, job_id: str) -> dict[str, Any]:
        record = self.sched.table.jobs[job_id]
        return {"state": record.state.value, "attempts": record.attempts,
                "worker": record.worker, "error": record.error,
                "lost_workers": record.lost_workers, "failures": record.failures}

    def kill(self, name: str) -> None:
        """The worker's process died: its connection closes, nothing more comes from it."""
        self.step(Closed(self.conns.pop(name), "connection reset"))


# -- retry backoff ---------------------------------------------------------------------------------


@given(failures=st.integers(1, 200), base=st.floats(0.001, 10.0), cap=st.floats(0.001, 600.0),
       seed=st.integers(0, 2**32))
def test_retry_delay_within_full_jitter_bounds(failures: int, base: float, cap: float,
                                               seed: int) -> None:
    """Retry n waits uniformly within [0, min(cap, base * 2**(n-1))], never more."""
    delay = retry_delay(failures, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** (failures - 1))


def test_retry_delay_grows_and_caps() -> None:
    """The ceiling doubles with each failure until the cap; the jitter spreads over it."""
    rng = random.Random(1)
    first = [retry_delay(1, 1.0, 60.0, rng) for _ in range(500)]
    late = [retry_delay(20, 1.0, 60.0, rng) for _ in range(500)]
    assert max(first) <= 1.0 and max(late) <= 60.0
    assert max(late) > 30.0  # capped at 60, not stuck at the base
    assert min(late) < 10.0  # full jitter: low values stay possible


# -- the detector, through the scheduler -----------------------------------------------------------


def test_worker_states_alive_suspect_dead() -> None:
    """`workers` shows alive, then suspect when silent, then dead after the timeout."""
    h = Harness()
    h.connect("w1")
    assert h.sched.worker_list()[0]["state"] == "alive"
    h.advance(1.2)
    assert h.sched.worker_list()[0]["state"] == "suspect"
    h.advance(1.2)
    assert h.sched.worker_list()[0]["state"] == "dead"
    assert h.sched.statistics()["workers_lost"] == 1


def test_closed_connection_is_suspect_at_once() -> None:
    """A worker whose connection closes is suspect immediately and gets no new jobs."""
    h = Harness()
    h.connect("w1")
    h.kill("w1")
    assert h.sched.worker_list()[0]["state"] == "suspect"
    h.conns["w1"] = -1  # so assigns() can look: nothing may reach the closed connection
    h.submit()
    assert h.assigns("w1") == []


# -- reassignment ----------------------------------------------------------------------------------


def test_dead_workers_job_requeued_ahead_of_later_submissions() -> None:
    """A lost job keeps its place: it runs before jobs submitted after it, as attempt 2."""
    h = Harness()
    h.connect("w1")
    first = h.submit()
    assert [a.job_id for a in h.assigns("w1")] == [first]
    later = h.submit()
    h.kill("w1")
    h.advance(2.5)
    assert h.job(first)["state"] == "pending"
    assert h.job(first)["lost_workers"] == 1
    h.connect("w2")
    (assign,) = h.assigns("w2")
    assert (assign.job_id, assign.attempt) == (first, 2)
    h.result("w2", first, 2)
    assert h.job(first) | {"error": None} == {
        "state": "succeeded", "attempts": 2, "worker": "w2", "error": None,
        "lost_workers": 1, "failures": 0,
    }  # fmt: skip
    assert [a.job_id for a in h.assigns("w2")] == [first, later]
    assert h.sched.statistics()["reassigned"] == 1


def test_stale_result_is_acked_and_ignored() -> None:
    """A result for an attempt that was reassigned is acknowledged but changes nothing."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.advance(2.5, beating=())  # w1 hangs: declared dead
    assert h.job(job)["state"] == "pending"
    h.connect("w2")
    h.advance(0.1, beating=("w2",))
    assert h.job(job)["worker"] == "w2"
    # w1 wakes up and reconnects; its old attempt finishes and reports.
    h.connect("w1", running=((job, 1),))
    h.result("w1", job, 1, state="failed", exit_code=3)
    assert h.sent_to("w1", m.ResultAck)[-1] == m.ResultAck(job_id=job, attempt=1, epoch=1)
    assert h.job(job)["state"] == "running"
    assert h.job(job)["failures"] == 0
    h.result("w2", job, 2)
    assert h.job(job)["state"] == "succeeded"
    h.result("w1", job, 1)  # a late duplicate: still ignored
    assert h.job(job)["worker"] == "w2"


def test_reregister_with_stale_attempt_is_told_to_kill_it() -> None:
    """A worker back from the dead that still runs a reassigned attempt must kill it."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.advance(2.5)
    h.connect("w2")
    h.connect("w1", running=((job, 1),))
    (registered,) = h.sent_to("w1", m.Registered)[-1:]
    assert registered.kill == (m.AttemptRef(job_id=job, attempt=1),)
    assert h.sched.workers["w1"].running == {}
    assert h.sched.worker_list()[0]["state"] == "alive"


def test_reregister_in_time_keeps_its_attempts() -> None:
    """A worker that reconnects before the timeout keeps its job: it is not started twice."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.kill("w1")
    h.advance(1.0)
    h.connect("w2")
    h.connect("w1", running=((job, 1),))
    assert h.sent_to("w1", m.Registered)[-1].kill == ()
    h.advance(3.0, beating=("w1", "w2"))
    assert h.job(job) | {"error": None} == {
        "state": "running", "attempts": 1, "worker": "w1", "error": None,
        "lost_workers": 0, "failures": 0,
    }  # fmt: skip
    assert h.assigns("w2") == []


def test_reregister_without_its_attempts_requeues_them() -> None:
    """A worker that restarted (reports nothing) loses the attempts it held, at once."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.kill("w1")
    h.connect("w1")
    assert h.job(job)["lost_workers"] == 1
    assert [(a.job_id, a.attempt) for a in h.assigns("w1")][-1] == (job, 2)
    assert h.sched.statistics()["workers_lost"] == 1


def test_heartbeat_with_unwanted_attempt_triggers_kill() -> None:
    """A heartbeat listing an attempt we no longer want gets a Kill for exactly that attempt."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.heartbeat("w1", running=((job, 1), ("0000deadbeef", 4)))
    kills = h.sent_to("w1", m.Kill)
    assert kills == [m.Kill(job_id="0000deadbeef", attempt=4, reason="stale attempt", epoch=1)]


def test_cancelled_running_job_result_is_ignored() -> None:
    """Cancelling a running job sends Kill; the attempt's late success does not revive it."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.step(Received(CLIENT, m.Cancel(req_id=99, job_id=job)))
    assert h.sent_to("w1", m.Kill)[-1].job_id == job
    h.result("w1", job, 1)
    assert h.job(job)["state"] == "cancelled"


# -- poison ----------------------------------------------------------------------------------------


def test_poison_job_fails_after_three_lost_workers_while_others_run() -> None:
    """A job that takes its worker down every time fails with "lost 3 workers"; others finish."""
    h = Harness()
    h.connect("good", slots=1)
    poison = h.submit("crash")
    h.connect("v1")  # the poison job went to "good" first; kill whoever holds it each time
    others = [h.submit(f"echo {i}") for i in range(3)]
    victims = 0
    for _ in range(10):
        holder = h.job(poison)["worker"]
        if holder is None:
            h.connect(f"v{victims + 2}")
            continue
        h.kill(holder)
        victims += 1
        h.advance(2.5, beating=tuple(n for n in h.conns if n != holder))
        if h.job(poison)["state"] != "pending":
            break
        h.connect(holder)  # restarted under the same name
        # finish whatever the good worker holds, so the other jobs progress meanwhile
        for name in list(h.conns):
            for job_id, attempt in list(h.sched.workers[name].running.items()):
                if job_id != poison:
                    h.result(name, job_id, attempt)
    assert h.job(poison)["state"] == "failed"
    assert h.job(poison)["error"] == "lost 3 workers"
    assert victims == 3
    assert h.sched.statistics()["poisoned"] == 1
    h.connect("fresh", slots=4)
    h.advance(0.2, beating=tuple(h.conns))
    for name in list(h.conns):
        for job_id, attempt in list(h.sched.workers[name].running.items()):
            h.result(name, job_id, attempt)
    assert all(h.job(j)["state"] == "succeeded" for j in others)


def test_poison_limit_is_configurable() -> None:
    """With poison_workers_max=1 the first lost worker fails the job."""
    h = Harness(poison_workers_max=1)
    h.connect("w1")
    job = h.submit()
    h.kill("w1")
    h.advance(2.5)
    assert (h.job(job)["state"], h.job(job)["error"]) == ("failed", "lost 1 workers")


# -- retries ---------------------------------------------------------------------------------------


def test_failed_attempts_retry_with_backoff_then_succeed() -> None:
    """--retries 3: two failures back off (no immediate rerun), the third attempt succeeds."""
    h = Harness(retry_base_s=1.0, retry_cap_s=60.0)
    h.connect("w1")
    job = h.submit("flaky", retries=3)
    for attempt in (1, 2):
        h.result("w1", job, attempt, state="failed", exit_code=1)
        assert h.job(job)["state"] == "pending"
        assert h.job(job)["error"] == "exit 1"
        not_before = h.sched.table.jobs[job].not_before
        assert h.now <= not_before <= h.now + 1.0 * 2 ** (attempt - 1)
        h.advance(not_before - h.now + 0.1, beating=("w1",))
        assert h.assigns("w1")[-1].attempt == attempt + 1
    h.result("w1", job, 3)
    assert h.job(job)["state"] == "succeeded"
    assert h.job(job)["attempts"] == 3
    assert h.sched.statistics()["retried"] == 2


def test_retries_exhausted_fail_the_job() -> None:
    """Once retries are used up the job is failed with the last error."""
    h = Harness()
    h.connect("w1")
    job = h.submit("false", retries=1)
    h.result("w1", job, 1, state="failed", exit_code=1)
    h.advance(1.2, beating=("w1",))
    h.result("w1", job, 2, state="failed", exit_code=2)
    assert (h.job(job)["state"], h.job(job)["error"], h.job(job)["failures"]) == (
        "failed", "exit 2", 2)


def test_lost_workers_do_not_consume_retries() -> None:
    """An attempt lost with its worker counts toward poison, not toward retries."""
    h = Harness()
    h.connect("w1")
    job = h.submit("false", retries=0)
    h.kill("w1")
    h.advance(2.5)
    h.connect("w2")
    assert h.job(job)["state"] == "running"
    assert h.job(job)["failures"] == 0


# -- drain and hand back ---------------------------------------------------------------------------


def test_hand_back_requeues_at_once_and_draining_gets_nothing() -> None:
    """A draining worker gets no new job; what it hands back runs elsewhere without delay."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.step(Received(h.conns["w1"], m.Draining()))
    assert h.sched.worker_list()[0]["state"] == "draining"
    h.submit()
    assert len(h.assigns("w1")) == 1
    h.step(Received(h.conns["w1"], m.HandBack(job_id=job, attempt=1, reason="drain timeout")))
    assert h.job(job)["state"] == "pending"
    h.connect("w2", slots=2)
    assert next((a.job_id, a.attempt) for a in h.assigns("w2")) == (job, 2)
    assert h.job(job)["lost_workers"] == 0
    assert h.sched.statistics()["handed_back"] == 1
    h.kill("w1")  # a drained worker leaving is not a lost worker
    assert h.sched.statistics()["workers_lost"] == 0
    assert h.sched.worker_list()[0]["state"] == "dead"


def test_stale_hand_back_is_ignored() -> None:
    """A hand back for an attempt the worker no longer owns changes nothing."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    h.step(Received(h.conns["w1"], m.HandBack(job_id=job, attempt=7, reason="x")))
    assert h.job(job)["state"] == "running"


# -- slots -----------------------------------------------------------------------------------------


@given(slots=st.lists(st.integers(1, 4), min_size=1, max_size=4), jobs=st.integers(0, 30),
       seed=st.integers(0, 1000))
def test_a_worker_never_gets_more_than_its_slots(slots: list[int], jobs: int, seed: int) -> None:
    """However jobs, results and workers interleave, no worker is assigned beyond its slots."""
    rng = random.Random(seed)
    h = Harness()
    for i, n in enumerate(slots):
        h.connect(f"w{i}", slots=n)
    ids = [h.submit() for _ in range(jobs)]
    for _ in range(jobs * 20):
        if all(h.job(j)["state"] == "succeeded" for j in ids):
            break
        for i, n in enumerate(slots):
            name = f"w{i}"
            entry = h.sched.workers[name]
            outstanding = {(a.job_id, a.attempt) for a in h.assigns(name)}
            finished = {(msg.job_id, msg.attempt) for msg in h.sent_to(name, m.ResultAck)}
            assert len(outstanding - finished) <= n
            assert len(entry.running) <= n
            if entry.running and rng.random() < 0.5:
                job_id, attempt = rng.choice(sorted(entry.running.items()))
                h.result(name, job_id, attempt)
    assert all(h.job(j)["state"] == "succeeded" for j in ids)


def test_due_delayed_job_without_free_worker_asks_for_no_past_timer() -> None:
    """A backing-off job that is due while no worker is free must not ask for a past deadline.

    Otherwise the shell's timer fires again at once, over and over: a busy loop.
    """
    h = Harness()
    h.submit(delay=1.0)
    h.advance(2.0)
    deadline = h.sched.next_deadline()
    assert deadline is None or deadline > h.now


# -- keys, pages and what the display reads --------------------------------------------------------


def _reply(h: Harness, req_id: int) -> Any:
    (reply,) = [msg for c, msg in h.sent if c == CLIENT and getattr(msg, "req_id", None) == req_id]
    return reply


def test_a_key_reused_for_another_spec_is_refused_and_the_key_names_the_job() -> None:
    """Same key and spec: the same job; another spec: a conflict error and no new job; the
    key resolves like an id for status."""
    h = Harness()
    first = h.submit("echo a", key="nightly-1")
    assert h.submit("echo a", key="nightly-1") == first
    h._req += 1
    h.step(Received(CLIENT, m.Submit(req_id=h._req, jobs=(
        JobSpec(kind="shell", command="echo b", key="nightly-1"),))))
    refused = _reply(h, h._req)
    assert isinstance(refused, m.ErrorReply) and refused.kind == "conflict"
    assert len(h.sched.table.jobs) == 1
    h._req += 1
    h.step(Received(CLIENT, m.Status(req_id=h._req, job_ids=("nightly-1",))))
    assert _reply(h, h._req).value[0]["id"] == first


def test_list_pages_continue_after_the_cursor() -> None:
    """A page reply carries the next cursor while the page is full; the next page starts
    right after it, newest first, and the last page says none follows."""
    h = Harness()
    ids = [h.submit(f"echo {i}") for i in range(5)]
    pages: list[list[str]] = []
    after = None
    while True:
        h._req += 1
        h.step(Received(CLIENT, m.ListJobs(req_id=h._req, limit=2, after=after, page=True)))
        value = _reply(h, h._req).value
        pages.append([r["id"] for r in value["jobs"]])
        after = value["next"]
        if after is None:
            break
    assert [job for page in pages for job in page] == ids[::-1]


def test_a_dead_workers_row_keeps_its_last_heartbeat() -> None:
    """Declared dead, a worker's last_heartbeat stays when it was last heard, not when it
    was judged dead."""
    h = Harness()
    h.connect("w1")
    h.advance(1.0, beating=("w1",))
    beat = h.sched.worker_list()[0]["last_heartbeat"]
    h.advance(3.0)
    row = h.sched.worker_list()[0]
    assert row["state"] == "dead" and row["last_heartbeat"] == beat


def test_finished_at_is_the_workers_own_time() -> None:
    """A result's finish time is the worker's, so a result that reached the coordinator late
    does not lengthen the job."""
    h = Harness()
    h.connect("w1")
    job_id = h.submit()
    (assign,) = h.assigns("w1")
    h.step(Received(h.conns["w1"], m.Result(
        job_id=job_id, attempt=assign.attempt, state="succeeded", exit_code=0, result=None,
        stdout="", stderr="", error=None, started_at=500.0, finished_at=506.0)))
    record = h.sched.table.jobs[job_id]
    assert (record.started_at, record.finished_at) == (500.0, 506.0)


def _brute_free(h: Harness) -> list[str]:
    sched = h.sched
    return sorted(name for name, entry in sched.workers.items()
                  if sched._is_free(name, entry))


@given(st.lists(st.tuples(st.sampled_from(["submit", "finish", "close", "beat", "tick",
                                           "register", "drain"]),
                          st.integers(0, 4)), max_size=60))
def test_the_free_worker_set_matches_a_full_scan(ops: list[tuple[str, int]]) -> None:
    """Dispatch picks from a free-worker set kept as workers change (never a scan of every
    worker): after every step it holds exactly the workers a full scan would find free."""
    h = Harness()
    names = [f"w{i}" for i in range(5)]
    for name in names[:3]:
        h.connect(name, slots=2)
    for op, i in ops:
        name = names[i]
        entry = h.sched.workers.get(name)
        if op == "submit":
            h.submit()
        elif op == "finish" and entry is not None and entry.running and name in h.conns:
            job_id, attempt = next(iter(entry.running.items()))
            h.result(name, job_id, attempt)
        elif op == "close" and name in h.conns:
            h.step(Closed(h.conns.pop(name), "gone"))
        elif op == "beat" and entry is not None and name in h.conns:
            h.heartbeat(name)
        elif op == "register" and name not in h.conns:
            h.connect(name, slots=1 + i % 2)
        elif op == "drain" and name in h.conns:
            h.step(Received(h.conns[name], m.Draining()))
        else:
            h.now += 0.3
            h.step(Tick())
        assert h.sched.free.names == _brute_free(h), (op, name)
