"""`print()` and `logging` of a thread call land in that job's output (`--isolation thread`).

Theory of operation: several calls run at once in threads of the worker process, and
`sys.stdout` is one object for all of them. So the executor replaces `sys.stdout` and
`sys.stderr` once with `RoutedStream`s, and adds a `RoutedHandler` to the root logger; each
call runs with its `JobCapture` in a context variable (set in its thread, or in the context of
its task for a coroutine function). A write goes to the capture of the context it is made in,
and from there into the job's capped buffer and its live output; outside any call (the worker
itself) it goes to the stream that was there before. A thread the call starts itself does not
inherit the variable (Python does not copy contexts into new threads): what it prints goes to
the worker's own output, never to another job's.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
from typing import TextIO

from tcpsched.runtime.callchild import CappedBuffer
from tcpsched.runtime.liveout import JobOutput


class JobCapture:
    """One call's stdout and stderr: capped buffers, and the live output they feed."""

    def __init__(self, output_bytes_max: int, live: JobOutput | None = None) -> None:
        self.buffers = {"stdout": CappedBuffer(output_bytes_max),
                        "stderr": CappedBuffer(output_bytes_max)}
        self.live = live
        self._lock = threading.Lock()

    def write(self, stream: str, text: str) -> None:
        self.write_bytes(stream, text.encode("utf-8", errors="replace"))

    def write_bytes(self, stream: str, data: bytes) -> None:
        with self._lock:  # the job's own threads may write at once; keep pieces whole
            kept = self.buffers[stream].add(data)
            if self.live is not None and kept:
                self.live.feed(stream, kept)

    def text(self, stream: str) -> str:
        with self._lock:
            return self.buffers[stream].text()


CURRENT: contextvars.ContextVar[JobCapture | None] = contextvars.ContextVar(
    "tcpsched_job_capture", default=None)


class RoutedStream(io.TextIOBase):
    """sys.stdout or sys.stderr: the running call's capture, else the stream it replaced."""

    def __init__(self, name: str, fallback: TextIO) -> None:
        super().__init__()
        self.name_ = name
        self.fallback = fallback

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        capture = CURRENT.get()
        if capture is None:
            return self.fallback.write(text)
        capture.write(self.name_, text)
        return len(text)

    def flush(self) -> None:
        if CURRENT.get() is None:
            self.fallback.flush()

    def fileno(self) -> int:
        return self.fallback.fileno()

    def isatty(self) -> bool:
        return CURRENT.get() is None and self.fallback.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", None) or "utf-8"

    @property
    def buffer(self) -> object:
        """`sys.stdout.buffer`: bytes written inside a call go to its capture too."""
        capture = CURRENT.get()
        if capture is None:
            return self.fallback.buffer
        return _RoutedBytes(capture, self.name_)


class _RoutedBytes(io.RawIOBase):
    """`sys.stdout.buffer` inside a call: bytes into its capture."""

    def __init__(self, capture: JobCapture, name: str) -> None:
        super().__init__()
        self._capture = capture
        self._name = name

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._capture.write_bytes(self._name, bytes(data))
        return len(data)


class RoutedHandler(logging.Handler):
    """The root logger's handler for calls: a record logged inside a call goes to its stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(logging.BASIC_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        capture = CURRENT.get()
        if capture is None:
            return
        try:
            capture.write("stderr", self.format(record) + "\n")
        except Exception:  # a bad format string is the job's problem, never the worker's
            self.handleError(record)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Route this process's sys.stdout, sys.stderr and root logging by call (once)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        sys.stdout = RoutedStream("stdout", sys.stdout)  # type: ignore[assignment]
        sys.stderr = RoutedStream("stderr", sys.stderr)  # type: ignore[assignment]
        logging.getLogger().addHandler(RoutedHandler())
