"""Placement: which workers can run a job, and which of those with a free slot gets it.

A policy sees only candidate names (workers that are alive, not draining, have a free slot and
can run the job: `capable`) and their load; it never sees the clock, and `RandomPolicy` takes
its `random.Random` from the caller, so a seeded simulation places jobs the same way every run.
A job that no live worker can run (every one refuses its kind or its callable, or lacks one
of its tags) is not handed to anyone: `unplaceable_reason` says why, and the scheduler keeps it
pending with that reason.

Tags: a job with tags runs only on a worker that has every one of them. `FreeWorkers` keeps the
free workers grouped by their exact tag set as well as in one sorted list, so finding the
candidates of a tagged job looks at the distinct tag sets (a handful in any real cluster), not
at every worker.
"""

from __future__ import annotations

import bisect
import heapq
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
            if (entry.capabilities.is_unrestricted
                or entry.capabilities.refusal(kind, function) is None)
            and (not spec.tags or missing_tags(entry, spec) == ())]


def missing_tags(entry: WorkerEntry, spec: JobSpec) -> tuple[str, ...]:
    """The job's tags this worker lacks, in the job's order."""
    if not spec.tags:
        return ()
    have = entry.tags
    return tuple(tag for tag in spec.tags if tag not in have)


def refusal(entry: WorkerEntry, spec: JobSpec) -> str | None:
    """Why this worker will never run a job of this spec (capabilities or tags), or None."""
    lacking = missing_tags(entry, spec)
    if lacking:
        return "lacks tag(s) " + ",".join(lacking)
    return entry.capabilities.refusal(spec.kind, spec.function)


def unplaceable_reason(workers: Mapping[str, WorkerEntry], detector: FailureDetector,
                       spec: JobSpec) -> str | None:
    """Why no live worker (connected, not draining, not dead) can run this job, or None if
    one can, or if none is live at all (then the job simply waits for a worker)."""
    refusals = []
    tagged = 0
    for name, entry in sorted(workers.items()):
        if entry.conn is None or entry.draining or detector.state(name) == DEAD:
            continue
        why = refusal(entry, spec)
        if why is None:
            return None
        if missing_tags(entry, spec):
            tagged += 1
        refusals.append(f"{name} {why}")
    if not refusals:
        return None
    if tagged == len(refusals):
        return (f"no live worker has tags {','.join(spec.tags)}; it waits for one that has")
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
    `--allow-call`). A tagged job's candidates come from `by_tags` (free workers grouped by
    their exact tag set, each group sorted): the groups whose set holds every tag of the job,
    merged in name order when more than one does.
    """

    def __init__(self) -> None:
        self.names: list[str] = NameList(self)
        self.entries: dict[str, WorkerEntry] = {}
        # least-loaded's candidates, lazily ordered by (load, name): an item may be stale
        # (a worker gone, or busier than when pushed); `least_loaded` checks the top and
        # pushes it again with its load as it is. Every set() pushes the worker's current
        # load, so a worker that became less busy is never behind a stale, higher item.
        self._by_load: list[tuple[float, str]] = []
        self.restricted = 0  # free workers whose capabilities are restricted
        self.by_tags: dict[frozenset[str], list[str]] = {}

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
            self._untag(name, old)
            if not old.capabilities.is_unrestricted:
                self.restricted -= 1
            return
        if old is None:
            bisect.insort(self.names, name)
        else:
            self._untag(name, old)
            if not old.capabilities.is_unrestricted:
                self.restricted -= 1
        self.entries[name] = entry
        heapq.heappush(self._by_load, (entry_load(entry), name))
        if len(self._by_load) > 2 * len(self.entries) + 16:
            self._rebuild_by_load()
        bisect.insort(self.by_tags.setdefault(frozenset(entry.tags), []), name)
        if not entry.capabilities.is_unrestricted:
            self.restricted += 1

    def _untag(self, name: str, old: WorkerEntry) -> None:
        key = frozenset(old.tags)
        group = self.by_tags[key]
        del group[bisect.bisect_left(group, name)]
        if not group:
            del self.by_tags[key]

    def clear(self) -> None:
        self.names.clear()
        self.entries.clear()
        self.by_tags.clear()
        self._by_load.clear()
        self.restricted = 0

    def _rebuild_by_load(self) -> None:
        self._by_load = [(entry_load(entry), name) for name, entry in self.entries.items()]
        heapq.heapify(self._by_load)

    def least_loaded(self) -> str:
        """The free worker with the smallest busy fraction, ties by name: O(log n) amortised
        (each stale item is looked at once), not a scan of every free worker."""
        heap, entries = self._by_load, self.entries
        while True:
            load, name = heap[0]
            entry = entries.get(name)
            if entry is None:
                heapq.heappop(heap)
                continue
            now_load = entry_load(entry)
            if now_load == load:
                return name
            heapq.heapreplace(heap, (now_load, name))

    def tagged(self, tags: tuple[str, ...]) -> list[str]:
        """Names (in order) of the free workers that have every one of `tags`."""
        if not tags:
            return self.names
        wanted = frozenset(tags)
        groups = [names for key, names in self.by_tags.items() if wanted <= key]
        if len(groups) <= 1:
            return groups[0] if groups else []
        return list(heapq.merge(*groups))

    def capable(self, spec: JobSpec) -> list[str]:
        """Names (in order) of the free workers that would run a job of this spec."""
        names = self.tagged(spec.tags)
        if not self.restricted or not names:
            return names
        kind, function = spec.kind, spec.function
        entries = self.entries
        return [name for name in names
                if entries[name].capabilities.is_unrestricted
                or entries[name].capabilities.refusal(kind, function) is None]


def entry_load(entry: WorkerEntry) -> float:
    """The fraction of a worker's slots that are busy (held slots of stopped calls too)."""
    return (len(entry.running) + entry.held) / entry.slots


class NameList(list[str]):
    """`FreeWorkers.names`: every free worker, so least-loaded may ask its owner's heap."""

    def __init__(self, owner: FreeWorkers) -> None:
        super().__init__()
        self.owner = owner


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
        """Every free worker (`FreeWorkers.names`): the top of its load heap. A subset (a
        tagged or restricted job's candidates): one pass over that subset."""
        if isinstance(ordered, NameList) and ordered:
            return ordered.owner.least_loaded()
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
