"""Backpressure: a submit that does not fit under --max-pending is refused whole."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.client_backoff import Backoff
from tcpsched.core import messages as m
from tcpsched.core.backpressure import RETRY_AFTER_MAX_S, RETRY_AFTER_MIN_S, Admission
from tcpsched.core.events import Received, Tick
from tcpsched.core.jobs import JobSpec, JobState
from tests.unit.test_scheduler import Harness


def submit_batch(h: Harness, n: int, prefix: str) -> m.Reply | m.ErrorReply:
    h._req += 1
    jobs = tuple(JobSpec(kind="shell", command="true", key=f"{prefix}-{i}") for i in range(n))
    h.step(Received(1000, m.Submit(req_id=h._req, jobs=jobs)))
    while True:  # a big batch is recorded over several turns
        replies = [msg for c, msg in h.sent if c == 1000 and getattr(msg, "req_id", None) ==
                   h._req]
        if replies:
            (reply,) = replies
            return reply
        h.step(Tick())


def test_a_batch_that_does_not_fit_is_refused_whole() -> None:
    """With 950 of 1000 pending, a batch of 100 is refused with nothing recorded; a batch of
    50 fits; a resend of jobs already queued takes no room."""
    h = Harness(max_pending=1000)
    assert isinstance(submit_batch(h, 950, "a"), m.Reply)
    refused = submit_batch(h, 100, "b")
    assert isinstance(refused, m.ErrorReply) and refused.kind == "queue_full"
    assert refused.message.startswith("queue full")
    assert refused.retry_after is not None and refused.retry_after > 0
    assert h.sched.table.counts[JobState.PENDING] == 950
    assert not any(k.startswith("b-") for k in h.sched.table.keys)
    assert isinstance(submit_batch(h, 50, "c"), m.Reply)
    assert isinstance(submit_batch(h, 50, "c"), m.Reply)  # a resend: same ids, no room
    stats = h.sched.statistics()
    assert stats["refused_submits"] == 1 and stats["refused_jobs"] == 100
    assert stats["pending"] == 1000


def test_batch_larger_than_the_bound_is_a_usage_error() -> None:
    """A batch that could never fit is refused as a bad request, not queue_full (a resend
    would never succeed)."""
    h = Harness(max_pending=10)
    refused = submit_batch(h, 11, "x")
    assert isinstance(refused, m.ErrorReply) and refused.kind == "bad_request"


@given(bound=st.integers(1, 50), batches=st.lists(st.integers(0, 60), max_size=20),
       recorded=st.lists(st.booleans(), max_size=20))
def test_admission_never_exceeds_the_bound(bound: int, batches: list[int],
                                           recorded: list[bool]) -> None:
    """Whatever batches arrive (some still being recorded), pending plus reserved never
    exceeds the bound, and a refused batch reserves nothing."""
    a = Admission(bound)
    pending = 0
    for i, n in enumerate(batches):
        before = a.reserved
        refusal = a.admit(n, pending)
        if refusal is None:
            assert pending + a.reserved <= bound
            if i < len(recorded) and recorded[i]:
                a.recorded(n)
                pending += n
        else:
            assert a.reserved == before
            assert RETRY_AFTER_MIN_S <= refusal.retry_after_s <= RETRY_AFTER_MAX_S


def test_retry_after_follows_the_start_rate() -> None:
    """The hint is the time the observed start rate needs to make room, within bounds."""
    a = Admission(100)
    a.observe(0, 0.0)
    a.observe(100, 2.0)  # 50 jobs/s
    refusal = a.admit(10, 100)
    assert refusal is not None
    assert 0.1 <= refusal.retry_after_s <= 0.25


@given(seed=st.integers(0, 2**32), hints=st.lists(st.one_of(st.none(), st.floats(0, 10)),
                                                  min_size=1, max_size=30))
def test_client_backoff_is_bounded_jittered_and_honours_the_hint(seed: int,
                                                                 hints: list) -> None:
    """Each pause is at least half its exponential step and at least the hint (capped),
    never more than the cap; a wait bound stops the retries once spent."""
    b = Backoff(wait_s=None, rng=random.Random(seed))
    for n, hint in enumerate(hints):
        step = min(b.cap_s, b.base_s * 2 ** n)
        pause = b.next_pause(hint)
        assert pause is not None
        assert max(step / 2, min(hint or 0.0, b.cap_s)) <= pause <= b.cap_s
    bounded = Backoff(wait_s=1.0, rng=random.Random(seed))
    total = 0.0
    while (pause := bounded.next_pause(None)) is not None:
        total += pause
    assert total <= 1.0 + 1e-9
    assert Backoff(wait_s=0.0).next_pause(1.0) is None
