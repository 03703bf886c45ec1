"""The leader's side of fencing and reconciliation (`core/workerside.py`): refusals are heard,
a higher epoch deposes, and an assignment a worker leaves out of its heartbeats is lost."""

from __future__ import annotations

import logging

import pytest

from tcpsched.core import messages as m
from tcpsched.core.events import Close, Connected, HigherEpoch, Received, Send
from tcpsched.core.workerside import MISSING_BEATS_MAX, MISSING_GRACE_BEATS
from tests.unit.test_scheduler import Harness


def test_a_fenced_assign_is_logged_requeued_and_deposes(caplog: pytest.LogCaptureFixture,
                                                       ) -> None:
    """"A refusal is answered, never dropped": a Fenced answer to an Assign is logged at
    WARNING, the attempt (never started) goes back to the queue without counting a retry or a
    lost worker, and a higher epoch cuts that worker off and tells the shell (HigherEpoch)."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    (order,) = h.assigns("w1")
    with caplog.at_level(logging.WARNING):
        effects = h.step(Received(h.conns["w1"], m.Fenced(
            epoch=3, order="assign", order_epoch=order.epoch, job_id=job, attempt=1)))
    assert "refused assign" in caplog.text and "seen epoch 3" in caplog.text
    # Pending, not sent to w1 again: it is cut off until it registers again.
    assert h.job(job)["state"] == "pending"
    assert (h.job(job)["failures"], h.job(job)["lost_workers"]) == (0, 0)
    assert Close(h.conns["w1"], "worker has seen a higher epoch") in effects
    assert len(h.assigns("w1")) == 1
    assert [e.epoch for e in effects if isinstance(e, HigherEpoch)] == [3]


def test_a_register_from_a_worker_ahead_of_us_is_refused_and_deposes() -> None:
    """"Register says the highest epoch the worker has seen, so a new leader learns it before
    it orders anything": above ours, the worker is refused (code "epoch") and the shell told."""
    h = Harness(epoch=1)
    h.step(Connected(5, "worker", "w1"))
    effects = h.step(Received(5, m.Register(name="w1", slots=1, epoch_seen=3)))
    (refused,) = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, m.Refused)]
    assert refused.code == "epoch" and "epoch 3" in refused.reason
    assert [e.epoch for e in effects if isinstance(e, HigherEpoch)] == [3]
    assert "w1" not in h.sched.workers


def test_a_heartbeat_that_leaves_out_an_assigned_attempt_past_the_grace_loses_it() -> None:
    """"A leader reconciles each worker's reported attempts against its own assignments": an
    attempt left out of heartbeats past the grace for an in-flight Assign is lost and requeued
    like a lost worker's job (not a retry); within the grace it stays."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    grace_s = MISSING_GRACE_BEATS * 0.5
    h.now += grace_s / 2
    h.heartbeat("w1", running=())  # written before the Assign got there
    h.now += grace_s
    for _ in range(MISSING_BEATS_MAX - 1):
        h.heartbeat("w1", running=())
        assert h.job(job)["state"] == "running"  # one beat may race a resumed worker
        h.now += 0.5
    h.heartbeat("w1", running=())
    # Requeued, and (w1 being the only worker, with a free slot again) assigned anew.
    assert (h.job(job)["attempts"], h.job(job)["failures"], h.job(job)["lost_workers"]) \
        == (2, 0, 1)
    assert h.sched.workers["w1"].running == {job: 2}


def test_an_attempt_reported_again_is_not_lost() -> None:
    """An attempt one heartbeat leaves out but the next reports again stays assigned."""
    h = Harness()
    h.connect("w1")
    job = h.submit()
    for running in [(), ((job, 1),)] * 3:
        h.now += 0.5 * (MISSING_GRACE_BEATS + 1)
        h.heartbeat("w1", running=running)
    assert h.job(job)["state"] == "running"
