"""One scheduling pass per loop turn: driven by a node core, the scheduler steps a turn's
messages without placing jobs and places them all in one pass at `EndOfTurn`."""

from __future__ import annotations

from tcpsched.core import messages as m
from tcpsched.core.events import Journal, Received
from tcpsched.core.jobs import JobSpec
from tcpsched.core.node_events import EndOfTurn
from tests.unit.test_prefetch import connect
from tests.unit.test_scheduler import CLIENT, Harness


def per_turn() -> Harness:
    h = Harness()
    h.sched.dispatch_per_turn = True
    return h


def test_messages_of_a_turn_place_nothing_until_its_end() -> None:
    """Submits and a registration stepped in one turn send no Assign; the turn's end places
    the jobs in one pass, and nothing is owed after it."""
    h = per_turn()
    connect(h, "w1", slots=2, prefetch=0)
    ids = [h.submit() for _ in range(3)]
    assert h.assigns("w1") == [] and h.sched.dispatch_due
    h.step(EndOfTurn())
    assert [a.job_id for a in h.assigns("w1")] == ids[:2]
    assert not h.sched.dispatch_due


def test_the_turns_pass_sees_every_message_of_the_turn() -> None:
    """A result and a later, higher-priority submit in the same turn: the pass that refills
    the worker takes the high-priority job first, which a pass per message could not."""
    h = per_turn()
    connect(h, "w1", slots=1, prefetch=0)
    first = h.submit()
    h.step(EndOfTurn())
    low = h.submit(priority=0)
    h.step(EndOfTurn())
    h.result("w1", first, 1)
    high = h.submit(priority=5)
    h.step(EndOfTurn())
    assert [a.job_id for a in h.assigns("w1")] == [first, high]
    assert h.job(low)["state"] == "pending"


def test_results_of_one_turn_refill_every_worker_in_one_pass() -> None:
    """Two workers' results in one turn open both lookaheads; the one pass fills both, from
    the head of the queue in order."""
    h = per_turn()
    connect(h, "w1", slots=1, prefetch=1)
    connect(h, "w2", slots=1, prefetch=1)
    ids = [h.submit() for _ in range(6)]
    h.step(EndOfTurn())
    a1, a2 = h.assigns("w1"), h.assigns("w2")
    assert len(a1) == len(a2) == 1
    h.result("w1", a1[0].job_id, 1)
    h.result("w2", a2[0].job_id, 1)
    assert len(h.sent_to("w1", m.Assign)) == 1
    h.step(EndOfTurn())
    placed = [a.job_id for a in h.assigns("w1") + h.assigns("w2")]
    assert sorted(placed) == sorted(ids)


def test_without_a_node_core_each_step_places_at_once() -> None:
    """A scheduler stepped alone (no turns) keeps placing in the step of each message."""
    h = Harness()
    connect(h, "w1", slots=1, prefetch=0)
    job = h.submit()
    assert [a.job_id for a in h.assigns("w1")] == [job]


def test_every_step_after_a_turns_end_still_journals_its_records() -> None:
    """The turn's end hands over the shared effects list without replacing it: a submit and a
    placement in later turns still come back as Journal effects (a replaced list once swallowed
    every record written after the first turn's end)."""
    h = per_turn()
    connect(h, "w1", slots=1, prefetch=0)
    h.step(EndOfTurn())
    submitted = h.step(Received(CLIENT, m.Submit(
        req_id=99, jobs=(JobSpec(kind="shell", command="true"),))))
    assert [e.record["op"] for e in submitted if isinstance(e, Journal)] == ["submit"]
    placed = h.step(EndOfTurn())
    assert [e.record["op"] for e in placed if isinstance(e, Journal)] == ["start"]
