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


class Reaper:
    """The worker's handle on its reaper process: `track` and `untrack` process groups."""

    def __init__(self) -> None:
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tcpsched.runtime.reaper"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True,
        )  # fmt: skip
        self._broken = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _tell(self, line: bytes) -> None:
        if self._broken or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            # The reaper is gone: jobs still run and still stop on timeout; only the
            # kill-on-worker-death guarantee is lost, so say so once and carry on.
            self._broken = True
            import logging

            logging.getLogger(__name__).warning(
                "the job reaper (pid %d) is gone: shell jobs would outlive a killed worker",
                self._proc.pid,
            )

    def track(self, pgid: int) -> None:
        self._tell(b"+%d\n" % pgid)

    def untrack(self, pgid: int) -> None:
        self._tell(b"-%d\n" % pgid)

    def close(self) -> None:
        """End the reaper (it kills whatever is still tracked, normally nothing)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(Exception):
            self._proc.wait(timeout=5)
