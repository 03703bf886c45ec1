"""The worker's live output: each running attempt's output, streamed to the leader as it comes.

Theory of operation: whatever captures an attempt's output (the shell's pipes, a call child's
output frames, a thread call's routed `sys.stdout`) keeps it in its capped buffer as before and
hands the piece it kept to that attempt's `JobOutput`, from any thread. The first piece after a
flush wakes the loop (one `call_soon_threadsafe` per batch, not per write); the loop flushes at
most every `FLUSH_INTERVAL_S`, moving all pending text of every woken attempt into its spool
(core/livelog.py) and sending one `Output` per attempt: writes of a loop turn are coalesced,
and the rate is bounded whatever the job prints. Nothing is sent while not registered; when a
session registers, every spool is sent again from the oldest text it holds (`resend`), since a
new leader has no tails.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import threading
import time
from collections.abc import Callable

import attrs

from tcpsched.core import messages as m
from tcpsched.core.codec import peer_refusal
from tcpsched.core.limits import WireLimits
from tcpsched.core.livelog import AttemptSpool

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05  # at most this often per worker, one Output per attempt with news


class JobOutput:
    """One attempt's captured output on its way to the spool; `feed` is thread-safe.

    Every attempt gets one (the worker opens it before knowing whether the job prints), and
    most print nothing: a stream's decoder and pending list are made on its first piece."""

    __slots__ = ("_decoders", "_lock", "_pending", "_wake", "_woken")

    def __init__(self, wake: Callable[[JobOutput], None]) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._woken = False
        self._wake = wake

    def feed(self, stream: str, data: bytes) -> None:
        """Bytes the capture kept (within the output cap), decoded as the final text is."""
        if not data:
            return
        with self._lock:
            decoder = self._decoders.get(stream)
            if decoder is None:
                decoder = self._decoders[stream] = _UTF8(errors="replace")
            text = decoder.decode(data)
            if not text:
                return
            self._pending.setdefault(stream, []).append(text)
            wake, self._woken = not self._woken, True
        if wake:
            self._wake(self)

    def drain(self) -> dict[str, str]:
        with self._lock:
            taken = {s: "".join(parts) for s, parts in self._pending.items()}
            self._pending.clear()
            self._woken = False
        return taken


_UTF8 = codecs.getincrementaldecoder("utf-8")


class _Live:
    """One open attempt; its spool is made when it first has output to hold."""

    __slots__ = ("_spool", "attempt", "job_id", "output")

    def __init__(self, job_id: str, attempt: int, output: JobOutput) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.output = output
        self._spool: AttemptSpool | None = None

    @property
    def spool(self) -> AttemptSpool:
        if self._spool is None:
            self._spool = AttemptSpool()
        return self._spool

    @property
    def has_spool(self) -> bool:
        return self._spool is not None


class LiveOutput:
    """Every running attempt's spool, and the flush that sends them (module docstring).

    `send(msg)` puts a message on the current session and returns False when there is none
    registered (the spool then keeps it for the next); `limits()` are the coordinator's."""

    def __init__(self, send: Callable[[m.Output], bool], limits: Callable[[], WireLimits],
                 interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._send = send
        self._limits = limits
        self.interval_s = interval_s
        self._live: dict[JobOutput, _Live] = {}
        self._dirty: set[JobOutput] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._last_flush = 0.0
        self.sent = 0

    def open(self, job_id: str, attempt: int) -> JobOutput:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        output = JobOutput(self._woken)
        self._live[output] = _Live(job_id, attempt, output)
        return output

    def close(self, output: JobOutput) -> None:
        """The attempt ended: its final output goes with its result, not from here."""
        self._live.pop(output, None)
        self._dirty.discard(output)

    def resend(self) -> None:
        """A session registered: send every spool again from its oldest text."""
        for live in self._live.values():
            if live.has_spool:  # one that never printed has nothing to send again
                live.spool.rewind()
                self._dirty.add(live.output)
        self._arm()

    # -- waking and flushing --------------------------------------------------------------------

    def _woken(self, output: JobOutput) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._mark(output)
        else:
            try:
                loop.call_soon_threadsafe(self._mark, output)
            except RuntimeError:  # the loop is closed: the worker is gone
                pass

    def _mark(self, output: JobOutput) -> None:
        if output in self._live:
            self._dirty.add(output)
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None or not self._dirty or self._loop is None:
            return
        delay = self._last_flush + self.interval_s - time.monotonic()
        if delay <= 0:
            self._timer = self._loop.call_soon(self._flush)  # after this loop turn's writes
        else:
            self._timer = self._loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._last_flush = time.monotonic()
        dirty, self._dirty = self._dirty, set()
        for output in dirty:
            live = self._live.get(output)
            if live is None:
                continue
            for stream, text in output.drain().items():
                if text:
                    live.spool.add(stream, text)
            if not self._send_spool(live):
                self._dirty.add(output)  # not registered: kept for the next session
        if self._dirty:
            # Left for a registration (which calls resend); no timer spins meanwhile.
            self._dirty = {o for o in self._dirty if o in self._live}

    def _send_spool(self, live: _Live) -> bool:
        if not live.spool.unsent:
            return True
        sent = dict(live.spool.sent)
        chunk = live.spool.take()
        if chunk is None:
            return True
        msg = m.Output(job_id=live.job_id, attempt=live.attempt,
                       stdout_offset=chunk.stdout_offset, stdout=chunk.stdout,
                       stderr_offset=chunk.stderr_offset, stderr=chunk.stderr)
        limits = self._limits()
        while peer_refusal(msg, limits, m.WORKER_TO_COORDINATOR) is not None:
            # Over the coordinator's frame limit: only the newest half of each stream goes.
            if not msg.stdout and not msg.stderr:
                return True
            out_cut, err_cut = len(msg.stdout) // 2, len(msg.stderr) // 2
            msg = attrs.evolve(msg, stdout=msg.stdout[out_cut:],
                               stdout_offset=msg.stdout_offset + out_cut,
                               stderr=msg.stderr[err_cut:],
                               stderr_offset=msg.stderr_offset + err_cut)
        if not self._send(msg):
            live.spool.sent.update(sent)
            return False
        self.sent += 1
        return True
