"""`python -m tcpsched.coordinator`: wires the scheduler core to sockets and the journal.

One asyncio server; each connection does the handshake (bounded in number and time while
unauthenticated), gets an integer id, and from then on every message it sends is an event for
the scheduler, fed through the runner. SIGTERM/SIGINT stop accepting, flush, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Sequence

from tcpsched import logsetup
from tcpsched.config import CoordinatorSettings, coordinator_settings, is_loopback
from tcpsched.core import messages as m
from tcpsched.core.events import Closed, Connected, Received
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.errors import AuthError, ConfigError, RemoteProtocolError, TcpschedError
from tcpsched.runtime import transport
from tcpsched.runtime.runner import MemoryJournal, Runner
from tcpsched.runtime.transport import Connection

log = logging.getLogger(__name__)

ALLOWED_BY_ROLE = {
    "client": m.CLIENT_REQUESTS,
    "worker": m.WORKER_TO_COORDINATOR,
}


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        seed = settings.seed if settings.seed is not None else secrets.randbits(64)
        self.connections: dict[int, Connection] = {}
        self.journal = MemoryJournal()
        self.scheduler = Scheduler(self._scheduler_config(), random.Random(seed), time.time())
        self.runner = Runner(self.scheduler, self.journal, self.connections)
        self._next_conn = 1
        self._handshaking = 0
        self._stop = asyncio.Event()
        self.port: int | None = None
        self.refused_connections = 0
        self.protocol_errors = 0

    def _scheduler_config(self, epoch: int = 1) -> SchedulerConfig:
        s = self.settings
        return SchedulerConfig(
            node_id=s.node_id, address=s.address, epoch=epoch, policy=s.policy,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s, poison_workers_max=s.poison_workers_max,
            retry_base_s=s.retry_base_s, retry_cap_s=s.retry_cap_s,
            keep_finished=s.keep_finished, keep_finished_for_s=s.keep_finished_for_s,
        )  # fmt: skip

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        s = self.settings
        host, port = s.listen
        server = await asyncio.start_server(self._on_connect, host, port,
                                            limit=transport.READ_BYTES, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        log.info("node=%d listening on %s:%d policy=%s heartbeat=%gs/%gs auth=%s",
                 s.node_id, host, self.port, s.policy, s.heartbeat_interval_s,
                 s.heartbeat_timeout_s, "token" if s.token else "none")
        log.info("node=%d state is kept in memory only: a restart forgets every job", s.node_id)
        if s.peers:
            log.warning("node=%d --peer given, but peer coordinators are not supported yet; "
                        "running alone", s.node_id)
        log.info("node=%d epoch=%d became leader (single coordinator)", s.node_id, 1)
        try:
            await self._stop.wait()
        finally:
            log.info("node=%d shutting down", s.node_id)
            server.close()
            self.runner.flush_now()
            for conn in list(self.connections.values()):
                conn.flush()
                conn.close("coordinator shutting down")
            self.runner.stop()
            self.journal.flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        s = self.settings
        conn = Connection(reader, writer, output_bytes_max=s.output_bytes_max)
        if self._handshaking >= s.unauthenticated_max:
            self.refused_connections += 1
            log.warning("refusing %s: %d connections already in handshake", conn.peer,
                        self._handshaking)
            conn.close("too many unauthenticated connections")
            return
        self._handshaking += 1
        try:
            hello = await transport.accept(conn, s.token, f"c{s.node_id}", 1,
                                           s.handshake_timeout_s)
        except (RemoteProtocolError, AuthError, TimeoutError, OSError) as exc:
            self.protocol_errors += 1
            reason = "handshake timed out" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("closing %s: %s", conn.peer, reason)
            conn.close(reason)
            return
        finally:
            self._handshaking -= 1
        allowed = ALLOWED_BY_ROLE.get(hello.role)
        if allowed is None:
            conn.send(m.Refused(code="role", reason=f"role {hello.role!r} is not served here"))
            await conn.drain()
            conn.close("unsupported role")
            return
        conn.widen(allowed, s.frame_bytes_max)
        conn_id = self._next_conn
        self._next_conn += 1
        self.connections[conn_id] = conn
        self.runner.feed(Connected(conn_id, hello.role, hello.name, conn.peer))
        reason = "closed by peer"
        try:
            while (msg := await conn.receive()) is not None:
                self.runner.feed(Received(conn_id, msg))
            if conn.closed:
                reason = conn.close_reason
        except RemoteProtocolError as exc:
            self.protocol_errors += 1
            reason = f"protocol error: {exc}"
            log.warning("closing %s (%s %s): %s", conn.peer, hello.role, hello.name, reason)
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            conn.close(reason)
            del self.connections[conn_id]
            self.runner.feed(Closed(conn_id, reason))


async def _main(settings: CoordinatorSettings) -> int:
    coordinator = Coordinator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.stop)
    try:
        await coordinator.serve()
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.address, exc.strerror or exc)
        return 1
    return 0


def check_bind(settings: CoordinatorSettings) -> None:
    host = settings.listen[0]
    if not is_loopback(host) and settings.token is None and not settings.tls.enabled:
        raise ConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach the port "
            "could run commands; give --token-file (or TCPSCHED_TOKEN), or listen on 127.0.0.1"
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, _args = coordinator_settings(argv)
        check_bind(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(settings.log_level, f"c{settings.node_id}")
    import uvloop

    try:
        return uvloop.run(_main(settings))
    except TcpschedError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
