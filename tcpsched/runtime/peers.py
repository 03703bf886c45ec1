"""Links to the other coordinators: one dialled connection per peer, kept up with backoff.

Theory of operation: a coordinator sends its own messages to peer N on the connection it
dialled to N, and hears N on the connection N dialled to it (accepted by the coordinator's
server like any other role). So each direction of a link fails on its own, as a real partition
does, and the election reasons about what it hears. A send to a peer whose link is down is
dropped: election and replication both resend on their own (rounds, heartbeats, the leader's
per-follower progress). Each link's task dials with capped exponential backoff and full jitter,
and reads its connection only to notice when it closes (a peer never answers on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

from tcpsched.errors import AuthError, RemoteProtocolError, UnavailableError
from tcpsched.runtime.handshake import dial
from tcpsched.runtime.transport import Connection

log = logging.getLogger(__name__)

RECONNECT_BASE_S = 0.05
RECONNECT_CAP_S = 1.0
PEER_ROLE = "peer"


def peer_name(node_id: int) -> str:
    """The handshake name a coordinator dials its peers with; the listener reads the id back."""
    return f"c{node_id}"


def peer_id_from_name(name: str) -> int | None:
    if name.startswith("c") and name[1:].isdigit():
        value = int(name[1:])
        return value if value > 0 else None
    return None


class PeerLinks:
    def __init__(self, node_id: int, peers: dict[int, str], token: bytes | None,
                 ssl_context: ssl.SSLContext | None, *, frame_bytes_max: int,
                 rng: random.Random, on_up: Callable[[int], None] | None = None) -> None:
        self.node_id = node_id
        self.peers = peers
        self.token = token
        self.ssl_context = ssl_context
        self.frame_bytes_max = frame_bytes_max
        self.rng = rng
        self.on_up = on_up
        self.links: dict[int, Connection] = {}
        self.sent = 0
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        for peer, address in self.peers.items():
            self._tasks.append(asyncio.create_task(self._keep(peer, address),
                                                   name=f"peer-link-{peer}"))

    def send(self, peer: int, msg: Any) -> None:
        conn = self.links.get(peer)
        if conn is None or conn.closed:
            self.dropped += 1
            return
        try:
            conn.send(msg)
            self.sent += 1
        except (OSError, RemoteProtocolError) as exc:
            log.warning("node=%d cannot send %s to peer %d: %s", self.node_id,
                        type(msg).__name__, peer, exc)
            conn.close(f"send failed: {exc}")

    def flush(self) -> None:
        """Write what is queued to every peer now, not at the end of the loop turn (the
        runner calls it before its fsync, so the followers journal beside us)."""
        for conn in self.links.values():
            if not conn.closed:
                conn.flush()

    async def drain(self, peer: int) -> None:
        """Wait until what we sent `peer` has left our buffer (or the link is gone)."""
        conn = self.links.get(peer)
        if conn is not None and not conn.closed:
            with contextlib.suppress(OSError, RemoteProtocolError):
                await conn.drain()

    def statistics(self) -> dict[str, Any]:
        return {"peer_links_up": sum(1 for c in self.links.values() if not c.closed),
                "peer_messages_sent": self.sent, "peer_messages_dropped": self.dropped}

    async def _keep(self, peer: int, address: str) -> None:
        backoff = RECONNECT_BASE_S
        failures = 0
        while not self._stopping:
            try:
                conn, _welcome = await dial(
                    address, PEER_ROLE, peer_name(self.node_id), self.token, frozenset(),
                    frame_bytes_max=self.frame_bytes_max, ssl_context=self.ssl_context,
                    timeout_s=2.0)
            except (UnavailableError, AuthError) as exc:
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.info("node=%d cannot reach peer %d at %s: %s", self.node_id, peer,
                             address, exc)
                await asyncio.sleep(self.rng.uniform(0, backoff))
                backoff = min(RECONNECT_CAP_S, backoff * 2)
                continue
            if failures:
                log.info("node=%d reached peer %d at %s", self.node_id, peer, address)
            failures = 0
            backoff = RECONNECT_BASE_S
            self.links[peer] = conn
            if self.on_up is not None:
                self.on_up(peer)
            try:
                while await conn.receive() is not None:
                    pass  # the peer answers on its own link, never on ours
            except (RemoteProtocolError, OSError) as exc:
                log.info("node=%d link to peer %d lost: %s", self.node_id, peer, exc)
            finally:
                conn.close("link closed")
                if self.links.get(peer) is conn:
                    del self.links[peer]
            await asyncio.sleep(self.rng.uniform(0, backoff))

    async def close(self) -> None:
        self._stopping = True
        for conn in list(self.links.values()):
            conn.close("coordinator shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
