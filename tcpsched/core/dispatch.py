"""Placement policies: which of the workers with a free slot gets the next job.

A policy sees only candidate names (workers that are alive, not draining, and have a free
slot) and their load; it never sees the clock, and `RandomPolicy` takes its `random.Random`
from the caller, so a seeded simulation places jobs the same way every run.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

POLICIES = ("round-robin", "random", "least-loaded")


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
