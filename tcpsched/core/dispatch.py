"""Placement: which workers can run a job, and which of those with a free slot gets it.

A policy sees only candidate names (workers that are alive, not draining, have a free slot and
can run the job: `capable`) and their load; it never sees the clock, and `RandomPolicy` takes
its `random.Random` from the caller, so a seeded simulation places jobs the same way every run.
A job that no live worker can run (every one refuses its kind or its callable) is not handed
to anyone: `unplaceable_reason` says why, and the scheduler keeps it pending with that reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
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


class FreeWorkers:
    """The workers that can take a job now, kept in name order as they change.

    The scheduler refreshes a worker whenever something about it changes (a message from it,
    its connection closing, the detector judging it, a job started on it) and rebuilds the
    whole set once per heartbeat interval as a safety net, so a dispatch never scans every
    worker: it picks from this list (binary search for round-robin, one draw for random), and
    filters by capability only while some free worker is restricted (`--no-shell`,
    `--allow-call`).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.entries: dict[str, WorkerEntry] = {}
        self.restricted = 0  # free workers whose capabilities are restricted

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def set(self, name: str, entry: WorkerEntry | None) -> None:
        """`entry` is free now (None: it is not, or it is gone)."""
        old = self.entries.get(name)
        if entry is None:
            if old is None:
                return
            del self.entries[name]
            del self.names[bisect.bisect_left(self.names, name)]
            if not old.capabilities.is_unrestricted:
                self.restricted -= 1
            return
        if old is None:
            bisect.insort(self.names, name)
        elif not old.capabilities.is_unrestricted:
            self.restricted -= 1
        self.entries[name] = entry
        if not entry.capabilities.is_unrestricted:
            self.restricted += 1

    def clear(self) -> None:
        self.names.clear()
        self.entries.clear()
        self.restricted = 0

    def capable(self, spec: JobSpec) -> list[str]:
        """Names (in order) of the free workers that would run a job of this spec."""
        if not self.restricted:
            return self.names
        return capable({name: self.entries[name] for name in self.names}, spec)


class RoundRobinPolicy:
    """Each job goes to the next worker after the last one chosen, in name order.

    The cursor is a name, not an index, so workers joining or leaving do not make it skip or
    repeat: the next choice is the first candidate whose name sorts after the previous one.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, candidates: Sequence[str], load: Mapping[str, float]) -> str:
        return self.choose_sorted(sorted(candidates), load.__getitem__)

    def choose_sorted(self, ordered: Sequence[str], load: Callable[[str], float]) -> str:
        """`ordered` is sorted: one binary search, whatever the number of workers."""
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
        return self.choose_sorted(sorted(candidates), load.__getitem__)

    def choose_sorted(self, ordered: Sequence[str], load: Callable[[str], float]) -> str:
        return self._rng.choice(ordered)


class LeastLoadedPolicy:
    """The candidate with the smallest fraction of its slots busy; ties by name."""

    name = "least-loaded"

    def choose(self, candidates: Sequence[str], load: Mapping[str, float]) -> str:
        return self.choose_sorted(sorted(candidates), load.__getitem__)

    def choose_sorted(self, ordered: Sequence[str], load: Callable[[str], float]) -> str:
        """One pass over the free workers (their loads change with every job)."""
        return min(ordered, key=lambda name: (load(name), name))


Policy = RoundRobinPolicy | RandomPolicy | LeastLoadedPolicy


def make_policy(name: str, rng: random.Random) -> Policy:
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(rng)
    if name == "least-loaded":
        return LeastLoadedPolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
