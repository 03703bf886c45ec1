"""JobQueue against a model that is obviously right: a dict sorted on every question.

The model keeps job id -> (priority, seq, not_before); the job that runs next at `now` is the
smallest (-priority, seq, id) among the jobs with not_before <= now. Time only moves forward,
as it does for the leader.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from tcpsched.core.jobqueue import JobQueue

JOB_IDS = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
PRIORITIES = st.integers(-3, 3)  # few values, so ties (FIFO within a priority) are common
DELAYS = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5, 10.0])


class JobQueueMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.queue = JobQueue()
        self.model: dict[str, tuple[int, int, float]] = {}
        self.now = 100.0
        self.next_seq = 1

    @initialize()
    def start(self) -> None:
        assert len(self.queue) == 0
        assert self.queue.pop(self.now) is None

    def _expected_next(self) -> str | None:
        ready = [
            (-priority, seq, job_id)
            for job_id, (priority, seq, not_before) in self.model.items()
            if not_before <= self.now
        ]
        return min(ready)[2] if ready else None

    @rule(target=ids, job_id=JOB_IDS, priority=PRIORITIES, delay=DELAYS)
    def push(self, job_id: str, priority: int, delay: float) -> str:
        """A new submission: a fresh seq; delayed jobs get not_before in the future."""
        seq = self.next_seq
        self.next_seq += 1
        not_before = self.now + delay if delay > 0 else 0.0
        self.queue.push(job_id, priority, seq, not_before)
        self.model[job_id] = (priority, seq, not_before)
        return job_id

    @rule(job_id=ids, priority=PRIORITIES, delay=DELAYS)
    def requeue_keeping_seq(self, job_id: str, priority: int, delay: float) -> None:
        """A job coming back (lost worker, retry) keeps its seq, so its place in line."""
        seq = self.model[job_id][1] if job_id in self.model else self.next_seq
        self.next_seq += 1
        not_before = self.now + delay if delay > 0 else 0.0
        self.queue.push(job_id, priority, seq, not_before)
        self.model[job_id] = (priority, seq, not_before)

    @rule(job_id=consumes(ids))
    def remove(self, job_id: str) -> None:
        assert self.queue.remove(job_id) == (job_id in self.model)
        self.model.pop(job_id, None)

    @rule(job_id=JOB_IDS)
    def remove_unknown(self, job_id: str) -> None:
        assert self.queue.remove(job_id) == (job_id in self.model)
        self.model.pop(job_id, None)

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def pop(self) -> None:
        expected = self._expected_next()
        assert self.queue.pop(self.now) == expected
        if expected is not None:
            del self.model[expected]

    @precondition(lambda self: self.model)
    @rule()
    def pop_until_empty_at_the_end_of_time(self) -> None:
        """Draining the queue far in the future yields every job in priority-then-FIFO order."""
        self.now += 1000.0
        while (expected := self._expected_next()) is not None:
            assert self.queue.pop(self.now) == expected
            del self.model[expected]
        assert self.queue.pop(self.now) is None

    @rule()
    def peek(self) -> None:
        assert self.queue.peek(self.now) == self._expected_next()

    @rule()
    def next_deadline(self) -> None:
        """After looking at `now`, the next deadline is the earliest not_before still ahead."""
        self.queue.peek(self.now)
        future = [nb for (_p, _s, nb) in self.model.values() if nb > self.now]
        assert self.queue.next_deadline() == (min(future) if future else None)

    @rule()
    def ready_count(self) -> None:
        expected = sum(1 for (_p, _s, nb) in self.model.values() if nb <= self.now)
        assert self.queue.ready_count(self.now) == expected

    @invariant()
    def same_jobs(self) -> None:
        assert len(self.queue) == len(self.model)
        for job_id in self.model:
            assert job_id in self.queue


TestJobQueue = JobQueueMachine.TestCase


def test_higher_priority_first_then_fifo() -> None:
    """A concrete case: priorities 1, 5, 5, 0 leave as 5 (first), 5 (second), 1, 0."""
    q = JobQueue()
    q.push("low", 1, 1)
    q.push("high-a", 5, 2)
    q.push("high-b", 5, 3)
    q.push("lowest", 0, 4)
    assert [q.pop(0.0) for _ in range(5)] == ["high-a", "high-b", "low", "lowest", None]


def test_delayed_job_waits_for_its_time() -> None:
    """A delayed job is invisible before not_before and the deadline says when it comes."""
    q = JobQueue()
    q.push("later", 9, 1, not_before=50.0)
    q.push("now", 0, 2)
    assert q.next_deadline() == 50.0
    assert q.pop(10.0) == "now"
    assert q.pop(49.9) is None
    assert q.pop(50.0) == "later"
    assert q.next_deadline() is None


def test_removed_job_never_surfaces_even_if_pushed_back() -> None:
    """Lazy removal skips stale entries; a re-push counts only the latest entry."""
    q = JobQueue()
    q.push("a", 0, 1)
    q.push("b", 0, 2)
    assert q.remove("a")
    assert not q.remove("a")
    q.push("b", 0, 3, not_before=5.0)  # replaced: only the delayed entry counts now
    assert q.pop(0.0) is None
    assert len(q) == 1
    assert q.pop(5.0) == "b"
    assert len(q) == 0


@given(st.lists(st.tuples(st.integers(-3, 3), st.sampled_from([0.0, 0.5, 2.0])), max_size=40),
       st.sampled_from([0.0, 1.0, 5.0]))
def test_bulk_load_pops_like_pushes(jobs: list[tuple[int, float]], now: float) -> None:
    """load() (used by a restart) yields exactly the order that pushing one by one does."""
    entries = [(f"j{i}", priority, i, delay) for i, (priority, delay) in enumerate(jobs)]
    pushed, loaded = JobQueue(), JobQueue()
    for entry in entries:
        pushed.push(*entry)
    loaded.load(entries)
    assert loaded.next_deadline() == pushed.next_deadline()
    order = [pushed.pop(now) for _ in range(len(entries) + 1)]
    assert [loaded.pop(now) for _ in range(len(entries) + 1)] == order
