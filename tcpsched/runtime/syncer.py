"""One fdatasync at a time on a thread of its own, so the event loop never waits for the disk.

Why: a leader's loop blocked in fdatasync (0.2-2 ms here) takes in nothing meanwhile, so each
turn carries only the few results that arrived during the previous fsync, and the workers and
clients wait on it in turn. With the fsync beside the loop, everything that arrives while one
runs goes into the next: group commit grows with the load by itself (as in PostgreSQL's
`commit_delay`-free group commit), and the loop stays free for heartbeats and reads.

The contract with runtime/storage.py: `start(fd, seq)` only while nothing is in flight;
whoever closes or replaces `fd`, or needs durability now, first calls `wait()`, which absorbs
the running sync on the loop thread. Every state change happens on the loop thread: the
thread only calls `os.fdatasync` and times it.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable

import attrs


@attrs.frozen
class SyncResult:
    """What a finished background sync made durable: entries up to `seq`, in `seconds`, or
    the error that stopped it."""

    seq: int
    seconds: float
    error: OSError | None


def _fdatasync(fd: int) -> tuple[float, OSError | None]:
    began = time.monotonic()
    try:
        os.fdatasync(fd)
    except OSError as exc:
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


class BackgroundSync:
    """At most one fdatasync in flight; its result is taken exactly once, by `wait()` or by
    `take(token)` from the completion posted to the loop."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: concurrent.futures.Future[tuple[float, OSError | None]] | None = None
        self._seq = 0

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def start(self, fd: int, seq: int,
              post: Callable[[Callable[[], None]], object],
              on_done: Callable[[object], None]) -> None:
        """fdatasync `fd` (which holds entries up to `seq`) on the sync thread; when it ends,
        `post` (the loop's call_soon_threadsafe) runs `on_done(token)` on the loop thread."""
        assert self._inflight is None, "one background sync at a time"
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tcpsched-fsync")
        future = self._pool.submit(_fdatasync, fd)
        self._inflight = future
        self._seq = seq

        def finished(done: concurrent.futures.Future[tuple[float, OSError | None]]) -> None:
            try:
                post(lambda: on_done(done))
            except RuntimeError:  # the loop is closed: `wait()` at close takes the result
                pass

        future.add_done_callback(finished)

    def take(self, token: object) -> SyncResult | None:
        """The result of the sync `token` names, unless `wait()` already took it."""
        if token is not self._inflight or self._inflight is None:
            return None
        return self._take()

    def wait(self) -> SyncResult | None:
        """Block until the sync in flight (if any) ends, and take its result."""
        if self._inflight is None:
            return None
        concurrent.futures.wait([self._inflight])
        return self._take()

    def _take(self) -> SyncResult:
        assert self._inflight is not None
        seconds, error = self._inflight.result()
        self._inflight = None
        return SyncResult(self._seq, seconds, error)

    def close(self) -> None:
        """Take what is in flight and stop the thread."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
