"""The scheduler on two clocks: durations on the monotonic one, record times on the wall one.

Each test drives the real scheduler with a monotonic `now` that advances in ticks and a wall
clock that is stepped by an hour either way, as NTP may do, and checks that no duration moved.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tcpsched.core import messages as m
from tcpsched.core.events import Connected, Received, Send, Tick
from tcpsched.core.jobs import JobSpec
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.state import JobTable

CLIENT = 1000
WALL_START = 1_700_000_000.0
HOUR_S = 3600.0


class TwoClocks:
    """A scheduler stepped with a monotonic clock and a wall clock that can jump."""

    def __init__(self, table: JobTable | None = None, mono: float = 50.0,
                 wall: float = WALL_START, **config: Any) -> None:
        options = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 2.0,
                   "retry_base_s": 1.0, "retry_cap_s": 1.0, **config}
        self.mono, self.wall = mono, wall
        self.sched = Scheduler(SchedulerConfig(**options), random.Random(5), self.mono,
                               table=table, wall=self.wall)
        self.sent: list[tuple[int, Any]] = []
        self.req = 0
        self.step(Connected(CLIENT, "client", "test"))

    def step(self, event: Any) -> None:
        for effect in self.sched.step(event, self.mono, self.wall):
            if isinstance(effect, Send):
                self.sent.append((effect.conn, effect.msg))

    def advance(self, seconds: float, beating: tuple[int, ...] = ()) -> None:
        """Both clocks move on in 0.1 s ticks; the `beating` worker connections heartbeat."""
        end = self.mono + seconds
        while self.mono < end - 1e-9:
            self.mono += 0.1
            self.wall += 0.1
            for conn in beating:
                self.step(Received(conn, m.Heartbeat(running=self._running(conn))))
            self.step(Tick())

    def _running(self, conn: int) -> tuple[m.AttemptRef, ...]:
        entry = next(e for e in self.sched.workers.values() if e.conn == conn)
        return tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in entry.running.items())

    def worker(self, conn: int, name: str) -> None:
        self.step(Connected(conn, "worker", name))
        self.step(Received(conn, m.Register(name=name, slots=1)))

    def submit(self, **options: Any) -> str:
        self.req += 1
        self.step(Received(CLIENT, m.Submit(req_id=self.req, jobs=(
            JobSpec(kind="shell", command="true", **options),))))
        (reply,) = [msg for c, msg in self.sent
                    if c == CLIENT and isinstance(msg, m.Reply) and msg.req_id == self.req]
        return str(reply.value[0])

    def state(self, job_id: str) -> str:
        return self.sched.table.jobs[job_id].state.value


@pytest.mark.parametrize("step_s", [HOUR_S, -HOUR_S])
def test_wall_clock_step_declares_nobody_dead(step_s: float) -> None:
    """A wall-clock step of an hour either way neither kills a beating worker nor keeps a
    silent one alive: the detector runs on the monotonic clock."""
    h = TwoClocks()
    h.worker(1, "w1")
    h.worker(2, "w2")
    job = h.submit()
    h.advance(1.0, beating=(1, 2))
    h.wall += step_s
    h.advance(3.0, beating=(1, 2))
    assert h.sched.statistics()["workers_lost"] == 0
    assert h.sched.table.jobs[job].attempts == 1
    # w1 (holding the job, round robin's first) falls silent: dead after the timeout.
    h.advance(2.5, beating=(2,))
    assert [w["state"] for w in h.sched.worker_list()] == ["dead", "alive"]
    assert h.sched.table.jobs[job].worker == "w2"


@pytest.mark.parametrize("step_s", [HOUR_S, -HOUR_S])
def test_wall_clock_step_delays_nothing(step_s: float) -> None:
    """A delayed job runs after its delay of monotonic time, whatever the wall clock does."""
    h = TwoClocks()
    h.worker(1, "w1")
    job = h.submit(delay=2.0)
    h.wall += step_s
    h.advance(1.5, beating=(1,))
    assert h.state(job) == "pending"
    h.advance(1.0, beating=(1,))
    assert h.state(job) == "running"


def test_retry_backoff_and_wait_deadline_ignore_wall_steps() -> None:
    """A failed attempt's backoff and a wait's timeout are monotonic durations too."""
    h = TwoClocks()
    h.worker(1, "w1")
    job = h.submit(retries=1)
    h.step(Received(1, m.Result(job_id=job, attempt=1, state="failed", exit_code=1,
                                result=None, stdout="", stderr="", error="exit 1",
                                started_at=h.wall, finished_at=h.wall)))
    assert h.state(job) == "pending"
    h.req += 1
    h.step(Received(CLIENT, m.Wait(req_id=h.req, job_ids=(job,), timeout=30.0)))
    h.wall -= HOUR_S
    h.advance(1.2, beating=(1,))  # the backoff is at most retry_cap_s = 1 s
    assert h.state(job) == "running"
    h.wall += 2 * HOUR_S
    h.advance(1.0, beating=(1,))
    assert not [msg for c, msg in h.sent if c == CLIENT and getattr(msg, "req_id", 0) == h.req]


def test_records_show_wall_clock_times() -> None:
    """submitted_at, started_at and finished_at are Unix times, taken after any step."""
    h = TwoClocks()
    h.worker(1, "w1")
    h.wall += HOUR_S
    job = h.submit()
    record = h.sched.table.jobs[job]
    assert record.submitted_at == pytest.approx(WALL_START + HOUR_S)
    assert record.started_at == pytest.approx(WALL_START + HOUR_S)
    (row,) = h.sched.worker_list()
    # Shown on the wall clock as it reads now: the registration was a moment ago.
    assert row["last_heartbeat"] == pytest.approx(h.wall, abs=0.5)


def test_restart_turns_journaled_wall_times_into_monotonic_deadlines() -> None:
    """A delayed job's end and a finished job's age are kept in wall-clock time and, after a
    restart on a new monotonic clock, keep their remaining time."""
    h = TwoClocks(keep_finished_for_s=10.0)
    h.worker(1, "w1")
    delayed = h.submit(delay=5.0)
    done = h.submit()
    h.step(Received(1, m.Result(job_id=done, attempt=1, state="succeeded", exit_code=0,
                                result=None, stdout="", stderr="", error=None,
                                started_at=h.wall, finished_at=h.wall)))
    h.advance(2.0, beating=(1,))
    table = JobTable.from_snapshot(h.sched.table.snapshot())
    # A new process: its monotonic clock starts elsewhere; the wall clock goes on.
    after = TwoClocks(table=table, mono=7.0, wall=h.wall, keep_finished_for_s=10.0)
    after.worker(1, "w1")
    after.advance(2.5, beating=(1,))
    assert after.state(delayed) == "pending"  # 2 s of its 5 s delay passed before
    assert done in after.sched.table.jobs
    after.advance(1.0, beating=(1,))
    assert after.state(delayed) == "running"
    after.advance(6.5, beating=(1,))  # 12 s since it finished (checked every second)
    assert done not in after.sched.table.jobs
