"""A coordinator whose wall clock an integration test can step, as NTP would.

    python -m tests.integration.clockstep COORDINATOR-ARGS...

`time.time` is replaced, before anything of tcpsched is imported, by the real wall clock plus
an offset; SIGUSR1 steps the offset one hour forward, SIGUSR2 one hour back. The monotonic
clock is left alone. Then the coordinator's own `main` runs with the arguments given.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

STEP_S = 3600.0
_real_time = time.time
_offset_s = 0.0


def _stepped_time() -> float:
    return _real_time() + _offset_s


def _step(signum: int, _frame: FrameType | None) -> None:
    global _offset_s
    _offset_s += STEP_S if signum == signal.SIGUSR1 else -STEP_S


def main() -> int:
    time.time = _stepped_time
    signal.signal(signal.SIGUSR1, _step)
    signal.signal(signal.SIGUSR2, _step)
    from tcpsched.coordinator import main as coordinator_main

    return coordinator_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
