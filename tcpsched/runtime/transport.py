"""Connections: framed, coalesced, bounded sends; a receive loop; the handshake.

Theory of operation: `Connection` owns one asyncio stream pair and one `FrameDecoder`.
`send(msg)` encodes at once (so a bad message fails where it is made) and queues the frame;
one `call_soon` per event-loop turn writes everything queued with one `write`, so a burst of
messages costs one syscall. If the peer stops reading and the transport's buffer passes
`output_bytes_max`, the connection is aborted (not closed politely, which would wait for the
buffer to drain) rather than buffered forever; the bound is checked as each message is
queued, too. `receive()` reads at most `READ_BYTES` at a time, so the decoder never holds more
than one frame plus one read; it gives the loop a turn every `YIELD_EVERY_MESSAGES` messages,
and with `backpressure` (the coordinator's side) it takes no more messages while more than
`BACKPRESSURE_BYTES` of our output to that peer is unsent, cutting off a peer that takes none of
it for `write_stall_s`.

The handshake (`accept` on the listening side, `dial` on the other) lives in
`runtime/handshake.py`; it narrows the decoder to handshake messages and tiny limits, then
widens it to the role's messages and the configured limits (`widen`).

After a token handshake on a connection without TLS, both sides `seal` it with the session keys
the handshake derived: every flush becomes one or more sealed units (`core/channel.py`: a MAC
per coalesced write, with an implicit counter per direction), and every byte read is verified
before the decoder sees it, so a relay that passed the handshake through cannot insert, replay,
drop or reorder anything unnoticed: the connection fails with RemoteProtocolError. With TLS the
channel itself gives integrity and ordering, so there is no second MAC.

A connection counts the messages it received and sent and remembers when the last one arrived,
so the coordinator can close idle ones (see `Coordinator._sweep_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.channel import Opener, Sealer
from tcpsched.core.codec import (
    FRAME_BYTES_MAX,
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_LIMITS,
    FrameDecoder,
    UnpackLimits,
    encode,
    new_packer,
)
from tcpsched.errors import RemoteProtocolError

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
OUTPUT_BYTES_MAX = 64 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 5.0
YIELD_EVERY_MESSAGES = 64
BACKPRESSURE_BYTES = 256 * 1024  # read no more requests while this much output is unsent
WRITE_STALL_S = 30.0  # by default, a peer that takes none of our output this long is cut off
ACCEPT_PAUSE_S = 1.0  # after an accept fails (out of file descriptors): what asyncio does
FIRST_BYTES_KEPT = 8  # to recognise a TLS record where a frame was expected, and say so


class Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder | None = None,
        *,
        output_bytes_max: int = OUTPUT_BYTES_MAX,
        backpressure: bool = False,
        write_stall_s: float = WRITE_STALL_S,
    ) -> None:
        """`backpressure`: stop taking messages while our output to this peer is unsent (for
        listeners facing untrusted peers; a dialer always reads, so the two sides can never
        both wait for the other)."""
        self.reader = reader
        self.backpressure = backpressure
        self.write_stall_s = write_stall_s
        self.writer = writer
        # Asked twice per message received (backpressure): StreamWriter.transport is a Python
        # property, and a stream keeps its transport for life.
        self._transport = writer.transport
        # No lookahead: the bytes after the last handshake message may be sealed units.
        self.decoder = decoder or FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX, m.HANDSHAKE_TYPES,
                                               HANDSHAKE_LIMITS, lookahead=False)
        self._sealer: Sealer | None = None  # once sealed (see seal)
        self._opener: Opener | None = None
        self.output_bytes_max = output_bytes_max
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._packer = new_packer()  # one per connection: `send` runs for every message
        self._flush_scheduled = False
        self.closed = False
        self.close_reason = ""
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        set_nodelay(writer)
        self.bytes_in = 0
        self.bytes_out = 0
        self.role: str | None = None  # the peer's role, once its handshake is done
        # Messages since the handshake (see widen), and monotonic times of the last ones.
        self.messages_in = 0
        self.messages_out = 0
        self.first_bytes = b""
        self.opened_at_s = time.monotonic()
        self.last_message_at_s = self.opened_at_s
        self.last_sent_at_s = self.opened_at_s
        self._since_yield = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, msg: Any) -> None:
        """Queue one message; it is written at the end of this event-loop turn."""
        if self.closed:
            return
        frame = encode(msg, packer=self._packer)
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        self.messages_out += 1
        self.last_sent_at_s = time.monotonic()
        if self._outbox_bytes > self.output_bytes_max:
            # Checked here, not only at flush: many small requests can each ask for a big
            # reply within one turn, and the replies must not pile up before the check.
            self._check_output_bound()
            if self.closed:
                return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop
            if loop is None:  # looked up once: each lookup is a getpid system call
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def send_bytes(self, data: bytes) -> None:
        """Queue bytes as they are, in place of frames (sealed like frames on a sealed
        connection), and write them now: scripts/abuse.py gets malformed frames past the MAC
        this way, to show that the decoder behind it refuses them too."""
        if self.closed:
            return
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or not self._outbox:
            self._outbox.clear()
            return
        if self._sealer is not None:
            data = self._sealer.seal(self._outbox)
        else:
            data = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
        self._outbox.clear()
        self._outbox_bytes = 0
        self.bytes_out += len(data)
        try:
            self.writer.write(data)
        except (OSError, RuntimeError) as exc:
            self.close(f"write failed: {exc}", abort=True)
            return
        self._check_output_bound()

    def _check_output_bound(self) -> None:
        queued = self._outbox_bytes + self._transport.get_write_buffer_size()
        if queued > self.output_bytes_max:
            self.close(f"peer is not reading (more than {self.output_bytes_max} bytes queued)",
                       abort=True)

    async def drain(self) -> None:
        self.flush()
        if not self.closed:
            await self.writer.drain()

    async def receive(self) -> Any | None:
        """The next message, or None at a clean end of stream or once closed by us. Raises
        RemoteProtocolError.

        One read can hold thousands of small requests; every `YIELD_EVERY_MESSAGES` the loop
        gets a turn, so one busy peer cannot starve the others (heartbeats included) and our
        replies are flushed, and the output bound checked, while its input is worked off."""
        while True:
            if self.closed:
                return None  # what is still buffered from a peer we closed is not acted on
            if (self.backpressure
                    and self._transport.get_write_buffer_size() > BACKPRESSURE_BYTES):
                await self._wait_writable()
                continue
            msg = self.decoder.next_message()
            if msg is not None:
                self.messages_in += 1
                self.last_message_at_s = time.monotonic()
                self._since_yield += 1
                if self._since_yield >= YIELD_EVERY_MESSAGES:
                    self._since_yield = 0
                    await asyncio.sleep(0)
                    if self.closed:
                        return None
                return msg
            self._since_yield = 0
            data = await self.reader.read(READ_BYTES)
            if not data:
                partial = self.decoder.buffered_bytes + (
                    self._opener.buffered_bytes if self._opener is not None else 0)
                if partial:
                    raise RemoteProtocolError(
                        f"connection closed inside a frame ({partial} bytes)")
                return None
            if len(self.first_bytes) < FIRST_BYTES_KEPT:
                self.first_bytes = (self.first_bytes + data)[:FIRST_BYTES_KEPT]
            self.bytes_in += len(data)
            if self._opener is not None:
                data = self._opener.feed(data)  # only verified bytes reach the decoder
            self.decoder.feed(data)

    async def _wait_writable(self) -> None:
        """Backpressure: take no more requests from a peer while it leaves our answers unread,
        so it cannot make us produce more; one that reads nothing for a while is cut off."""
        try:
            async with asyncio.timeout(self.write_stall_s):
                await self.writer.drain()
        except TimeoutError:
            self.close(f"peer is not reading (nothing taken for {self.write_stall_s:g}s)",
                       abort=True)

    def close(self, reason: str = "", abort: bool = False) -> None:
        """Close once. `abort` drops whatever is still queued for a peer that does not read;
        a polite close would keep the socket and its buffer until the peer reads them."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._outbox.clear()
        self._outbox_bytes = 0
        try:
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()
        except (OSError, RuntimeError):
            pass

    async def wait_closed(self) -> None:
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # the peer went away first; closed is closed

    @property
    def is_tls(self) -> bool:
        return self.writer.get_extra_info("ssl_object") is not None

    @property
    def is_sealed(self) -> bool:
        return self._sealer is not None

    def seal(self, send_key: bytes, receive_key: bytes) -> None:
        """From now on, every write is sealed with `send_key` and every read verified with
        `receive_key` (core/channel.py). Called by both sides right after a token handshake,
        with nothing of ours queued: what the peer sent after its last handshake frame (and
        the decoder already holds) is read as sealed units too."""
        assert not self._outbox and self._sealer is None
        self._sealer = Sealer(send_key)
        self._opener = Opener(receive_key, self.decoder.frame_bytes_max)
        early = self.decoder.take_buffered()
        if early:
            self.decoder.feed(self._opener.feed(early))

    def widen(self, allowed: frozenset[type], frame_bytes_max: int = FRAME_BYTES_MAX,
              limits: UnpackLimits | None = None) -> None:
        """After the handshake: accept this role's messages at full size."""
        self.messages_in = self.messages_out = 0
        if limits is None:
            limits = UnpackLimits(str_bytes_max=frame_bytes_max, bin_bytes_max=frame_bytes_max)
        self.decoder.configure(frame_bytes_max, allowed, limits)
        self.decoder.lookahead = True
        if self._opener is not None:
            self._opener.configure(frame_bytes_max)


class Listener:
    """A listening socket whose connections are handed over raw: nothing is read from them and
    no TLS handshake starts before the caller has counted them (`open_accepted` does both), so
    silent sockets and stalled TLS handshakes are bounded and timed from accept like any other
    connection still in its handshake."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def bind(cls, host: str, port: int, backlog: int) -> Listener:
        sock = socket.create_server((host, port), family=_family(host), backlog=backlog)
        sock.setblocking(False)
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def serve(self, on_accept: Callable[[socket.socket], Coroutine[Any, Any, None]]
                    ) -> None:
        """Accept until closed, each connection handled by its own task. Like asyncio's
        servers: a handler's unexpected exception goes to the loop's exception handler and
        the listener goes on; out of file descriptors, it pauses accepting for a moment."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                sock, _address = await loop.sock_accept(self.sock)
            except OSError as exc:
                if self._closed:
                    return
                log.warning("accept failed: %s; pausing accepts for %gs", describe(exc),
                            ACCEPT_PAUSE_S)
                await asyncio.sleep(ACCEPT_PAUSE_S)
                continue
            task = loop.create_task(on_accept(sock))
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            task.get_loop().call_exception_handler({
                "message": "unhandled exception in a connection handler", "exception": exc,
                "task": task})

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def open_accepted(sock: socket.socket, ssl_context: ssl.SSLContext | None,
                        timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted socket, after the TLS handshake if `ssl_context` is given
    (raises OSError, ssl.SSLError included, or TimeoutError; the transport, which owns the
    socket from the start, has closed it then)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_BYTES)
    protocol = asyncio.StreamReaderProtocol(reader)
    # The loop's own TLS timer is a backstop a little after the caller's deadline, so that a
    # stalled TLS handshake ends as the caller's TimeoutError (and is counted as such).
    tls_timeout = {} if ssl_context is None else {"ssl_handshake_timeout": max(timeout_s, 0) + 1}
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, ssl=ssl_context,
                                                      **tls_timeout)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class LogLimiter:
    """At most `burst` lines per `period_s`, then one line saying how many were left out: a
    flood of bad connections must not become a flood of log lines (a disk-filling attack)."""

    def __init__(self, logger: logging.Logger, burst: int = 20, period_s: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._window_start_s = -period_s
        self._count = 0
        self.suppressed = 0

    def warning(self, fmt: str, *args: Any) -> None:
        self.flush()
        if self._count < self.burst:
            self._count += 1
            self.logger.warning(fmt, *args)
        else:
            self.suppressed += 1

    def flush(self) -> None:
        """Start a new window if the current one is over, reporting what it left out."""
        now = time.monotonic()
        if now - self._window_start_s < self.period_s:
            return
        if self.suppressed:
            self.logger.warning("%d more connection(s) closed for such reasons in the last "
                                "%gs (not logged one by one)", self.suppressed, self.period_s)
        self._window_start_s = now
        self._count = 0
        self.suppressed = 0


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY on a TCP socket: a writer that coalesces its frames itself (one write per
    loop turn) must not have its small writes held back by Nagle's algorithm waiting for an
    acknowledgement (up to 40 ms with delayed acks). uvloop sets it on its own sockets, asyncio
    not on accepted ones; setting it again costs one system call per connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def limit_unacknowledged(conn: Connection, timeout_s: float) -> bool:
    """Fail the connection (ETIMEDOUT, seen as an OSError by `receive`) once data we sent has
    gone unacknowledged by the peer's TCP stack for `timeout_s` (Linux's TCP_USER_TIMEOUT).

    Why: a peer behind a pulled cable or a partition sends neither FIN nor RST, so without this
    a side that only ever writes (a worker beating to its coordinator) keeps the dead connection
    for the kernel's retransmission limit, about fifteen minutes. Acknowledgements come from the
    peer's kernel, so a peer that is merely busy or stopped (SIGSTOP) is not cut off. Returns
    False where the option does not exist (the connection then behaves as before)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = conn.writer.get_extra_info("socket")
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(timeout_s * 1000)))
    return True


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
