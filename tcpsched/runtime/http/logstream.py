"""`GET /api/jobs/{id}/logs` as Server-Sent Events: a job's output while it runs.

Theory of operation: the stream is a reader like `logs --follow` (tcpsched/follow.py), in the
coordinator: it keeps, per stream, the offset it has sent up to and asks the core through the
bridge with a `tail` long poll (`m.Tail`, waiting up to `TAIL_WAIT_S` for output, well below
the bridge's timeout), so a line reaches the browser as soon as the worker's chunk reaches the
leader, and an idle job costs one request per `TAIL_WAIT_S`, not a Status poll per quarter
second. The core holds each answer until the records it shows are committed (a reader never
sees a finish that could be rolled back), as for a TCP client.

Events: `output` {"stdout"?, "stderr"?, "state", "attempt", "stdout_gap"?, "stderr_gap"?} with
what was added since the last one (a gap: characters the leader no longer held, from its
bounded tail); `attempt` {"attempt", "previous", "state"} when the job runs another attempt
than the one followed (its output starts again from nothing); `end` with the job's record once
it is finished; `error` {"error"} if the core stops answering.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.livelog import STREAMS

TAIL_WAIT_S = 10.0  # one long poll; the bridge gives up after REQUEST_TIMEOUT_S (30 s)

Emit = Callable[[str, Any], Awaitable[None]]
Request = Callable[[Callable[[int], Any]], Awaitable[Any]]


def tail_request(job_id: str, attempt: int | None, offsets: dict[str, int],
                 wait: float) -> Callable[[int], Any]:
    return lambda r: m.Tail(req_id=r, job_id=job_id, attempt=attempt,
                            stdout_offset=offsets["stdout"], stderr_offset=offsets["stderr"],
                            wait=wait)


class LogStream:
    """One reader's position in one job's output; `step(view)` turns a tail answer into the
    events to send, `request()` builds the next long poll."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.attempt: int | None = None
        self.offsets = dict.fromkeys(STREAMS, 0)
        self.state: str | None = None

    def request(self, wait: float = TAIL_WAIT_S) -> Callable[[int], Any]:
        return tail_request(self.job_id, self.attempt, self.offsets, wait)

    def step(self, view: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        self.job_id = str(view.get("id") or self.job_id)
        current = view.get("attempt")
        if isinstance(current, int) and current != self.attempt:
            if self.attempt is not None:
                self.offsets = dict.fromkeys(STREAMS, 0)
                events.append(("attempt", {"attempt": current, "previous": self.attempt,
                                           "state": view.get("state")}))
            self.attempt = current
        delta: dict[str, Any] = {}
        for stream in STREAMS:
            at, text = view.get(f"{stream}_offset"), view.get(stream)
            if not isinstance(at, int) or not isinstance(text, str):
                continue
            if at > self.offsets[stream]:
                delta[f"{stream}_gap"] = at - self.offsets[stream]
            fresh = text[max(self.offsets[stream] - at, 0):]
            if fresh:
                delta[stream] = fresh
            self.offsets[stream] = max(self.offsets[stream], at + len(text))
        state = view.get("state")
        if delta or state != self.state:
            self.state = state
            events.append(("output", {**delta, "state": state, "attempt": self.attempt}))
        return events


async def stream_logs(request: Request, first: dict[str, Any], job_id: str, emit: Emit,
                      stopped: Callable[[], bool]) -> None:
    """Send `first` (a tail answer already fetched) and what follows, until the job ends,
    the reader leaves or the server stops (`stopped()`)."""
    reader = LogStream(job_id)
    view = first
    while True:
        for kind, value in reader.step(view):
            await emit(kind, value)
        if view.get("done"):
            record = (await request(lambda r: m.Status(req_id=r,
                                                       job_ids=(reader.job_id,))))[0]
            await emit("end", record)
            return
        if stopped():
            return
        view = await request(reader.request())
