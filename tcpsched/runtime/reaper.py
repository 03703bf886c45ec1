"""A watchdog that kills a worker's shell jobs if the worker itself dies.

Why: shell jobs run in process groups of their own (so a timeout can kill the whole group),
which also means that a worker killed with SIGKILL would leave them running, and the job would
then run twice: once orphaned, once on the worker it is reassigned to. Nothing in the kernel
kills a process group when an unrelated process dies, so the worker starts this small process
once, tells it through a pipe which process groups are live (`+PGID` / `-PGID` lines), and the
reaper kills every group still live when the pipe reaches end of file: the worker's end is
closed by the kernel however the worker died. It ignores SIGINT and SIGTERM, so a Ctrl-C aimed
at the terminal lets the worker drain instead of killing its jobs underneath it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip()
        if len(text) < 2:
            continue
        try:
            pgid = int(text[1:])
        except ValueError:
            continue
        if text[:1] == b"+":
            live.add(pgid)
        elif text[:1] == b"-":
            live.discard(pgid)
    for pgid in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
