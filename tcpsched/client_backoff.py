"""How a client waits when the leader's queue is full: bounded exponential backoff with jitter.

Theory of operation: a submit refused with `queue_full` (see `core/backpressure.py`) is sent
again, whole, after a pause. The n-th pause in a row is drawn uniformly from the upper half of
min(cap, base * 2**n) ("equal jitter": producers refused together do not come back together,
yet each waits at least half its step), and never less than the coordinator's retry-after
hint. A success resets the step. `wait_s` bounds the total time spent waiting for one batch:
None waits as long as it takes (a producer faster than the cluster slows down to its pace),
0 does not wait at all (the CLI's default: exit 6 at once).
"""

from __future__ import annotations

import random

import attrs

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 5.0


@attrs.define
class Backoff:
    wait_s: float | None = None  # total pause allowed for one batch (None: no bound)
    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    rng: random.Random = attrs.field(factory=random.Random)
    refusals: int = 0  # refusals in a row
    waited_s: float = 0.0  # paused so far for the current batch

    def next_pause(self, hint_s: float | None) -> float | None:
        """The pause before the next try, or None when the wait bound is spent."""
        step = min(self.cap_s, self.base_s * 2 ** self.refusals)
        self.refusals += 1
        pause = max(self.rng.uniform(step / 2, step), min(hint_s or 0.0, self.cap_s))
        if self.wait_s is not None:
            left = self.wait_s - self.waited_s
            if left <= 0:
                return None
            pause = min(pause, left)
        self.waited_s += pause
        return pause

    def succeeded(self) -> None:
        self.refusals = 0
        self.waited_s = 0.0
