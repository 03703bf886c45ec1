"""Connections: framed, coalesced, bounded sends; a receive loop; the handshake.

Theory of operation: `Connection` owns one asyncio stream pair and one `FrameDecoder`.
`send(msg)` encodes at once (so a bad message fails where it is made) and queues the frame;
one `call_soon` per event-loop turn writes everything queued with one `write`, so a burst of
messages costs one syscall. If the peer stops reading and the transport's buffer passes
`output_bytes_max`, the connection is closed rather than buffered forever. `receive()` reads at
most `READ_BYTES` at a time, so the decoder never holds more than one frame plus one read.

The handshake (`accept` on the listening side, `dial` on the other) runs with the decoder
narrowed to handshake messages and tiny limits, under a deadline; only then is it widened.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from typing import Any

from tcpsched.core import auth
from tcpsched.core import messages as m
from tcpsched.core.codec import (
    FRAME_BYTES_MAX,
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_LIMITS,
    FrameDecoder,
    UnpackLimits,
    encode,
)
from tcpsched.errors import AuthError, ProtocolError, RemoteProtocolError, UnavailableError

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
OUTPUT_BYTES_MAX = 64 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 5.0


class Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder | None = None,
        output_bytes_max: int = OUTPUT_BYTES_MAX,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = decoder or FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX, m.HANDSHAKE_TYPES,
                                               HANDSHAKE_LIMITS)
        self.output_bytes_max = output_bytes_max
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False
        self.close_reason = ""
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.bytes_in = 0
        self.bytes_out = 0

    def send(self, msg: Any) -> None:
        """Queue one message; it is written at the end of this event-loop turn."""
        if self.closed:
            return
        self._outbox.append(encode(msg))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or not self._outbox:
            self._outbox.clear()
            return
        data = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
        self._outbox.clear()
        self.bytes_out += len(data)
        try:
            self.writer.write(data)
        except (OSError, RuntimeError) as exc:
            self.close(f"write failed: {exc}")
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > self.output_bytes_max:
            self.close(f"peer is not reading (more than {self.output_bytes_max} bytes queued)")

    async def drain(self) -> None:
        self.flush()
        if not self.closed:
            await self.writer.drain()

    async def receive(self) -> Any | None:
        """The next message, or None at a clean end of stream. Raises RemoteProtocolError."""
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            data = await self.reader.read(READ_BYTES)
            if not data:
                if self.decoder.buffered_bytes:
                    raise RemoteProtocolError(
                        f"connection closed inside a frame ({self.decoder.buffered_bytes} bytes)"
                    )
                return None
            self.bytes_in += len(data)
            self.decoder.feed(data)

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._outbox.clear()
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass

    async def wait_closed(self) -> None:
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # the peer went away first; closed is closed

    def widen(self, allowed: frozenset[type], frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        """After the handshake: accept this role's messages at full size."""
        limits = UnpackLimits(str_bytes_max=frame_bytes_max, bin_bytes_max=frame_bytes_max)
        self.decoder.configure(frame_bytes_max, allowed, limits)


async def _expect(conn: Connection, *types: type) -> Any:
    msg = await conn.receive()
    if msg is None:
        raise RemoteProtocolError("connection closed during the handshake")
    if not isinstance(msg, types):
        names = " or ".join(t.TYPE for t in types)  # type: ignore[attr-defined]
        raise RemoteProtocolError(f"expected {names} during the handshake, got {msg.TYPE}")
    return msg


async def accept(
    conn: Connection,
    token: bytes | None,
    node: str,
    epoch: int,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> m.Hello:
    """Listening side of the handshake. Returns the peer's Hello once it has authenticated.

    Raises RemoteProtocolError (bad input), AuthError (wrong token) or TimeoutError; the caller
    closes the connection.
    """
    async with asyncio.timeout(timeout_s):
        hello = await _expect(conn, m.Hello)
        if hello.version != m.PROTOCOL_VERSION:
            conn.send(m.Refused(code="version", reason=(
                f"protocol version {hello.version} is not supported "
                f"(this coordinator speaks {m.PROTOCOL_VERSION})")))
            await conn.drain()
            raise RemoteProtocolError(f"protocol version {hello.version}")
        proof = b""
        if token is not None:
            nonce = secrets.token_bytes(m.NONCE_BYTES)
            conn.send(m.Challenge(nonce=nonce))
            await conn.drain()
            answer = await _expect(conn, m.Auth)
            expected = auth.dialer_mac(token, hello.role, hello.name, hello.nonce, nonce)
            if not auth.verify(expected, answer.mac):
                conn.send(m.Refused(code="auth", reason="authentication failed: wrong token"))
                await conn.drain()
                raise AuthError(f"{hello.role} {hello.name!r} from {conn.peer}: wrong token")
            proof = auth.listener_mac(token, hello.nonce, nonce)
        conn.send(m.Welcome(node=node, epoch=epoch, proof=proof))
        await conn.drain()
    return hello


async def dial(
    address: str,
    role: str,
    name: str,
    token: bytes | None,
    allowed: frozenset[type],
    *,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
    frame_bytes_max: int = FRAME_BYTES_MAX,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[Connection, m.Welcome]:
    """Connect, handshake and authenticate; returns the widened connection and the Welcome.

    Raises UnavailableError (cannot connect, or the peer broke the protocol), AuthError.
    """
    from tcpsched.config import parse_address

    host, port = parse_address(address)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context,
                                                           limit=READ_BYTES)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise UnavailableError(f"cannot connect to {address}: {_describe(exc)}") from None
    conn = Connection(reader, writer)
    try:
        async with asyncio.timeout(timeout_s):
            nonce = secrets.token_bytes(m.NONCE_BYTES)
            conn.send(m.Hello(version=m.PROTOCOL_VERSION, role=role, name=name, nonce=nonce))
            await conn.drain()
            msg = await _expect(conn, m.Challenge, m.Welcome, m.Refused)
            if isinstance(msg, m.Challenge):
                if token is None:
                    raise AuthError(f"{address} requires a token (--token-file or "
                                    "TCPSCHED_TOKEN)")
                conn.send(m.Auth(mac=auth.dialer_mac(token, role, name, nonce, msg.nonce)))
                await conn.drain()
                server_nonce = msg.nonce
                msg = await _expect(conn, m.Welcome, m.Refused)
            else:
                server_nonce = b""
            if isinstance(msg, m.Refused):
                if msg.code == "auth":
                    raise AuthError(f"{address} refused us: {msg.reason}")
                raise UnavailableError(f"{address} refused us: {msg.reason}")
            if token is not None:
                expected = auth.listener_mac(token, nonce, server_nonce) if server_nonce else b""
                if not server_nonce or not auth.verify(expected, msg.proof):
                    raise AuthError(f"{address} could not prove it knows the token")
    except (AuthError, UnavailableError):
        conn.close()
        raise
    except (ProtocolError, OSError, TimeoutError, ssl.SSLError) as exc:
        conn.close()
        raise UnavailableError(f"handshake with {address} failed: {_describe(exc)}") from None
    conn.widen(allowed, frame_bytes_max)
    return conn, msg


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
