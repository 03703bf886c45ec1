"""The coordinator's heap: freed pages go back to the system; survivors leave the collector.

Trimming.

A coordinator's memory must return to its baseline after abuse (hundreds of stalled or
hostile connections, clients that never read their replies and fill their output buffer to
`--max-output-buffer`). Python frees those buffers, but glibc keeps what it got back: after the
first large buffer is freed its mmap threshold rises, so later large buffers come from the
heap, and a freed heap chunk below the top is never returned by itself. VmRSS then stays at the
burst's peak. `malloc_trim(0)` gives back every whole free page (`madvise`), and costs under a
millisecond even on a heap of a million recovered jobs (0.76 ms the first time, 0.02-0.26 ms
after), so the coordinator calls it at its next sweep after connections have closed (see
`Coordinator._sweep_idle`, at most once a second), not per close. Fixing the threshold
instead (`mallopt`, `MALLOC_MMAP_THRESHOLD_`) would do it too, but made a restart of a million
jobs 8% slower (every large list and string an mmap of its own). Where the C library has no
`malloc_trim` (musl, macOS) this does nothing.

Freezing what survives a full collection. A full collection walks every object the cyclic
collector tracks, and a job costs it three (its record, its spec, its argument list); jobs
recovered at start are frozen at once (`Coordinator.__init__`), but jobs submitted since are
not, so the pause grows with the table: 0.65-0.79 s at 940,000 jobs on a 2-core machine, and
CPython runs one each time the long-lived objects grew by a quarter (13 while a table grows to
a million). A leader's loop stopped that long comes close to the election timeout (1 s).
`FreezeSurvivors` freezes (`gc.freeze`) what a full collection left, from its stop callback:
at that moment every tracked object left is reachable, so nothing garbage is frozen, and later
collections walk only what was made since. The same million jobs then cost 32 full
collections of at most 23 ms (0.55 s in all instead of 2.75 s).

What it costs: an object frozen while alive that later dies inside a reference cycle is not
collected. A job record dies by its reference count (records hold no cycles), and so do
closed connections (asyncio breaks the transport and protocol references on close; the abuse
test checks memory returns after hundreds of them). What does die in cycles is a whole role: a
deposed leader's scheduler and queue, a table replaced by a reload or a snapshot. So the
coordinator thaws once a term has ended or its table was replaced (`watch`, at every sweep),
and the next full collection walks everything once, collecting them.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import time
from collections.abc import Callable
from typing import Any


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # the C library we run on
    except OSError:
        return None


def trim() -> bool:
    """Return freed heap to the system; False where the C library cannot."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


class FreezeSurvivors:
    """Freeze what each full collection leaves (see the module's docstring); counts them and
    their longest pause into `figures` (the coordinator's stats)."""

    def __init__(self, figures: dict[str, Any] | None = None) -> None:
        self.figures = figures if figures is not None else {}
        self.figures.setdefault("gc_full_collections", 0)
        self.figures.setdefault("gc_full_pause_max_s", 0.0)
        self.figures.setdefault("gc_thaws", 0)
        self._started_at = 0.0
        self._installed = False
        self._role: tuple[Any, Any] = (None, None)

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def watch(self, scheduler: Any, table: Any) -> bool:
        """Thaw once a term's scheduler is gone or the table was replaced (True if so). A
        term that begins leaves nothing behind: a restart's recovered table, frozen at start,
        stays frozen when the coordinator goes on to lead."""
        old_scheduler, old_table = self._role
        self._role = (scheduler, table)
        ended = old_scheduler is not None and old_scheduler is not scheduler
        replaced = old_table is not None and old_table is not table
        if ended or replaced:
            self.thaw()
        return ended or replaced

    def thaw(self) -> None:
        """Give everything frozen back to the collector: a role ended, and what it leaves
        behind may be cycles among objects frozen while they were alive."""
        gc.unfreeze()
        self.figures["gc_thaws"] += 1

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        pause_s = time.perf_counter() - self._started_at
        figures = self.figures
        figures["gc_full_collections"] += 1
        if pause_s > figures["gc_full_pause_max_s"]:
            figures["gc_full_pause_max_s"] = round(pause_s, 4)
        # The collection is over and everything still tracked is reachable: frozen now, it
        # is never walked again (until `thaw`), and nothing garbage is kept.
        gc.freeze()
