"""`explain JOB`: why a job went where it went, or why it is still pending.

Theory of operation: pure reading. The scheduler hands `explain` the job, what the leader
recorded when it placed the job (`Placement`: the policy, the worker, its load then, how many
workers could have taken it — one small tuple per dispatch, kept for a bounded number of recent
jobs), the states of its parents, the parking reason if it has one, and a `WorkerView` per
known worker; `explain` returns the reasons as sentences, most decisive first. Nothing here
reads a clock: `now` (Unix time) comes in with the call.

A pending job is held back by the first of: its parents (`after`) not all succeeded, a delay
or a retry's backoff, no live worker having its tags (or allowing its kind), every capable
worker tripped by the circuit breaker, every capable worker full. A job none of these holds
runs at the next dispatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs

from tcpsched.core.dispatch import refusal
from tcpsched.core.jobs import JobRecord, JobState
from tcpsched.core.workers import worker_state

if TYPE_CHECKING:
    from tcpsched.core.breaker import CircuitBreaker
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.jobs import JobSpec
    from tcpsched.core.workers import WorkerEntry

ALIVE_STATES = ("alive",)
NAMED_MAX = 5  # workers or parents named in one reason


@attrs.frozen
class Placement:
    """What the leader knew when it started the job's latest attempt."""

    policy: str
    worker: str
    running: int  # jobs the worker ran then (before this one)
    slots: int
    candidates: int  # free workers that could have taken it
    at: float  # Unix time


@attrs.frozen
class WorkerView:
    name: str
    state: str  # alive, suspect, draining, dead
    refusal: str | None  # why it never runs this job (tags, capabilities), or None
    running: int
    slots: int
    breaker: str = "closed"  # closed, open, half-open
    breaker_reason: str | None = None
    breaker_until: float | None = None  # Unix time an open breaker half-opens


def when(t: float, now: float) -> str:
    """A Unix time as a UTC timestamp and how far away it is."""
    stamp = datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp} (in {max(t - now, 0.0):.1f}s)"


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:NAMED_MAX])
    more = len(items) - NAMED_MAX
    return shown + (f" and {more} more" if more > 0 else "")


def placement_reason(placement: Placement) -> str:
    return (f"placed on {placement.worker} by the {placement.policy} policy, among "
            f"{placement.candidates} free capable worker(s); {placement.worker} was running "
            f"{placement.running} of {placement.slots} slot(s) then")


def explain(job: JobRecord, *, now: float, placement: Placement | None,
            parents: Mapping[str, str | None], parked: str | None,
            workers: Sequence[WorkerView]) -> list[str]:
    """The reasons, as sentences. `parents` maps each parent id to its state (None: no longer
    known); `parked` is why the leader set the job aside as unplaceable."""
    state = job.state
    reasons: list[str] = []
    if state is JobState.PENDING:
        reasons.extend(_pending_reasons(job, now, parents, parked, workers))
    elif state is JobState.RUNNING:
        reasons.append(f"running attempt {job.attempts} on {job.worker}")
    elif state is JobState.SUCCEEDED:
        reasons.append(f"succeeded on {job.worker} after {job.attempts} attempt(s)")
    elif state is JobState.FAILED:
        if job.lost_workers and job.error and job.error.startswith("lost "):
            reasons.append(f"quarantined as a poison job: {job.error}")
        else:
            reasons.append(f"failed after {job.attempts} attempt(s)"
                           + (f": {job.error}" if job.error else ""))
    elif state is JobState.CANCELLED:
        reasons.append("cancelled" + (f": {job.error}" if job.error else ""))
    if placement is not None:
        placed = placement_reason(placement)
        reasons.append(placed if state is not JobState.PENDING else "its last attempt was "
                       + placed)
    elif job.attempts:
        reasons.append("its placement is not recorded (placed by an earlier leader, or "
                       "recorded too long ago)")
    return reasons


def _pending_reasons(job: JobRecord, now: float, parents: Mapping[str, str | None],
                     parked: str | None, workers: Sequence[WorkerView]) -> list[str]:
    reasons: list[str] = []
    waiting = [f"{pid} ({pstate or 'forgotten'})" for pid, pstate in parents.items()
               if pstate != JobState.SUCCEEDED.value]
    if waiting:
        reasons.append(f"waiting on parent(s) {_names(waiting)}")
    if job.not_before > now:
        if job.failures:
            last = f" (last: {job.error})" if job.error else ""
            reasons.append(f"retrying after failed attempt {job.failures} of "
                           f"{job.spec.retries + 1}{last}: backoff until "
                           f"{when(job.not_before, now)}")
        else:
            reasons.append(f"delayed until {when(job.not_before, now)}")
    if job.lost_workers:
        reasons.append(f"lost {job.lost_workers} worker(s) so far; quarantined at "
                       "the poison limit")
    if parked is not None:
        reasons.append(parked)
        return reasons
    held = bool(reasons)
    live = [w for w in workers if w.state in ALIVE_STATES]
    capable = [w for w in live if w.refusal is None]
    if not live:
        reasons.append("no live worker: it waits for one to register")
    elif not capable:
        if job.spec.tags and all(w.refusal and w.refusal.startswith("lacks tag")
                                 for w in live):
            reasons.append(f"no live worker has tags {','.join(job.spec.tags)}")
        else:
            reasons.append("no live worker can run it: " + _names(
                [f"{w.name} {w.refusal}" for w in live]))
    else:
        tripped = [w for w in capable if w.breaker != "closed"]
        for w in tripped:
            until = (f"; half-opens at {when(w.breaker_until, now)}"
                     if w.breaker == "open" and w.breaker_until is not None
                     else "; half-open: one probe job at a time")
            reasons.append(f"worker {w.name} circuit open (tripped: {w.breaker_reason})"
                           f"{until}")
        usable = [w for w in capable if w.breaker == "closed"]
        if usable and all(w.running >= w.slots for w in usable):
            reasons.append(f"all {len(usable)} capable worker(s) are full: " + _names(
                [f"{w.name} {w.running}/{w.slots}" for w in usable]))
        elif usable and not held:
            reasons.append(f"ready: it starts at the next dispatch ({len(usable)} capable "
                           "worker(s), queued behind jobs of higher priority or older)")
    return reasons


def worker_views(workers: Mapping[str, WorkerEntry], detector: FailureDetector,
                 breaker: CircuitBreaker, spec: JobSpec, *, now: float, wall: float,
                 ) -> list[WorkerView]:
    """One view per known worker, as `explain` reads them for a job of this spec. `now` is the
    leader's monotonic clock, `wall` Unix time at the same instant."""
    views = []
    for name, entry in sorted(workers.items()):
        until = breaker.until(name)
        views.append(WorkerView(
            name=name, state=worker_state(entry, detector),
            refusal=refusal(entry, spec), running=len(entry.running) + entry.held,
            slots=entry.slots, breaker=breaker.state(name, now),
            breaker_reason=breaker.reason(name),
            breaker_until=None if until is None else until - now + wall,
        ))  # fmt: skip
    return views
