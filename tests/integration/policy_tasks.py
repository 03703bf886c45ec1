"""Callables for the placement-policy tests."""

from __future__ import annotations

import time


def slow_identity(x: int, seconds: float = 0.02) -> int:
    """`x`, after `seconds`: long enough that how fast a worker's process runs (a slow start,
    a loaded machine) does not decide how many jobs it gets; the policy does."""
    time.sleep(seconds)
    return x
