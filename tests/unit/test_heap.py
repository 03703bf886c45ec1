"""runtime/heap.trim gives freed heap back: the reason a coordinator's memory returns to its
baseline after a burst of connections (test_security's abuse test measures it end to end).
FreezeSurvivors keeps what a full collection left out of the next ones, and gives it back."""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator

import pytest

from tcpsched.runtime import heap

# In a child of its own, so this process's heap does not blur the figure: 200 MB of freed
# chunks below one live chunk at the top of the heap, which glibc never returns by itself.
CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tcpsched.runtime import heap

    def rss_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    chunks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # past pymalloc: malloc
    pin = bytes(2000) + b"pin"  # above them all, so free() cannot simply shrink the heap top
    del chunks
    freed = rss_kib()
    trimmed = heap.trim()
    print(json.dumps({"freed": freed, "after": rss_kib(), "trimmed": trimmed}))
""")


def _glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's; elsewhere trim() is a no-op")
def test_trim_returns_freed_heap_below_a_live_chunk() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=True)
    figures = json.loads(done.stdout)
    assert figures["trimmed"] is True
    assert figures["freed"] - figures["after"] > 150_000, figures  # KiB: most of the 200 MB


def test_trim_twice_is_harmless() -> None:
    first = heap.trim()
    assert heap.trim() is first


class Node:
    """A tracked object that can be weakly referenced, to see whether it was collected."""

    def __init__(self) -> None:
        self.next: Node | None = None


@pytest.fixture
def freezer() -> Iterator[heap.FreezeSurvivors]:
    survivors = heap.FreezeSurvivors()
    survivors.install()
    try:
        yield survivors
    finally:
        survivors.uninstall()
        gc.unfreeze()  # this test process's objects go back to its collector


def test_a_full_collection_freezes_what_survived_it(freezer: heap.FreezeSurvivors) -> None:
    table = [Node() for _ in range(20_000)]
    gc.collect()
    assert freezer.figures["gc_full_collections"] >= 1  # and perhaps one of its own before
    assert gc.get_freeze_count() >= len(table)
    old = {id(obj) for obj in gc.get_objects(generation=2)}
    assert not any(id(node) in old for node in table)  # the next collections skip them


def test_garbage_made_after_a_freeze_is_still_collected(freezer: heap.FreezeSurvivors) -> None:
    gc.collect()
    cycle = Node()
    cycle.next = cycle
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


def test_a_cycle_frozen_alive_is_collected_once_thawed(freezer: heap.FreezeSurvivors) -> None:
    """The price of freezing, and why the coordinator thaws when a role ends: a term's
    scheduler frozen while it led, then dropped in a cycle, is kept until the thaw."""
    scheduler = Node()
    scheduler.next = scheduler
    gone = weakref.ref(scheduler)
    gc.collect()  # frozen, alive
    del scheduler
    gc.collect()
    assert gone() is not None
    freezer.thaw()
    gc.collect()
    assert gone() is None


def test_only_an_ended_term_or_a_replaced_table_thaws() -> None:
    """A restart's recovered table stays frozen when the coordinator goes on to lead; a
    deposed leader's scheduler, or a table a reload replaced, is thawed to be collected."""
    survivors = heap.FreezeSurvivors()
    table, first, second = object(), object(), object()
    try:
        assert not survivors.watch(None, table)  # at start, following
        assert not survivors.watch(first, table)  # a term begins
        assert not survivors.watch(first, table)
        assert survivors.watch(None, table)  # it ended
        assert not survivors.watch(second, table)
        assert survivors.watch(third := object(), table)  # re-elected between two sweeps
        assert survivors.watch(third, object())  # a reload rebuilt the table
        assert survivors.figures["gc_thaws"] == 3
    finally:
        gc.unfreeze()
