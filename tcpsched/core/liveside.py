"""The leader's live output, owned by `Scheduler` (`live`): workers' `Output` in, `tail` out.

Theory of operation (see core/livelog.py for the streams and their bounds): an `Output` for the
current attempt of a running job on the worker that sent it grows that job's tail; anything
else (a stale attempt, a job that ended meanwhile) is dropped without a word, since output is
never acknowledged. A `tail` request is answered at once when there is something past the
reader's offsets, when the job is finished (the rest of the final output, from the record), or
when it runs another attempt than the reader followed; otherwise it waits, as a subscriber of
the job, until one of those holds or its `wait` runs out (then an empty answer, and the client
asks again). Answers are `Send` effects like every reply, so the node holds them until the
records they show are committed: a reader never sees a finish that could be rolled back.

`LiveOutput` is given the job table (it only reads it: output is never journaled), the step's
clocks and outbox (`core/sides.py`); the scheduler calls its hooks (`on_output`, `on_record`
from `_record`, `closed`, `next_deadline`, `advance`) and routes `tail` requests to `on_tail`.

In-process readers (the HTTP server) use `tails.subscribe(job_id, callback)` and
`tail_view(job, attempt, offsets)`, the same path: `tail_view` gives the dict a `tail` reply
carries. They run between the node's turns, when the leader's table may hold one turn's
records not yet committed; a reader that must not show those waits for the node's commit.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING, Any

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobState
from tcpsched.core.livelog import Chunk, LiveTails
from tcpsched.core.queries import not_found_message, resolve

if TYPE_CHECKING:
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.sides import Outbox, StepClock
    from tcpsched.core.state import JobTable
    from tcpsched.core.workers import WorkerEntry

log = logging.getLogger("tcpsched.core.scheduler")


class LiveOutput:
    """Tails of running jobs and the clients following them."""

    def __init__(self, table: JobTable, clock: StepClock, out: Outbox) -> None:
        self.table = table
        self._clock = clock
        self._send = out.send
        self._reply = out.reply
        self._error = out.error
        self.tails = LiveTails()
        # key -> (conn, request, subscription token): `tail` requests waiting for output
        self._followers: dict[int, tuple[int, m.Tail, int]] = {}
        self._follower_keys = itertools.count(1)
        self._followers_by_conn: dict[int, set[int]] = {}
        self._follow_deadlines: list[tuple[float, int]] = []

    @property
    def _now(self) -> float:
        return self._clock.now

    # -- hooks the scheduler calls --------------------------------------------------------------

    def on_output(self, entry: WorkerEntry, msg: m.Output) -> None:
        job = self.table.get(msg.job_id)
        if (job is None or job.state is not JobState.RUNNING or job.attempts != msg.attempt
                or job.worker != entry.name):
            return
        self.tails.put(job.id, msg.attempt, Chunk(msg.stdout_offset, msg.stdout,
                                                  msg.stderr_offset, msg.stderr))

    def on_record(self, job: JobRecord) -> None:
        """A record changed `job`: a tail whose attempt no longer runs is dropped, and its
        followers are told (the record now holds that attempt's final output)."""
        tails = self.tails
        attempt = tails.latest_attempt(job.id)
        if attempt is not None and (job.state is not JobState.RUNNING
                                    or job.attempts != attempt):
            tails.ended(job.id)
        elif tails.watched(job.id):
            tails.notify(job.id)

    def closed(self, conn: int) -> None:
        for key in self._followers_by_conn.pop(conn, ()):
            follower = self._followers.pop(key, None)
            if follower is not None:
                self.tails.unsubscribe(follower[2])

    def next_deadline(self) -> float | None:
        heap = self._follow_deadlines
        while heap and heap[0][1] not in self._followers:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def advance(self, now: float) -> None:
        heap = self._follow_deadlines
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            if key in self._followers:
                self._answer_follower(key, force=True)

    # -- the tail request ------------------------------------------------------------------------

    def on_tail(self, conn: int, msg: m.Tail) -> None:
        job = resolve(self.table, msg.job_id)
        if job is None:
            self._error(conn, msg.req_id, "not_found", not_found_message(self.table,
                                                                         msg.job_id))
            return
        view = self.tail_view(job, msg.attempt, (msg.stdout_offset, msg.stderr_offset))
        if msg.wait <= 0 or _news(view, msg):
            self._reply(conn, msg.req_id, view)
            return
        key = next(self._follower_keys)
        token = self.tails.subscribe(
            job.id, lambda _job_id: self._answer_follower(key, force=False))
        if token is None:
            self._error(conn, msg.req_id, "unavailable", "too many clients follow job output "
                        "on this coordinator; retry later")
            return
        # The job's own id from here on: a prefix could name another job once this is forgotten.
        self._followers[key] = (conn, m.Tail(
            req_id=msg.req_id, job_id=job.id, attempt=msg.attempt,
            stdout_offset=msg.stdout_offset, stderr_offset=msg.stderr_offset, wait=msg.wait),
            token)
        self._followers_by_conn.setdefault(conn, set()).add(key)
        heapq.heappush(self._follow_deadlines, (self._now + msg.wait, key))

    def _answer_follower(self, key: int, *, force: bool) -> None:
        conn, msg, token = self._followers[key]
        job = self.table.get(msg.job_id)
        if job is None:
            view = None
        else:
            view = self.tail_view(job, msg.attempt, (msg.stdout_offset, msg.stderr_offset))
            if not force and not _news(view, msg):
                return
        del self._followers[key]
        self.tails.unsubscribe(token)
        keys = self._followers_by_conn.get(conn)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._followers_by_conn[conn]
        if view is None:
            self._error(conn, msg.req_id, "not_found", not_found_message(self.table,
                                                                         msg.job_id))
        else:
            self._reply(conn, msg.req_id, view)

    def tail_view(self, job: JobRecord, attempt: int | None,
                  offsets: tuple[int, int]) -> dict[str, Any]:
        """What a reader at `offsets` of `attempt` (None: the current one) is shown: the
        current attempt's text past those offsets (from the start when it follows another
        attempt), from the tail while it runs, else from the record's final output."""
        current = job.attempts
        since = offsets if attempt in (None, current) else (0, 0)
        view: dict[str, Any] = {
            "id": job.id, "attempt": current, "state": job.state.value,
            "done": job.state.is_terminal, "exit_code": job.exit_code, "error": job.error,
        }  # fmt: skip
        if job.state is JobState.RUNNING:
            read = self.tails.read(job.id, current, since)
            if read is None:
                out_at, out, err_at, err = since[0], "", since[1], ""
            else:
                out_at, out, err_at, err = (read.stdout_offset, read.stdout,
                                            read.stderr_offset, read.stderr)
            view.update(exit_code=None, error=None)
        else:
            out_at, out = _rest(job.stdout, since[0])
            err_at, err = _rest(job.stderr, since[1])
        view.update(stdout_offset=out_at, stdout=out, stderr_offset=err_at, stderr=err)
        return view


def _rest(text: str | None, offset: int) -> tuple[int, str]:
    body = text or ""
    at = min(offset, len(body))
    return at, body[at:]


def _news(view: dict[str, Any], msg: m.Tail) -> bool:
    """Whether a waiting reader has something to be told."""
    return bool(view["done"] or view["stdout"] or view["stderr"]
                or (msg.attempt is not None and view["attempt"] != msg.attempt))
