"""Hand the heap that a burst of connections freed back to the operating system.

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
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


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
