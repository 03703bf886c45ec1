"""Placement: which workers can run a job, and which of those with a free slot gets it.

A policy sees only candidate names (workers that are alive, not draining, have a free slot and
can run the job: `capable`) and their load; it never sees the clock, and `RandomPolicy` takes
its `random.Random` from the caller, so a seeded simulation places jobs the same way every run.
A job that no live worker can run (every one refuses its kind or its callable) is not handed
to anyone: `unplaceable_reason` says why, and the scheduler keeps it pending with that reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tcpsched.core.detector import DEAD

if TYPE_CHECKING:
    import random

    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.jobs import JobSpec
    from tcpsched.core.workers import WorkerEntry

POLICIES = ("round-robin", "random", "least-loaded")
# Jobs one dispatch pass may set aside because only busy workers can run them: bounds the work
# of a pass when the queue's head waits for a kind of worker that is busy.
PLACEMENT_SKIPS_MAX = 256
REASON_WORKERS_MAX = 3  # workers named in an unplaceable job's reason


def capable(free: Mapping[str, WorkerEntry], spec: JobSpec) -> list[str]:
    """The names of the workers in `free` that would run a job of this spec."""
    kind, function = spec.kind, spec.function
    return [name for name, entry in free.items()
            if entry.capabilities.is_unrestricted
            or entry.capabilities.refusal(kind, function) is None]


def unplaceable_reason(workers: Mapping[str, WorkerEntry], detector: FailureDetector,
                       spec: JobSpec) -> str | None:
    """Why no live worker (connected, not draining, not dead) can run this job, or None if
    one can, or if none is live at all (then the job simply waits for a worker)."""
    refusals = []
    for name, entry in sorted(workers.items()):
        if entry.conn is None or entry.draining or detector.state(name) == DEAD:
            continue
        refusal = entry.capabilities.refusal(spec.kind, spec.function)
        if refusal is None:
            return None
        refusals.append(f"{name} {refusal}")
    if not refusals:
        return None
    shown = "; ".join(refusals[:REASON_WORKERS_MAX])
    more = len(refusals) - REASON_WORKERS_MAX
    return ("no live worker can run it: " + shown
            + (f"; and {more} more" if more > 0 else "") + "; it waits for one that can")


class RoundRobinPolicy:
    """Each job goes to the next worker after the last one chosen, in name order.

    The cursor is a name, not an index, so workers joining or leaving do not make it skip or
    repeat: the next choice is the first candidate whose name sorts after the previous one.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, candidates: Sequence[str], load: Mapping[str, float]) -> str:
        ordered = sorted(candidates)
        if self._last is None:
            pick = ordered[0]
        else:
            i = bisect.bisect_right(ordered, self._last)
            pick = ordered[i % len(ordered)]
        self._last = pick
        return pick


class RandomPolicy:
    """A uniformly random candidate, from the injected generator."""

    name = "random"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[str], load: Mapping[str, float]) -> str:
        return self._rng.choice(sorted(candidates))


class LeastLoadedPolicy:
    """The candidate with the smallest fraction of its slots busy; ties by name."""

    name = "least-loaded"

    def choose(self, candidates: Sequence[str], load: Mapping[str, float]) -> str:
        return min(candidates, key=lambda name: (load[name], name))


Policy = RoundRobinPolicy | RandomPolicy | LeastLoadedPolicy


def make_policy(name: str, rng: random.Random) -> Policy:
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(rng)
    if name == "least-loaded":
        return LeastLoadedPolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
