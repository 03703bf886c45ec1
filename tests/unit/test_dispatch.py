"""Placement policies, alone and inside the scheduler: fair turns, seeded randomness, slots.

No event loop: the scheduler is driven with events and a made-up clock.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.dispatch import (
    POLICIES,
    LeastLoadedPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    make_policy,
)
from tcpsched.core.events import Connected, Received, Send
from tcpsched.core.jobs import JobSpec
from tcpsched.core.scheduler import Scheduler, SchedulerConfig

NAMES = ["w1", "w2", "w3", "w4", "w5"]

# -- round-robin ------------------------------------------------------------------------------


def test_round_robin_visits_each_candidate_in_turn() -> None:
    """With a fixed set, choices cycle through every candidate in name order."""
    rr = RoundRobinPolicy()
    picks = [rr.choose(["w3", "w1", "w2"], {}) for _ in range(7)]
    assert picks == ["w1", "w2", "w3", "w1", "w2", "w3", "w1"]


def test_round_robin_takes_a_joining_worker_in_its_place() -> None:
    """A worker that joins is visited when the cursor reaches its name, not skipped."""
    rr = RoundRobinPolicy()
    assert rr.choose(["a", "c"], {}) == "a"
    assert rr.choose(["a", "b", "c"], {}) == "b"
    assert rr.choose(["a", "b", "c"], {}) == "c"


def test_round_robin_copes_with_the_last_choice_leaving() -> None:
    """If the worker chosen last leaves, the next one after its name is chosen."""
    rr = RoundRobinPolicy()
    assert rr.choose(["a", "b", "c"], {}) == "a"
    assert rr.choose(["a", "b", "c"], {}) == "b"
    assert rr.choose(["a", "c"], {}) == "c"
    assert rr.choose(["a"], {}) == "a"
    assert rr.choose(["b", "c"], {}) == "b"


@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "choose", "choose"]),
                          st.sampled_from(NAMES)), max_size=80))
def test_round_robin_is_fair_while_workers_come_and_go(ops: list[tuple[str, str]]) -> None:
    """Between two turns of one worker, every worker present all along had a turn."""
    rr = RoundRobinPolicy()
    present: set[str] = {"w1", "w2"}
    # For every worker, the candidates seen continuously since its last pick, still unpicked.
    owed: dict[str, set[str]] = {}
    for op, name in ops:
        if op == "join":
            present.add(name)
        elif op == "leave" and len(present) > 1:
            present.discard(name)
            for waiting in owed.values():
                waiting.discard(name)
        elif op == "choose":
            pick = rr.choose(sorted(present, reverse=True), {})
            assert pick in present
            assert not (owed.get(pick, set()) & present), (
                f"{pick} chosen again before {owed[pick] & present}")
            for waiting in owed.values():
                waiting.discard(pick)
            # A worker that joins later was not present all along: it is not owed a turn.
            owed[pick] = set(present) - {pick}


# -- random ------------------------------------------------------------------------------------


def test_random_policy_with_a_seed_is_reproducible() -> None:
    """Two policies with equally seeded generators make the same choices."""
    a, b = RandomPolicy(random.Random(42)), RandomPolicy(random.Random(42))
    assert [a.choose(NAMES, {}) for _ in range(200)] == [b.choose(NAMES, {}) for _ in range(200)]


def test_random_policy_ignores_the_order_candidates_come_in() -> None:
    """Choices depend on the seed and the set of candidates, not on their order."""
    a, b = RandomPolicy(random.Random(7)), RandomPolicy(random.Random(7))
    shuffler = random.Random(1)
    for _ in range(100):
        shuffled = NAMES[:]
        shuffler.shuffle(shuffled)
        assert a.choose(NAMES, {}) == b.choose(shuffled, {})


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_policy_spreads_over_every_candidate(seed: int) -> None:
    """Over 3000 choices among 3, each gets a fair share (within 20%; fixed seeds)."""
    policy = RandomPolicy(random.Random(seed))
    counts = collections.Counter(policy.choose(["a", "b", "c"], {}) for _ in range(3000))
    assert set(counts) == {"a", "b", "c"}
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_random_policy_differs_between_seeds() -> None:
    """Different seeds give different sequences (the generator is really used)."""
    a, b = RandomPolicy(random.Random(1)), RandomPolicy(random.Random(2))
    assert [a.choose(NAMES, {}) for _ in range(50)] != [b.choose(NAMES, {}) for _ in range(50)]


# -- least-loaded and the factory ----------------------------------------------------------------


def test_least_loaded_picks_the_smallest_busy_fraction_ties_by_name() -> None:
    """The emptiest worker wins; equal loads go to the first name."""
    policy = LeastLoadedPolicy()
    assert policy.choose(["a", "b", "c"], {"a": 0.5, "b": 0.25, "c": 0.75}) == "b"
    assert policy.choose(["c", "b", "a"], {"a": 0.5, "b": 0.5, "c": 0.5}) == "a"


def test_make_policy_knows_every_name_and_refuses_others() -> None:
    """Every advertised policy name builds; an unknown one is a one-line ValueError."""
    for name in POLICIES:
        assert make_policy(name, random.Random(0)).name == name
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("fastest", random.Random(0))


# -- inside the scheduler ------------------------------------------------------------------------


class Harness:
    """A scheduler with workers and a client on made-up connections, and a made-up clock."""

    CLIENT = 1000

    def __init__(self, policy: str, seed: int = 0) -> None:
        self.now = 1_000.0
        self.scheduler = Scheduler(SchedulerConfig(policy=policy), random.Random(seed), self.now)
        self.conns: dict[str, int] = {}
        self.running: dict[str, set[str]] = collections.defaultdict(set)
        self.assigned: list[tuple[str, str]] = []  # (worker, job id) in order
        self.step(Connected(self.CLIENT, "client", "c"))

    def step(self, event: Any) -> list[Any]:
        effects = self.scheduler.step(event, self.now)
        names = {conn: name for name, conn in self.conns.items()}
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.msg, m.Assign):
                worker = names[effect.conn]
                self.running[worker].add(effect.msg.job_id)
                self.assigned.append((worker, effect.msg.job_id))
        return effects

    def add_worker(self, name: str, slots: int) -> None:
        conn = len(self.conns) + 1
        self.conns[name] = conn
        self.step(Connected(conn, "worker", name))
        self.step(Received(conn, m.Register(name=name, slots=slots)))

    def submit(self, *specs: JobSpec) -> list[str]:
        effects = self.step(Received(self.CLIENT, m.Submit(req_id=1, jobs=specs)))
        (reply,) = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, m.Reply)]
        return list(reply.value)

    def finish(self, worker: str, job_id: str) -> None:
        self.running[worker].discard(job_id)
        self.step(Received(self.conns[worker], m.Result(
            job_id=job_id, attempt=1, state="succeeded", exit_code=None, result=None,
            stdout="", stderr="", error=None, started_at=self.now, finished_at=self.now)))


def shell(priority: int = 0) -> JobSpec:
    return JobSpec(kind="shell", command="true", priority=priority)


@pytest.mark.parametrize("policy", POLICIES)
@given(slots=st.lists(st.integers(1, 3), min_size=1, max_size=4), jobs=st.integers(0, 30),
       seed=st.integers(0, 2**32), finish_order=st.randoms(use_true_random=False))
def test_no_worker_ever_holds_more_jobs_than_slots(policy: str, slots: list[int], jobs: int,
                                                   seed: int, finish_order: random.Random
                                                   ) -> None:
    """Whatever the policy and the order jobs finish in, running <= slots on every worker."""
    h = Harness(policy, seed)
    for i, n in enumerate(slots):
        h.add_worker(f"w{i}", n)
    capacity = {f"w{i}": n for i, n in enumerate(slots)}
    ids = h.submit(*(shell() for _ in range(jobs)))
    finished = 0
    while finished < len(ids):
        busy = [(w, j) for w, js in h.running.items() for j in sorted(js)]
        for w, js in h.running.items():
            assert len(js) <= capacity[w]
        # Every slot is used while work is queued (no idle capacity next to a queue).
        assert len(busy) == min(sum(slots), len(ids) - finished)
        worker, job_id = finish_order.choice(busy)
        h.now += 0.01
        h.finish(worker, job_id)
        finished += 1
    assert sorted(j for _, j in h.assigned) == sorted(ids)


def test_round_robin_spreads_jobs_evenly_in_the_scheduler() -> None:
    """Nine jobs on three idle workers with three slots go three to each, in turn."""
    h = Harness("round-robin")
    for name in ("w1", "w2", "w3"):
        h.add_worker(name, 3)
    h.submit(*(shell() for _ in range(9)))
    assert [w for w, _ in h.assigned] == ["w1", "w2", "w3"] * 3


def test_random_placement_is_reproducible_in_the_scheduler() -> None:
    """The same seed places the same jobs on the same workers."""
    runs = []
    for _ in range(2):
        h = Harness("random", seed=99)
        for name in ("w1", "w2", "w3"):
            h.add_worker(name, 50)
        h.submit(*(shell() for _ in range(60)))
        runs.append([w for w, _ in h.assigned])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"w1", "w2", "w3"}


def test_one_slot_runs_higher_priority_first_then_fifo() -> None:
    """With one busy slot, queued jobs start by priority, FIFO within a priority."""
    h = Harness("round-robin")
    h.add_worker("w1", 1)
    (blocker,) = h.submit(shell())
    low, high_a, mid, high_b = h.submit(shell(1), shell(5), shell(3), shell(5))
    order = []
    current = blocker
    for _ in range(4):
        h.finish("w1", current)
        current = h.assigned[-1][1]
        order.append(current)
    assert order == [high_a, high_b, mid, low]
