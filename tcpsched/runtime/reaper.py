"""A watchdog that kills a worker's shell jobs if the worker itself dies, and the helpers
that find a job's processes that left its process group.

Why: shell jobs run in process groups of their own (so a timeout can kill the whole group),
which also means that a worker killed with SIGKILL would leave them running, and the job would
then run twice: once orphaned, once on the worker it is reassigned to. Nothing in the kernel
kills a process group when an unrelated process dies, so the worker starts this small process
once, tells it through a pipe which process groups are live (`+PGID MARK` / `-PGID` lines), and
the reaper kills every group still live when the pipe reaches end of file: the worker's end is
closed by the kernel however the worker died. It ignores SIGINT and SIGTERM, so a Ctrl-C aimed
at the terminal lets the worker drain instead of killing its jobs underneath it.

Escaped descendants: a job's process may leave its group (`setsid sleep 305 &`, a daemon's
double fork). Every shell job runs with `TCPSCHED_JOB_MARK=<random>` in its environment, which
its descendants inherit, and the worker is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`),
so an orphaned descendant is re-parented to the worker instead of init. When a job ends the
worker walks its own descendants (`/proc/PID/task/*/children`), kills every process carrying
that job's mark together with everything below it, and reaps re-parented zombies; the reaper
does the same over all of /proc for the marks still live when the worker dies. The limit: a
descendant that both leaves the group and clears or replaces its environment (`env -i`), and
is not below a marked process, is not found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable

MARK_ENV = "TCPSCHED_JOB_MARK"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """The children of `pid`, from /proc (empty if it is gone)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int, skip: Iterable[int] = ()) -> list[int]:
    """Every process below `pid`, leaving out the subtrees rooted at `skip`."""
    skipped = set(skip)
    out: list[int] = []
    todo = [c for c in children(pid) if c not in skipped]
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(c for c in children(child) if c not in skipped)
    return out


def mark_of(pid: int) -> bytes | None:
    """The job mark in a process's environment, if it has one and we may read it."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    prefix = MARK_ENV.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):]
    return None


def kill_marked(marks: set[bytes], candidates: Iterable[int]) -> list[int]:
    """SIGKILL every candidate carrying one of `marks`, and everything below it; returns them."""
    killed: list[int] = []
    for pid in candidates:
        if pid == os.getpid() or mark_of(pid) not in marks:
            continue
        for victim in [pid, *descendants(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
    return killed


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def reap_zombie_children(skip: set[int]) -> int:
    """Collect the exit status of re-parented children that have ended (a subreaper must, or
    they stay zombies); never touches `skip`, whose status belongs to someone waiting."""
    reaped = 0
    for pid in children(os.getpid()):
        if pid in skip:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state in (b"Z", b"X"):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
    return reaped


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live: dict[int, bytes] = {}
    for line in sys.stdin.buffer:
        text, _, mark = line.strip().partition(b" ")
        if len(text) < 2:
            continue
        try:
            pgid = int(text[1:])
        except ValueError:
            continue
        if text[:1] == b"+":
            live[pgid] = mark
        elif text[:1] == b"-":
            live.pop(pgid, None)
    for pgid in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    marks = {mark for mark in live.values() if mark}
    if marks:
        with contextlib.suppress(OSError):
            kill_marked(marks, all_pids())
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

    def track(self, pgid: int, mark: str = "") -> None:
        self._tell(b"+%d %s\n" % (pgid, mark.encode()))

    def untrack(self, pgid: int) -> None:
        self._tell(b"-%d\n" % pgid)

    def close(self) -> None:
        """End the reaper (it kills whatever is still tracked, normally nothing)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(Exception):
            self._proc.wait(timeout=5)
