"""Every connection of ours has TCP_NODELAY, on either side and on either event loop: frames
are coalesced by the writer itself, so Nagle's algorithm must not hold them back."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from tcpsched.runtime import transport


async def _nodelay_both_sides() -> tuple[int, int]:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_accept(sock: socket.socket) -> None:
        reader, writer = await transport.open_accepted(sock, None, 5.0)
        conn = transport.Connection(reader, writer)
        accepted.set_result(conn.writer.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY))
        conn.close()

    listener = transport.Listener.bind("127.0.0.1", 0, 8)
    serving = asyncio.ensure_future(listener.serve(on_accept))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        dialed = transport.Connection(reader, writer)
        dialer_side = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                 socket.TCP_NODELAY)
        async with asyncio.timeout(10):
            listener_side = await accepted
        dialed.close()
    finally:
        listener.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    return dialer_side, listener_side


def test_connections_set_tcp_nodelay_on_asyncio_and_uvloop() -> None:
    """Both ends of a Connection have TCP_NODELAY set, with asyncio's loop as with uvloop."""
    assert asyncio.run(_nodelay_both_sides()) == (1, 1)
    assert uvloop.run(_nodelay_both_sides()) == (1, 1)
