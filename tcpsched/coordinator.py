"""`python -m tcpsched.coordinator`: wires the scheduler core to sockets and the journal.

One asyncio server; each connection does the handshake (bounded in number and time while
unauthenticated), gets an integer id, and from then on every message it sends is an event for
the scheduler, fed through the runner. SIGTERM/SIGINT stop accepting, flush, and exit 0. A
journal that fails (a full disk, an I/O error) stops it the same way, with one CRITICAL line
and exit 1; meanwhile the runner answers every request with an error, acknowledging nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from tcpsched import logsetup
from tcpsched.config import CoordinatorSettings, coordinator_settings, is_loopback
from tcpsched.core import messages as m
from tcpsched.core.codec import UnpackLimits
from tcpsched.core.events import Closed, Connected, HigherEpoch, Received
from tcpsched.core.limits import WireLimits
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.errors import (
    AuthError,
    ConfigError,
    JournalError,
    RemoteProtocolError,
    TcpschedError,
)
from tcpsched.runtime import transport
from tcpsched.runtime.runner import Runner
from tcpsched.runtime.storage import FSYNC_LOSS, Storage, StorageConfig, check
from tcpsched.runtime.tls import server_context
from tcpsched.runtime.transport import Connection, LogLimiter

log = logging.getLogger(__name__)

# A burst of connections beyond the accept queue is silently dropped by the kernel and
# retried by the dialer seconds later; deeper than asyncio's 100 so a burst is accepted (and
# then refused or timed out by us, with a reason) at once.
LISTEN_BACKLOG = 1024

# A 20-byte `list` can ask for a reply of thousands of records; a peer that sends many and
# reads none must meet the output bound after each reply, not after a whole read's worth.
# (Writes are not yielded on: their replies are small and they share a journal flush.)
READ_REQUESTS = frozenset({m.Status, m.Wait, m.ListJobs, m.Workers, m.Stats, m.Leader})

# Connections refused or closed, by cause; shown by `stats`.
CONNECTION_COUNTERS = ("protocol_errors", "auth_failures", "handshake_timeouts", "refused_busy",
                       "idle_closed")

ALLOWED_BY_ROLE = {
    "client": m.CLIENT_REQUESTS,
    "worker": m.WORKER_TO_COORDINATOR,
}
SERVED_ROLES = frozenset(ALLOWED_BY_ROLE)  # peers arrive with replication


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        seed = settings.seed if settings.seed is not None else secrets.randbits(64)
        self.connections: dict[int, Connection] = {}
        loop = asyncio.get_running_loop()
        # Recovery and the queue rebuild only allocate (millions of objects at a million jobs):
        # collections meanwhile would walk them all again and again for nothing. Then the
        # recovered jobs, which live long, are kept out of every future full collection.
        gc.disable()
        try:
            self.journal, self.recovery = Storage.open(
                settings.data_dir, StorageConfig(fsync=settings.fsync,
                                                 compact_bytes=settings.compact_bytes,
                                                 compact_records=settings.compact_records),
                repair=settings.repair, call_later=loop.call_later)
            # A restart is a new epoch, stored before anything is dispatched: workers then
            # refuse whatever a previous life of this coordinator might still send.
            try:
                self.epoch = self.journal.next_epoch()
            except BaseException:
                self.journal.close()  # unlock, so the one error line is all that is left
                raise
            self.scheduler = Scheduler(self._scheduler_config(self.epoch), random.Random(seed),
                                       time.monotonic(), table=self.recovery.table,
                                       wall=time.time())
        finally:
            gc.freeze()
            gc.enable()
        for warning in self.recovery.warnings:
            log.warning("node=%d %s", settings.node_id, warning)
        self.journal.publish(self.scheduler.extra_stats)
        self.runner = Runner(self.scheduler, self.journal, self.connections)
        self.storage_failure: str | None = None
        self.runner.on_journal_failure = self.journal.on_failure = self.storage_failed
        self.runner.on_higher_epoch = self.adopt_higher_epoch
        self._next_conn = 1
        self._handshaking = 0
        self._stop = asyncio.Event()
        self.port: int | None = None
        self.refused_connections = 0
        self.protocol_errors = 0
        self._close_log = LogLimiter(log)
        for what in CONNECTION_COUNTERS:
            self.scheduler.extra_stats.setdefault(what, 0)
        self._open: set[Connection] = set()  # every connection, in its handshake or not
        self._none_open = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None

    def _scheduler_config(self, epoch: int = 1) -> SchedulerConfig:
        s = self.settings
        return SchedulerConfig(
            node_id=s.node_id, address=s.address, epoch=epoch, policy=s.policy,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s, poison_workers_max=s.poison_workers_max,
            retry_base_s=s.retry_base_s, retry_cap_s=s.retry_cap_s,
            keep_finished=s.keep_finished, keep_finished_for_s=s.keep_finished_for_s,
            keep_output_chars=s.keep_output_bytes, wire_limits=self._wire_limits(),
        )  # fmt: skip

    def _wire_limits(self) -> WireLimits:
        s = self.settings
        return WireLimits(s.frame_bytes_max, s.array_items_max, s.map_items_max)

    def stop(self) -> None:
        self._stop.set()

    def adopt_higher_epoch(self, effect: HigherEpoch) -> None:
        """A worker has seen an epoch above ours: this coordinator was started behind its
        cluster (a fresh or restored data dir) and every order it sends is refused. Alone, it
        is its whole majority, so what an operator wants is for it to go on leading: it takes
        the next epoch above the one seen, stored durably before any order carries it, and the
        workers it turned away register again at once. (With peers, the node steps down.)"""
        if effect.epoch <= self.scheduler.config.epoch:
            return  # already past it
        try:
            epoch = self.journal.next_epoch(at_least=effect.epoch + 1)
        except JournalError as exc:
            self.storage_failed(str(exc))
            return
        log.warning("node=%d %s: taking epoch %d", self.settings.node_id, effect.reason, epoch)
        self.epoch = epoch
        self.scheduler.adopt_epoch(epoch)

    def storage_failed(self, reason: str) -> None:
        """The one path for a journal that cannot be written: say so once, then stop (exit 1).
        Until the loop gets there, the runner answers every request with an error."""
        if self.storage_failure is None:
            self.storage_failure = reason
            log.critical("node=%d %s; stopping, and answering every request meanwhile with "
                         "an error (nothing unrecorded was acknowledged; restart once there is "
                         "room)", self.settings.node_id, reason)
        self.stop()

    async def serve(self) -> None:
        s = self.settings
        host, port = s.listen
        ssl_context = server_context(s.tls)
        server = await asyncio.start_server(
            self._on_connect, host, port, limit=transport.READ_BYTES, reuse_address=True,
            backlog=LISTEN_BACKLOG, ssl=ssl_context,
            ssl_handshake_timeout=s.handshake_timeout_s if ssl_context else None,
        )
        self.port = server.sockets[0].getsockname()[1]
        tls = "off" if ssl_context is None else (
            "mutual" if s.tls.authenticates_dialers else "server-only")
        log.info("node=%d listening on %s:%d policy=%s heartbeat=%gs/%gs auth=%s tls=%s",
                 s.node_id, host, self.port, s.policy, s.heartbeat_interval_s,
                 s.heartbeat_timeout_s, "token" if s.token else "none", tls)
        self._sweep_idle()
        r = self.recovery
        states = " ".join(f"{k}={v}" for k, v in r.jobs_by_state().items() if v)
        log.info("node=%d recovered %d job(s)%s from %s: snapshot seq=%d + %d journal record(s) "
                 "in %.2fs; last seq=%d fsync=%s (a crash loses %s)", s.node_id, len(r.table),
                 f" ({states})" if states else "", s.data_dir, r.snapshot_seq, r.replayed,
                 r.seconds, r.last_seq, s.fsync, FSYNC_LOSS[s.fsync])
        if s.peers:
            log.warning("node=%d --peer given, but peer coordinators are not supported yet; "
                        "running alone", s.node_id)
        log.info("node=%d epoch=%d became leader (single coordinator)", s.node_id, self.epoch)
        try:
            await self._stop.wait()
        finally:
            log.info("node=%d shutting down", s.node_id)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            server.close()
            self.runner.flush_now()
            await self._close_all()
            self.runner.stop()
            try:
                self.journal.close()
            except JournalError as exc:
                self.storage_failed(str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    def _count(self, what: str) -> None:
        """Count a refused or closed connection; the figures show in `stats`."""
        if what == "protocol_errors":
            self.protocol_errors += 1
        elif what == "refused_busy":
            self.refused_connections += 1
        stats = self.scheduler.extra_stats
        stats[what] = stats.get(what, 0) + 1

    def _sweep_idle(self) -> None:
        """Close idle connections, then re-arm. A worker beats every heartbeat interval, so
        silence for --idle-timeout means it is gone. A client may rightly be silent for a long
        time while a `wait` is in flight, so a client is closed only when it has no request
        awaiting a reply (every request gets exactly one reply) and nothing has crossed the
        connection either way for --idle-timeout; the client reconnects on its next request.
        Connections still in their handshake are the handshake deadline's business."""
        idle_s = self.settings.idle_timeout_s
        self._close_log.flush()
        if idle_s > 0:
            now = time.monotonic()
            for conn in list(self.connections.values()):
                if conn.role == "worker":
                    silent_s = now - conn.last_message_at_s
                elif conn.messages_in <= conn.messages_out:
                    silent_s = now - max(conn.last_message_at_s, conn.last_sent_at_s)
                else:
                    continue  # a request is in flight
                if silent_s > idle_s and not conn.closed:
                    self._count("idle_closed")
                    log.info("closing %s (%s): idle for %.1fs (--idle-timeout %g)", conn.peer,
                             conn.role, silent_s, idle_s)
                    conn.close(f"idle for more than {idle_s:g}s", abort=True)
        period_s = min(idle_s / 4, 1.0) if idle_s > 0 else 1.0
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(max(period_s, 0.05), self._sweep_idle)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        s = self.settings
        conn = Connection(reader, writer, output_bytes_max=s.output_bytes_max, backpressure=True,
                          write_stall_s=s.idle_timeout_s or transport.WRITE_STALL_S)
        self._open.add(conn)
        self._none_open.clear()
        try:
            await self._serve_connection(conn)
        finally:
            self._open.discard(conn)
            if not self._open:
                self._none_open.set()

    async def _close_all(self) -> None:
        """At shutdown: close every connection, handshaking ones too, and let their handlers
        end on their own (a handler cancelled at loop teardown is logged as an error). A TLS
        close waits for the peer's close_notify, so whatever is still open after a moment is
        aborted."""
        for conn in list(self._open):
            conn.flush()
            conn.close("coordinator shutting down")
        for grace_s in (1.0, 0.5):
            if not self._open:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._none_open.wait()
            for conn in list(self._open):
                conn.writer.transport.abort()

    async def _serve_connection(self, conn: Connection) -> None:
        s = self.settings
        if self._handshaking >= s.unauthenticated_max:
            self._count("refused_busy")
            self._close_log.warning("refusing %s: %d connections already in handshake "
                                    "(--max-unauthenticated)", conn.peer, self._handshaking)
            conn.send(m.Refused(code="busy", reason="too many connections in handshake"))
            conn.flush()
            conn.close("too many unauthenticated connections", abort=True)
            return
        self._handshaking += 1
        try:
            hello = await transport.accept(conn, s.token, f"c{s.node_id}",
                                           self.scheduler.config.epoch, s.handshake_timeout_s,
                                           roles=SERVED_ROLES)
        except (RemoteProtocolError, AuthError, TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                self._count("handshake_timeouts")
                reason = f"no handshake within {s.handshake_timeout_s:g}s"
            else:
                self._count("auth_failures" if isinstance(exc, AuthError) else "protocol_errors")
                reason = str(exc) or type(exc).__name__
            self._close_log.warning("closing %s before authentication: %s", conn.peer, reason)
            conn.close(reason, abort=True)
            return
        finally:
            self._handshaking -= 1
        allowed = ALLOWED_BY_ROLE[hello.role]
        conn.widen(allowed, s.frame_bytes_max, UnpackLimits.from_wire_limits(self._wire_limits()))
        conn.role = hello.role
        conn_id = self._next_conn
        self._next_conn += 1
        self.connections[conn_id] = conn
        self.runner.feed(Connected(conn_id, hello.role, hello.name, conn.peer))
        reason = "closed by peer"
        try:
            while (msg := await conn.receive()) is not None:
                self.runner.feed(Received(conn_id, msg))
                if type(msg) in READ_REQUESTS:
                    await asyncio.sleep(0)  # its reply goes out (and meets the bound) first
            if conn.closed:
                reason = conn.close_reason
        except RemoteProtocolError as exc:
            self._count("protocol_errors")
            reason = f"protocol error: {exc}"
            self._close_log.warning("closing %s (%s %s): %s", conn.peer, hello.role,
                                    hello.name, reason)
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

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # The runner and the storage report journal failures themselves; a JournalError that
        # still escapes into a callback takes the same path rather than leave us running on.
        if isinstance(context.get("exception"), JournalError):
            coordinator.storage_failed(str(context["exception"]))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(on_error)
    try:
        await coordinator.serve()
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.address, exc.strerror or exc)
        return 1
    return 1 if coordinator.storage_failure is not None else 0


def check_bind(settings: CoordinatorSettings) -> None:
    """Protected by default (Redis's protected mode): a non-loopback address needs a token or
    mutual TLS, since TLS without --tls-ca encrypts but lets anyone in."""
    host = settings.listen[0]
    if (not is_loopback(host) and settings.token is None
            and not settings.tls.authenticates_dialers):
        raise ConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach the port "
            "could run commands; give --token-file (or TCPSCHED_TOKEN), or mutual TLS "
            "(--tls-cert, --tls-key, --tls-ca), or listen on 127.0.0.1"
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, args = coordinator_settings(argv)
        if args.check:
            code, lines = check(settings.data_dir)
            for line in lines:
                print(line, file=sys.stdout if code == 0 or not line.startswith("error")
                      else sys.stderr)
            return code
        check_bind(settings)
        server_context(settings.tls)  # unreadable certificates: one line and exit 2, now
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
