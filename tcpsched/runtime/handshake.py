"""The handshake over a `Connection`: `accept` on the listening side, `dial` on the other.

Both run the sans-I/O machines of `core/auth.py` over the connection, under a deadline, with
the decoder narrowed to handshake messages and tiny limits; only then is the connection widened
to the role's messages and the configured limits, and sealed with the session keys where a token
handshake ran without TLS (see `runtime/transport.py`).

A dialer whose handshake fails works out why before it says so: a plain dialer met by a TLS
listener, a TLS dialer met by a plain one, a listener that closed right after TLS because it
refused our certificate. Each gets one line naming the flag to change, not "connection reset".
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from typing import Any

from tcpsched.core import auth
from tcpsched.core import messages as m
from tcpsched.core.codec import FRAME_BYTES_MAX, UnpackLimits, encode
from tcpsched.errors import (
    AuthError,
    LikelyRefused,
    ProtocolError,
    RemoteProtocolError,
    UnavailableError,
)
from tcpsched.runtime.transport import (
    HANDSHAKE_TIMEOUT_S,
    OUTPUT_BYTES_MAX,
    READ_BYTES,
    Connection,
    describe,
)


async def _run_handshake(conn: Connection, machine: auth.ListenerHandshake | auth.DialerHandshake,
                         first: list[Any]) -> None:
    """Send `first`, then feed the machine each message and send its answers until it is done.
    A listener's parting words (a Refused) are sent before its error propagates."""
    for msg in first:
        conn.send(msg)
    await conn.drain()
    while not machine.done:
        msg = await conn.receive()
        if msg is None:
            raise RemoteProtocolError("connection closed during the handshake")
        try:
            replies = machine.receive(msg)
        except (RemoteProtocolError, AuthError):
            for parting in machine.outbox:
                conn.send(parting)
            await conn.drain()
            raise
        for reply in replies:
            conn.send(reply)
        await conn.drain()


async def accept(
    conn: Connection,
    token: bytes | None,
    node: str,
    epoch: int,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
    *,
    roles: frozenset[str] | None = None,
) -> m.Hello:
    """Listening side of the handshake. Returns the peer's Hello once it has authenticated
    (and, if `roles` is given, only for a role in it).

    Raises RemoteProtocolError (bad input), AuthError (wrong token) or TimeoutError; the caller
    closes the connection.
    """
    machine = auth.ListenerHandshake(token, node, epoch, secrets.token_bytes(m.NONCE_BYTES),
                                     roles)
    try:
        async with asyncio.timeout(timeout_s):
            await _run_handshake(conn, machine, [])
    except RemoteProtocolError as exc:
        if conn.first_bytes[:2] == b"\x16\x03":
            raise RemoteProtocolError("a TLS client hello, but TLS is not configured here "
                                      "(--tls-cert)") from None
        raise exc from None
    assert machine.hello is not None
    if machine.keys is not None and not conn.is_tls:
        conn.seal(machine.keys.listener_to_dialer, machine.keys.dialer_to_listener)
    return machine.hello


async def dial(
    address: str,
    role: str,
    name: str,
    token: bytes | None,
    allowed: frozenset[type],
    *,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
    frame_bytes_max: int = FRAME_BYTES_MAX,
    limits: UnpackLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    output_bytes_max: int = OUTPUT_BYTES_MAX,
) -> tuple[Connection, m.Welcome]:
    """Connect, handshake and authenticate; returns the widened connection and the Welcome.

    Raises UnavailableError (cannot connect, or the peer broke the protocol), AuthError (a
    wrong token on either side, or TLS expected by the listener but not used here).
    """
    from tcpsched.config import parse_address

    host, port = parse_address(address)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context,
                                                           limit=READ_BYTES)
    except ssl.SSLError as exc:
        conn_error = f"TLS handshake with {address} failed: {describe(exc)}"
        if ssl_context is not None and "CERTIFICATE" in str(exc).upper():
            raise AuthError(conn_error) from None
        if await _speaks_plain(host, port, timeout_s):
            raise AuthError(_PLAIN_LISTENER.format(address=address)) from None
        raise UnavailableError(conn_error) from None
    except (OSError, TimeoutError) as exc:
        if (ssl_context is not None and isinstance(exc, ConnectionResetError)
                and await _speaks_plain(host, port, timeout_s)):
            raise AuthError(_PLAIN_LISTENER.format(address=address)) from None
        hint = ""
        if ssl_context is not None and isinstance(exc, ConnectionResetError):
            # A coordinator short of handshake slots closes its oldest pending connections,
            # so a reset here is not proof that it serves no TLS.
            hint = (" during the TLS handshake (busy, or it does not serve TLS: that needs "
                    "--tls-cert)")
        raise UnavailableError(f"cannot connect to {address}: {describe(exc)}{hint}"
                               ) from None
    conn = Connection(reader, writer, output_bytes_max=output_bytes_max)
    machine = auth.DialerHandshake(token, role, name, secrets.token_bytes(m.NONCE_BYTES),
                                   peer=address)
    try:
        async with asyncio.timeout(timeout_s):
            await _run_handshake(conn, machine, [machine.hello()])
    except (AuthError, UnavailableError):
        conn.close()
        raise
    except (ProtocolError, OSError, TimeoutError) as exc:
        conn.close()
        if ssl_context is None and conn.first_bytes[:2] in (b"\x15\x03", b"\x16\x03"):
            raise AuthError(f"{address} requires TLS: give --tls-ca (and --tls-cert/--tls-key "
                            "if it asks for a client certificate)") from None
        if ssl_context is not None and isinstance(exc, ssl.SSLError):
            raise AuthError(f"TLS with {address} failed: {describe(exc)}") from None
        if conn.bytes_in == 0 and isinstance(exc, RemoteProtocolError):
            if ssl_context is None:
                if await _speaks_tls(host, port, timeout_s):
                    raise AuthError(f"{address} requires TLS and refused our plain connection: "
                                    "give --tls-ca (and --tls-cert/--tls-key if it asks for a "
                                    "client certificate)") from None
            elif conn.is_tls:
                raise LikelyRefused(_certificate_refusal(address, ssl_context)) from None
        hint = ""
        if conn.bytes_in == 0 and isinstance(exc, RemoteProtocolError):
            # A TLS listener drops a plain dialer, and a mutual-TLS one a dialer without a
            # certificate, without a word we could read.
            hint = (" (if it requires TLS, give --tls-ca)" if ssl_context is None else
                    " (if it requires a client certificate, give --tls-cert and --tls-key)")
        raise UnavailableError(f"handshake with {address} failed: {describe(exc)}{hint}"
                               ) from None
    except asyncio.CancelledError:  # a caller gave up mid-handshake: do not leak the socket
        conn.close()
        raise
    assert machine.welcome is not None
    if machine.keys is not None and not conn.is_tls:
        conn.seal(machine.keys.dialer_to_listener, machine.keys.listener_to_dialer)
    conn.widen(allowed, frame_bytes_max, limits)
    return conn, machine.welcome


_PLAIN_LISTENER = ("{address} serves plain TCP, not TLS: it refused our TLS handshake (drop "
                   "--tls-cert/--tls-key/--tls-ca, or start the coordinator with --tls-cert)")


def _certificate_refusal(address: str, ssl_context: ssl.SSLContext) -> str:
    """What a TLS listener that closed the connection right after the handshake, before
    answering our Hello, most likely refused: TLS 1.3 ends the client's side of the handshake
    before the server has checked the client's certificate, and asyncio's server then closes
    without an alert. A listener shedding load looks the same, so this is `LikelyRefused`."""
    cert = getattr(ssl_context, "tcpsched_cert", None)
    if cert is None:
        return (f"{address} refused a TLS connection without a client certificate: give "
                "--tls-cert and --tls-key, signed by the CA the coordinator trusts")
    return (f"{address} refused our client certificate {cert}: it is not signed by the CA "
            "the coordinator trusts (--tls-ca there), or it is self-signed or expired")


async def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether the listener answers a TLS ClientHello with a TLS handshake record."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS; nothing is sent
    try:
        async with asyncio.timeout(min(timeout_s, 2.0)):
            _reader, writer = await asyncio.open_connection(host, port, ssl=probe)
    except ssl.SSLError as exc:
        # It answered in TLS and then objected (e.g. to a missing certificate), unless what
        # came back was not TLS at all.
        return exc.reason != "WRONG_VERSION_NUMBER"
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True


async def _speaks_plain(host: str, port: int, timeout_s: float) -> bool:
    """Whether the listener answers a plain Hello with a frame (not a TLS record)."""
    machine = auth.DialerHandshake(None, "client", "probe", secrets.token_bytes(m.NONCE_BYTES))
    try:
        async with asyncio.timeout(min(timeout_s, 2.0)):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(encode(machine.hello()))
                first = await reader.read(2)
            finally:
                writer.transport.abort()
    except (OSError, TimeoutError):
        return False
    return bool(first) and first not in (b"\x15\x03", b"\x16\x03")
