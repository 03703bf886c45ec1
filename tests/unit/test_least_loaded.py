"""least-loaded without a scan: `FreeWorkers` keeps a lazy (load, name) heap whose top is the
choice a scan over every free worker would make."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.dispatch import FreeWorkers, LeastLoadedPolicy, entry_load
from tcpsched.core.workers import WorkerEntry

NAMES = [f"w{i}" for i in range(6)]


def worker(name: str, slots: int) -> WorkerEntry:
    return WorkerEntry(name=name, conn=1, slots=slots, tags=(), address="", registered_at=0.0)


def scan(free: FreeWorkers) -> str:
    return min(free.names, key=lambda name: (entry_load(free.entries[name]), name))


ops = st.lists(st.tuples(st.sampled_from(["set", "drop", "start", "finish", "choose"]),
                         st.sampled_from(NAMES), st.integers(1, 4)), max_size=120)


@given(ops)
def test_the_heap_top_is_what_a_scan_would_choose(steps: list[tuple[str, str, int]]) -> None:
    """Whatever joins, leaves, starts (unannounced, as inside a pass) and finishes (announced
    with set(), as the scheduler refreshes a touched worker), the heap picks as the scan."""
    free = FreeWorkers()
    policy = LeastLoadedPolicy()
    known: dict[str, WorkerEntry] = {}
    job = 0
    for op, name, slots in steps:
        if op == "set":
            entry = known.setdefault(name, worker(name, slots))
            free.set(name, entry)
        elif op == "drop":
            free.set(name, None)
        elif op == "start" and name in free:
            job += 1
            free.entries[name].running[f"j{job}"] = 1  # a dispatch: no set() until refreshed
        elif op == "finish" and name in free and free.entries[name].running:
            running = free.entries[name].running
            del running[next(iter(running))]
            free.set(name, free.entries[name])  # a result touches its worker
        elif op == "choose" and len(free):
            assert policy.choose_sorted(free.names, lambda n: 0.0) == scan(free)
    if len(free):
        assert free.least_loaded() == scan(free)


def test_a_subset_of_candidates_is_scanned() -> None:
    """A tagged job's candidates are a plain list: least-loaded scans that list by load."""
    policy = LeastLoadedPolicy()
    loads = {"a": 0.5, "b": 0.25}
    assert policy.choose_sorted(["a", "b"], loads.__getitem__) == "b"


def test_the_heap_stays_bounded_by_the_free_workers() -> None:
    """Refreshing the same workers again and again does not grow the heap without bound."""
    free = FreeWorkers()
    entries = [worker(name, 2) for name in NAMES]
    for _ in range(1000):
        for entry in entries:
            free.set(entry.name, entry)
    assert len(free._by_load) <= 2 * len(NAMES) + 16
