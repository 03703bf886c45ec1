"""An in-process client connection: how a REST call reaches the node core.

Theory of operation: the HTTP layer holds no scheduler logic. Each REST call becomes the wire
request a TCP client would send (`core/messages.py`: Submit, Status, ListJobs, ...), fed to the
runner as `Received` on a connection that the coordinator registered like a socket's (its
`Connected` says role "client"). The runner carries the core's reply out exactly as for a
socket: held until the records it depends on are committed (journaled and on a majority), then
`send(msg)` on our connection object, which resolves the waiting call's future. Redirects,
errors, validation and commit-before-reply are therefore the core's, byte for byte the same as
over TCP.

One connection carries every call, multiplexed by `req_id`. If the core closes it (it never
does for a well-formed client, but a stepping-down leader may), the waiting calls fail with
`BridgeUnavailable` and the next call attaches a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.events import Received

REQUEST_TIMEOUT_S = 30.0


class BridgeUnavailable(Exception):
    """No reply came (the connection closed, or the core did not answer in time)."""


class CoreError(Exception):
    """The core refused the request: its ErrorReply, as a TCP client would see it."""

    def __init__(self, reply: m.ErrorReply) -> None:
        super().__init__(reply.message)
        self.reply = reply


class LocalConnection:
    """What the runner and the coordinator's idle sweep need of a `transport.Connection`.

    It is never idle (there is no socket to go silent) and never backs up (a reply is handed
    to the waiting call at once), so it has no output bound either."""

    role = "client"
    peer = "http"

    def __init__(self, deliver: Callable[[Any], None], lost: Callable[[str], None]) -> None:
        self._deliver = deliver
        self._lost = lost
        self.closed = False
        self.close_reason = ""
        self.messages_in = 0
        self.messages_out = 0

    @property
    def last_message_at_s(self) -> float:
        return time.monotonic()

    @property
    def last_sent_at_s(self) -> float:
        return time.monotonic()

    def send(self, msg: Any) -> None:
        if not self.closed:
            self.messages_out += 1
            self._deliver(msg)

    def flush(self) -> None:
        """Nothing is buffered: `send` delivered it."""

    def close(self, reason: str = "", abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._lost(reason)


class CoreBridge:
    """`await request(lambda req_id: m.Status(req_id=req_id, job_ids=(...)))` → Reply.value.

    `attach(conn)` registers a LocalConnection with the coordinator and returns its id (the
    coordinator feeds `Connected`), `detach(id, reason)` unregisters it (`Closed`), soon after
    it was closed; `feed(event)` is the runner's."""

    def __init__(self, attach: Callable[[LocalConnection], int],
                 detach: Callable[[int, str], None], feed: Callable[[Any], None],
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self._attach = attach
        self._detach = detach
        self._feed = feed
        self.timeout_s = timeout_s
        self._conn: LocalConnection | None = None
        self._conn_id = 0
        self._next_req = 1
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.requests = 0

    def _connection(self) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = LocalConnection(self._deliver, self._lost)
            self._conn_id = self._attach(self._conn)
        return self._conn_id

    def _deliver(self, msg: Any) -> None:
        future = self._waiting.pop(getattr(msg, "req_id", -1), None)
        if future is None or future.done():
            return  # its caller gave up (timed out) already
        if isinstance(msg, m.ErrorReply):
            future.set_exception(CoreError(msg))
        elif isinstance(msg, m.Reply):
            future.set_result(msg.value)
        else:
            future.set_exception(BridgeUnavailable(f"unexpected {type(msg).__name__} reply"))

    def _lost(self, reason: str) -> None:
        # Soon, not now: the runner may be closing us in the middle of its turn.
        asyncio.get_running_loop().call_soon(self._detach, self._conn_id, reason)
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(BridgeUnavailable(
                    f"the coordinator dropped the request ({reason or 'connection closed'})"))

    async def request(self, build: Callable[[int], Any]) -> Any:
        conn_id = self._connection()
        req_id = self._next_req
        self._next_req += 1
        msg = build(req_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = future
        assert self._conn is not None
        self._conn.messages_in += 1
        self.requests += 1
        self._feed(Received(conn_id, msg))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise BridgeUnavailable(
                f"no reply from the coordinator within {self.timeout_s:g}s") from None
        finally:
            self._waiting.pop(req_id, None)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close("HTTP server stopped")
