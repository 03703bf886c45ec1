"""Live output of running jobs: the worker's spool, the leader's tails and their followers.

Theory of operation: a running attempt's stdout and stderr are character streams that start at
offset 0 with the attempt. The worker keeps the newest `SPOOL_CHARS_MAX` characters of each
(`AttemptSpool`) and, at most every flush interval, sends what it has not sent yet as one
`Output` message per attempt naming the offset its text starts at; so a message is bounded
whatever the job prints, and a job that prints faster than that shows a gap (offsets jump),
never an unbounded queue. What is streamed is the prefix of what the final result carries
(both come from the same capped buffer), so a reader that followed the stream to offset N
finishes with the final output from N on.

The leader keeps the newest `tail_chars_max` characters of each stream of each running job in
memory (`LiveTails`), and all tails together within `total_chars_max`: past it, the tail that
received output least recently is emptied (its offsets stay, so a reader sees a gap). Tails are
not journaled: the final output is, with the result. A new leader starts with no tails; each
worker sends its whole spool again when it registers (`AttemptSpool.rewind`), so a reader who
reconnects loses at most what scrolled out of the worker's spool meanwhile.

Followers subscribe to a job (`subscribe`, a plain callback, so an in-process reader such as
the HTTP server's Server-Sent Events uses the same path as a TCP client's `tail` request) and
are called when the job's tail grows or its attempt ends; they then `read` from their offsets.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs

STREAMS = ("stdout", "stderr")
SPOOL_CHARS_MAX = 64 * 1024  # worker: newest characters kept per stream of a running attempt
TAIL_CHARS_MAX = 256 * 1024  # leader: newest characters kept per stream of a running job
TAILS_CHARS_MAX = 64 * 1024 * 1024  # leader: every tail together
SUBSCRIBERS_MAX = 10_000  # leader: followers of all jobs together


class TextWindow:
    """The newest `cap` characters of a stream that began at offset 0: `start` to `end`."""

    __slots__ = ("cap", "start", "text")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.start = 0
        self.text = ""

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def put(self, offset: int, text: str) -> int:
        """`text` found at `offset`: the part past `end` is kept (a later offset is a gap:
        what came before it is dropped). Returns the change in characters held."""
        before = len(self.text)
        end = self.end
        if offset > end:
            self.start, self.text = offset, text
        elif offset + len(text) > end:
            self.text += text[end - offset:]
        excess = len(self.text) - self.cap
        if excess > 0:
            self.text = self.text[excess:]
            self.start += excess
        return len(self.text) - before

    def since(self, offset: int) -> tuple[int, str]:
        """What is held from `offset` on, and where it starts (after `offset`: a gap)."""
        if offset <= self.start:
            return self.start, self.text
        if offset >= self.end:
            return self.end, ""
        return offset, self.text[offset - self.start:]

    def clear(self) -> int:
        """Drop the text, keep the offsets; the characters freed."""
        freed = len(self.text)
        self.start, self.text = self.end, ""
        return freed


# -- the worker's side ---------------------------------------------------------------------------


@attrs.frozen
class Chunk:
    """What one `Output` message carries for one attempt."""

    stdout_offset: int
    stdout: str
    stderr_offset: int
    stderr: str


class AttemptSpool:
    """A running attempt's newest output on the worker, and how far it has been sent."""

    def __init__(self, cap: int = SPOOL_CHARS_MAX) -> None:
        self.windows = {name: TextWindow(cap) for name in STREAMS}
        self.sent = dict.fromkeys(STREAMS, 0)

    def add(self, stream: str, text: str) -> None:
        window = self.windows[stream]
        window.put(window.end, text)

    @property
    def unsent(self) -> bool:
        return any(self.windows[s].end > self.sent[s] for s in STREAMS)

    def take(self) -> Chunk | None:
        """What has not been sent yet (from the oldest character still held), or None."""
        if not self.unsent:
            return None
        parts: dict[str, tuple[int, str]] = {}
        for name in STREAMS:
            parts[name] = self.windows[name].since(self.sent[name])
            self.sent[name] = self.windows[name].end
        return Chunk(parts["stdout"][0], parts["stdout"][1], parts["stderr"][0],
                     parts["stderr"][1])

    def rewind(self) -> None:
        """A new session: everything still held goes again (the new leader has no tail)."""
        for name in STREAMS:
            self.sent[name] = self.windows[name].start


# -- the leader's side ---------------------------------------------------------------------------


@attrs.define(eq=False)
class Tail:
    attempt: int
    windows: dict[str, TextWindow]


@attrs.frozen
class TailRead:
    """A reader's view from its offsets: each stream's text and the offset it starts at."""

    attempt: int
    stdout_offset: int
    stdout: str
    stderr_offset: int
    stderr: str


Callback = Callable[[str], object]


class LiveTails:
    """The leader's tails of running jobs and their subscribers (module docstring)."""

    def __init__(self, tail_chars_max: int = TAIL_CHARS_MAX,
                 total_chars_max: int = TAILS_CHARS_MAX,
                 subscribers_max: int = SUBSCRIBERS_MAX) -> None:
        self.tail_chars_max = tail_chars_max
        self.total_chars_max = total_chars_max
        self.subscribers_max = subscribers_max
        self._tails: dict[str, Tail] = {}  # least recently written first
        self.chars = 0
        self.evicted_chars = 0  # emptied to keep within total_chars_max
        self._subs: dict[str, dict[int, Callback]] = {}
        self._sub_jobs: dict[int, str] = {}
        self._tokens = itertools.count(1)

    def __len__(self) -> int:
        return len(self._tails)

    def put(self, job_id: str, attempt: int, chunk: Chunk) -> bool:
        """A chunk of the running `attempt` of `job_id` (checked current by the caller);
        True if the tail grew. Subscribers are told."""
        tail = self._tails.pop(job_id, None)
        if tail is None or tail.attempt != attempt:
            if tail is not None:
                self.chars -= sum(len(w.text) for w in tail.windows.values())
            tail = Tail(attempt, {s: TextWindow(self.tail_chars_max) for s in STREAMS})
        self._tails[job_id] = tail  # now the most recently written
        grew = False
        for name, offset, text in (("stdout", chunk.stdout_offset, chunk.stdout),
                                   ("stderr", chunk.stderr_offset, chunk.stderr)):
            window = tail.windows[name]
            end = window.end
            self.chars += window.put(offset, text)
            grew = grew or window.end > end
        self._evict()
        if grew:
            self.notify(job_id)
        return grew

    def _evict(self) -> None:
        while self.chars > self.total_chars_max:
            for tail in self._tails.values():  # the least recently written first
                freed = sum(w.clear() for w in tail.windows.values())
                if freed:
                    self.chars -= freed
                    self.evicted_chars += freed
                    break
            else:
                return

    def read(self, job_id: str, attempt: int, offsets: tuple[int, int]) -> TailRead | None:
        """The tail of `attempt` from the reader's (stdout, stderr) offsets; None when there
        is no tail of that attempt here."""
        tail = self._tails.get(job_id)
        if tail is None or tail.attempt != attempt:
            return None
        out_at, out = tail.windows["stdout"].since(offsets[0])
        err_at, err = tail.windows["stderr"].since(offsets[1])
        return TailRead(attempt, out_at, out, err_at, err)

    def latest_attempt(self, job_id: str) -> int | None:
        tail = self._tails.get(job_id)
        return None if tail is None else tail.attempt

    def ended(self, job_id: str) -> None:
        """The job's attempt ended (finished, requeued, lost): drop its tail (the final output
        is in the record) and tell its subscribers."""
        tail = self._tails.pop(job_id, None)
        if tail is not None:
            self.chars -= sum(len(w.text) for w in tail.windows.values())
        self.notify(job_id)

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(self, job_id: str, callback: Callback) -> int | None:
        """Call `callback(job_id)` whenever the job's tail grows or its attempt ends, until
        `unsubscribe(token)`; None when there are `subscribers_max` already."""
        if len(self._sub_jobs) >= self.subscribers_max:
            return None
        token = next(self._tokens)
        self._subs.setdefault(job_id, {})[token] = callback
        self._sub_jobs[token] = job_id
        return token

    def unsubscribe(self, token: int) -> None:
        job_id = self._sub_jobs.pop(token, None)
        if job_id is None:
            return
        subs = self._subs.get(job_id)
        if subs is not None:
            subs.pop(token, None)
            if not subs:
                del self._subs[job_id]

    def watched(self, job_id: str) -> bool:
        return job_id in self._subs

    @property
    def subscribers(self) -> int:
        return len(self._sub_jobs)

    def notify(self, job_id: str) -> None:
        subs = self._subs.get(job_id)
        if subs:
            for callback in list(subs.values()):  # a callback may unsubscribe
                callback(job_id)
