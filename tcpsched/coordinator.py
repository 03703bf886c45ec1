"""`python -m tcpsched.coordinator`: wires the scheduler core to sockets and the journal.

One asyncio server; each connection does the handshake (bounded in number and time while
unauthenticated), gets an integer id, and from then on every message it sends is an event for
the scheduler, fed through the runner. SIGTERM/SIGINT stop accepting, flush, and exit 0. A
journal that fails (a full disk, an I/O error) stops it the same way, with one CRITICAL line
and exit 1; meanwhile the runner answers every request with an error, acknowledging nothing.

Admission: a connection takes a handshake slot the moment it is accepted, before its TLS
handshake (`transport.Listener` hands sockets over raw; TLS starts on each inside the same
deadline as the token handshake), so neither silent sockets nor stalled TLS handshakes can pile
up past the slots. Slots are bounded in all and per source address, and when they are full the
oldest pending connection is closed to admit the new one (`core/admission.py` says why that
keeps service available where refusing the newcomer did not).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

from tcpsched import logsetup
from tcpsched.config import CoordinatorSettings, coordinator_settings, is_loopback
from tcpsched.core import messages as m
from tcpsched.core.admission import HandshakeSlots
from tcpsched.core.breaker import BreakerConfig
from tcpsched.core.codec import UnpackLimits
from tcpsched.core.election import ElectionTiming
from tcpsched.core.events import Closed, Connected, Received, Tick
from tcpsched.core.limits import WireLimits
from tcpsched.core.node import (
    Compacted,
    Node,
    NodeConfig,
    PeerClosed,
    PeerReceived,
    ReceiveSnapshot,
    Recovered,
    SendSnapshot,
    SnapshotInstalled,
)
from tcpsched.core.peer_messages import PEER_MESSAGES, SNAPSHOT_CHUNK_BYTES, InstallSnapshot
from tcpsched.core.replication import entries_of
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.state import JobTable
from tcpsched.errors import (
    AuthError,
    ConfigError,
    JournalError,
    RemoteProtocolError,
    TcpschedError,
)
from tcpsched.runtime import handshake, heap, transport
from tcpsched.runtime.journal_lines import decode_entry, encode_line
from tcpsched.runtime.peers import PeerLinks, peer_id_from_name
from tcpsched.runtime.replicated import decode_entries
from tcpsched.runtime.runner import Runner
from tcpsched.runtime.storage import FSYNC_LOSS, Storage, StorageConfig, check
from tcpsched.runtime.tls import client_context, server_context
from tcpsched.runtime.transport import Connection, LogLimiter

log = logging.getLogger(__name__)

# A burst of connections beyond the accept queue is silently dropped by the kernel and
# retried by the dialer seconds later; deeper than asyncio's 100 so a burst is accepted (and
# then refused or timed out by us, with a reason) at once.
LISTEN_BACKLOG = 1024

# A 20-byte `list` can ask for a reply of thousands of records; a peer that sends many and
# reads none must meet the output bound after each reply, not after a whole read's worth.
# (Writes are not yielded on: their replies are small and they share a journal flush.)
READ_REQUESTS = frozenset({m.Status, m.Wait, m.ListJobs, m.Workers, m.Stats, m.Leader,
                           m.Explain})

# Connections refused or closed, by cause; shown by `stats`.
# refused_busy: closed while still in the handshake to make room for a newer connection.
CONNECTION_COUNTERS = ("protocol_errors", "auth_failures", "handshake_timeouts", "refused_busy",
                       "idle_closed", "tls_failures")

ALLOWED_BY_ROLE = {
    "client": m.CLIENT_REQUESTS,
    "worker": m.WORKER_TO_COORDINATOR,
    "peer": frozenset(PEER_MESSAGES),
}
SERVED_ROLES = frozenset(ALLOWED_BY_ROLE)


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        seed = settings.seed if settings.seed is not None else secrets.randbits(64)
        self.connections: dict[int, Connection] = {}
        loop = asyncio.get_running_loop()
        # Recovery and the queue rebuild only allocate (millions of objects at a million jobs):
        # collections meanwhile would walk them all again and again for nothing. Then the
        # recovered jobs, which live long, are kept out of every future full collection.
        self.rng = random.Random(seed)
        self._loop = loop
        self.extra_stats: dict[str, Any] = {}  # figures the shell adds (journal, connections)
        peers = dict(settings.peers)
        gc.disable()
        try:
            self.journal, self.recovery = Storage.open(
                settings.data_dir, StorageConfig(fsync=settings.fsync,
                                                 compact_bytes=settings.compact_bytes,
                                                 compact_records=settings.compact_records),
                repair=settings.repair, call_later=loop.call_later, group=bool(peers))
            r = self.recovery
            # The epoch lives in the log: the node's election promises a new one, journaled
            # before anything is dispatched, so workers refuse whatever a previous life of
            # this coordinator might still send.
            self.node = Node(
                NodeConfig(node_id=settings.node_id, address=settings.address, peers=peers,
                           timing=ElectionTiming(
                               election_timeout_s=settings.election_timeout_s,
                               hold_down_s=settings.hold_down_s),
                           beat_s=settings.peer_heartbeat_s),
                random.Random(self.rng.getrandbits(64)), time.monotonic(),
                Recovered(table=r.table,
                          entries=tuple(entries_of(r.entries)),
                          base=(r.snapshot_epoch, r.snapshot_seq), commit_seq=r.commit_seq,
                          promised_epoch=r.promise[0], promised_leader=r.promise[1]),
                make_scheduler=self._make_scheduler,
                encode_line=lambda epoch, seq, record: encode_line(seq, record, epoch),
                decode_line=decode_entry, decode_entries=decode_entries,
            )
            # The node's log holds the window now; the list of (seq, epoch, line) tuples it
            # was copied from would stay alive with `self.recovery` (72 bytes an entry).
            r.entries = []
        finally:
            gc.freeze()
            gc.enable()
        # From now on, what survives each full collection is frozen too (runtime/heap.py), so
        # the pause does not grow with the jobs submitted since; thawed when a role ends.
        self._gc = heap.FreezeSurvivors(self.extra_stats)
        self._gc.watch(self.node.scheduler, self.node.table)
        for warning in self.recovery.warnings:
            log.warning("node=%d %s", settings.node_id, warning)
        self.journal.publish(self.extra_stats)
        self.journal.snapshot_source = self._snapshot_source
        self.peers = PeerLinks(settings.node_id, peers, settings.token,
                               client_context(settings.tls) if settings.tls.enabled else None,
                               frame_bytes_max=settings.frame_bytes_max,
                               rng=random.Random(self.rng.getrandbits(64)))
        self.runner = Runner(self.node, self.journal, self.connections,
                             peer_send=self.peers.send, peer_flush=self.peers.flush)
        self.runner.on_snapshot = self._on_snapshot_effect
        self.journal.on_compacted = self._compacted_in_thread
        self._snapshot_tasks: set[asyncio.Task[None]] = set()
        self.storage_failure: str | None = None
        self.runner.on_journal_failure = self.journal.on_failure = self.storage_failed
        self._next_conn = 1
        self._slots = HandshakeSlots(settings.unauthenticated_max,
                                     settings.unauthenticated_per_source_max)
        self._ssl_context: ssl.SSLContext | None = None
        self._stop = asyncio.Event()
        self.port: int | None = None
        self.refused_connections = 0
        self.protocol_errors = 0
        self._close_log = LogLimiter(log)
        for what in CONNECTION_COUNTERS:
            self.extra_stats.setdefault(what, 0)
        self._open: set[_Accepted] = set()  # every connection, in its handshake or not
        self._trim_due = False  # a connection ended since the sweep last trimmed the heap
        self._none_open = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.http: Any = None  # runtime/http's HttpServer, with --http

    def attach_local(self, conn: Any) -> int:
        """An in-process client connection (the HTTP bridge), registered like a socket's."""
        conn_id = self._next_conn
        self._next_conn += 1
        self.connections[conn_id] = conn
        self.runner.feed(Connected(conn_id, "client", "http", "http"))
        return conn_id

    def detach_local(self, conn_id: int, reason: str) -> None:
        if self.connections.pop(conn_id, None) is not None:
            self.runner.feed(Closed(conn_id, reason))

    async def _start_http(self) -> None:
        from tcpsched.runtime.http.app import HttpServer

        self.http = HttpServer(self)
        self.runner.on_entries = self.http.metrics.observe_entries
        self.journal.on_fsync = self.http.metrics.observe_fsync
        try:
            await self.http.start()
        except OSError as exc:
            http = self.http
            self.http = None
            await http.stop()
            host, port = self.settings.http or ("", 0)
            raise TcpschedError(f"cannot serve HTTP on {host}:{port}: "
                                f"{exc.strerror or exc}") from None

    def _compacted_in_thread(self, seq: int) -> None:
        """Called by the compaction thread: the node hears of it on the loop."""
        self._loop.call_soon_threadsafe(self.runner.feed, Compacted(seq))

    def _on_snapshot_effect(self, effect: SendSnapshot | ReceiveSnapshot) -> None:
        if isinstance(effect, SendSnapshot):
            task = asyncio.get_running_loop().create_task(self._send_snapshot(effect.peer))
            self._snapshot_tasks.add(task)
            task.add_done_callback(self._snapshot_tasks.discard)
            return
        chunk = effect.chunk
        self.journal.receive_snapshot_chunk(chunk.offset, chunk.data)
        if chunk.done:
            table = self.journal.install_snapshot(chunk.snap_seq, chunk.snap_epoch)
            asyncio.get_running_loop().call_soon(self.runner.feed, SnapshotInstalled(
                leader=effect.leader, epoch=chunk.epoch, snap_epoch=chunk.snap_epoch,
                snap_seq=chunk.snap_seq, table=table))

    async def _send_snapshot(self, peer: int) -> None:
        """Our snapshot file to a follower behind our log window, a chunk at a time, each
        waiting for the link to drain (a big snapshot must not pile up in memory)."""
        found = self.journal.snapshot_for_peer()
        if found is None:
            log.warning("node=%d peer %d needs a snapshot, but there is none yet",
                        self.settings.node_id, peer)
            return
        seq, epoch, path = found
        data = await asyncio.to_thread(path.read_bytes)
        step = SNAPSHOT_CHUNK_BYTES
        for offset in range(0, max(len(data), 1), step):
            if not self.node.is_leader:
                return
            self.peers.send(peer, InstallSnapshot(
                src=self.settings.node_id, epoch=self.node.epoch, snap_epoch=epoch,
                snap_seq=seq, offset=offset, data=data[offset : offset + step],
                done=offset + step >= len(data)))
            await self.peers.drain(peer)
        log.info("node=%d sent peer %d the snapshot at seq=%d (%d bytes)",
                 self.settings.node_id, peer, seq, len(data))

    def _make_scheduler(self, table: JobTable, epoch: int, now: float, wall: float
                        ) -> Scheduler:
        """The node's scheduler, built each time this coordinator becomes the leader.

        Building it queues every pending job (up to a million heap entries after a restart)
        and only allocates: collections meanwhile would walk the new entries again and again
        (0.9 of 1.3 s at a million jobs), so they wait, as during recovery. (No `gc.freeze`
        here, unlike at start: a node may lead many times, and a freeze would keep whatever
        cyclic garbage a previous term's scheduler left.)"""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            scheduler = Scheduler(self._scheduler_config(epoch),
                                  random.Random(self.rng.getrandbits(64)), now, table=table,
                                  wall=wall)
        finally:
            if was_enabled:
                gc.enable()
        scheduler.extra_stats = self.extra_stats
        return scheduler

    def _snapshot_source(self) -> tuple[int, int, Any] | None:
        """Where a snapshot may stand: the table's own position, while it holds nothing that
        is not committed (a follower's table never does; a leader's, between turns)."""
        point = self.node.snapshot_point()
        if point is None:
            return None
        seq, epoch = point
        return seq, epoch, self.node.table.image()

    def _scheduler_config(self, epoch: int = 1) -> SchedulerConfig:
        s = self.settings
        return SchedulerConfig(
            node_id=s.node_id, address=s.address, epoch=epoch, policy=s.policy,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s, poison_workers_max=s.poison_workers_max,
            retry_base_s=s.retry_base_s, retry_cap_s=s.retry_cap_s,
            keep_finished=s.keep_finished, keep_finished_for_s=s.keep_finished_for_s,
            keep_output_chars=s.keep_output_bytes, wire_limits=self._wire_limits(),
            max_pending=s.max_pending, breaker=BreakerConfig(
                s.breaker_failures, s.breaker_cooldown_s, s.breaker_cooldown_max_s),
        )  # fmt: skip

    def _wire_limits(self) -> WireLimits:
        s = self.settings
        return WireLimits(s.frame_bytes_max, s.array_items_max, s.map_items_max)

    def stop(self) -> None:
        self._stop.set()

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
        if not s.peers:
            # Alone, the election is immediate: journal the new epoch before listening, so a
            # full disk is one line and an exit, not a coordinator that serves nothing.
            self.runner.feed(Tick())
            self.runner.flush_now()
            if self.storage_failure is not None:
                self.runner.stop()
                with contextlib.suppress(JournalError):
                    self.journal.close()
                return
        ssl_context = self._ssl_context = server_context(s.tls)
        # Raw sockets even with TLS: each connection starts TLS in its handler (see
        # _handshake), so it is counted and timed from accept, not once its TLS is done.
        listener = transport.Listener.bind(host, port, LISTEN_BACKLOG)
        self.port = listener.port
        tls = "off" if ssl_context is None else (
            "mutual" if s.tls.authenticates_dialers else "server-only")
        log.info("node=%d listening on %s:%d policy=%s heartbeat=%gs/%gs auth=%s tls=%s",
                 s.node_id, host, self.port, s.policy, s.heartbeat_interval_s,
                 s.heartbeat_timeout_s, "token" if s.token else "none", tls)
        self._gc.install()
        self._sweep_idle()
        accepting = asyncio.ensure_future(listener.serve(self._on_accept))
        r = self.recovery
        states = " ".join(f"{k}={v}" for k, v in r.jobs_by_state().items() if v)
        log.info("node=%d recovered %d job(s)%s from %s: snapshot seq=%d + %d journal record(s) "
                 "in %.2fs; last seq=%d fsync=%s (a crash loses %s)", s.node_id, len(r.table),
                 f" ({states})" if states else "", s.data_dir, r.snapshot_seq, r.replayed,
                 r.seconds, r.last_seq, s.fsync, FSYNC_LOSS[s.fsync])
        if s.peers:
            log.info("node=%d peers: %s", s.node_id,
                     " ".join(f"{i}@{a}" for i, a in sorted(s.peers)))
        self.peers.start()
        self.runner.feed(Tick())
        try:
            if s.http is not None:
                await self._start_http()
            await self._stop.wait()
        finally:
            log.info("node=%d shutting down", s.node_id)
            if self.http is not None:
                await self.http.stop()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._gc.uninstall()
            accepting.cancel()  # before the close: a socket closed under a waiting accept
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
            listener.close()
            for task in list(self._snapshot_tasks):
                task.cancel()
            await self.peers.close()
            self.runner.flush_now()
            await self._close_all()
            self.runner.stop()
            try:
                self.journal.close()
            except JournalError as exc:
                self.storage_failed(str(exc))

    def _count(self, what: str) -> None:
        """Count a refused or closed connection; the figures show in `stats`."""
        if what == "protocol_errors":
            self.protocol_errors += 1
        elif what == "refused_busy":
            self.refused_connections += 1
        stats = self.extra_stats
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
        if self._trim_due:
            # Closed connections freed their buffers: give the pages back (runtime/heap.py),
            # so memory returns to its baseline within one sweep period after a burst.
            self._trim_due = False
            heap.trim()
        # A term that ended, or a table rebuilt, may leave cycles among objects frozen
        # while alive: then the next full collection walks everything (runtime/heap.py).
        self._gc.watch(self.node.scheduler, self.node.table)
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

    async def _on_accept(self, sock: socket.socket) -> None:
        accepted = _Accepted(sock)
        self._open.add(accepted)
        self._none_open.clear()
        for victim in self._slots.admit(accepted, accepted.source):
            assert isinstance(victim, _Accepted)
            self._evict(victim)
        try:
            hello = await self._handshake(accepted)
            if hello is not None:
                assert accepted.conn is not None
                await self._serve_connection(accepted.conn, hello)
        finally:
            self._slots.release(accepted)
            self._open.discard(accepted)
            self._trim_due = True
            if not self._open:
                self._none_open.set()

    def _evict(self, victim: _Accepted) -> None:
        """Close a connection still in its handshake to make room for a newer one."""
        self._count("refused_busy")
        source = victim.source
        self._close_log.warning(
            "closing %s before authentication: handshake slots full (%d from %s, %d in all; "
            "--max-unauthenticated-per-source %d, --max-unauthenticated %d); the oldest goes "
            "first", victim.peer, self._slots.pending_from(source), source, len(self._slots),
            self._slots.per_source_max, self._slots.total_max)
        victim.evict()

    async def _close_all(self) -> None:
        """At shutdown: close every connection, handshaking ones too, and let their handlers
        end on their own (a handler cancelled at loop teardown is logged as an error). A TLS
        close waits for the peer's close_notify, so whatever is still open after a moment is
        aborted."""
        for accepted in list(self._open):
            accepted.close("coordinator shutting down")
        for grace_s in (1.0, 0.5):
            if not self._open:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._none_open.wait()
            for accepted in list(self._open):
                accepted.abort()

    async def _handshake(self, accepted: _Accepted) -> m.Hello | None:
        """TLS (if configured), then the token handshake, under one deadline counted from
        accept. Returns the peer's Hello (`accepted.conn` is set then), or None once the
        connection is closed (the reason logged, rate-limited, and counted)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + s.handshake_timeout_s - (time.monotonic()
                                                            - accepted.accepted_at_s)
        stage = "TLS handshake" if self._ssl_context is not None else "handshake"
        try:
            async with asyncio.timeout_at(deadline_s):
                reader, writer = await transport.open_accepted(
                    accepted.sock, self._ssl_context, deadline_s - loop.time())
                conn = accepted.conn = Connection(
                    reader, writer, output_bytes_max=s.output_bytes_max, backpressure=True,
                    write_stall_s=s.idle_timeout_s or transport.WRITE_STALL_S)
                if accepted.is_closed:  # evicted or shut down while its TLS finished
                    conn.close(accepted.close_reason, abort=True)
                    return None
                stage = "handshake"
                return await handshake.accept(conn, s.token, f"c{s.node_id}",
                                              self.node.epoch,
                                              s.handshake_timeout_s, roles=SERVED_ROLES)
        except (RemoteProtocolError, AuthError, TimeoutError, OSError) as exc:
            # ssl.SSLError is an OSError.
            if accepted.is_closed:
                return None  # evicted (logged then) or shut down
            if isinstance(exc, TimeoutError):
                self._count("handshake_timeouts")
                reason = f"no {stage} within {s.handshake_timeout_s:g}s"
            elif stage == "TLS handshake":
                self._count("tls_failures")
                reason = f"TLS handshake failed: {transport.describe(exc)}"
            else:
                self._count("auth_failures" if isinstance(exc, AuthError) else "protocol_errors")
                reason = str(exc) or type(exc).__name__
            self._close_log.warning("closing %s before authentication: %s", accepted.peer,
                                    reason)
            accepted.close(reason, abort=True)
            return None
        finally:
            self._slots.release(accepted)

    async def _serve_peer(self, conn: Connection, hello: m.Hello) -> None:
        """A coordinator that dialled us: what it says goes to the node as peer events."""
        peer = peer_id_from_name(hello.name)
        if peer is None or peer not in dict(self.settings.peers):
            self._close_log.warning("closing %s: %r is not a configured peer (--peer)",
                                    conn.peer, hello.name)
            conn.close("not a configured peer", abort=True)
            return
        s = self.settings
        conn.widen(ALLOWED_BY_ROLE["peer"], s.frame_bytes_max,
                   UnpackLimits.from_wire_limits(self._wire_limits()))
        conn.role = "peer"
        reason = "closed by peer"
        try:
            while (msg := await conn.receive()) is not None:
                self.runner.feed(PeerReceived(peer, msg))
        except RemoteProtocolError as exc:
            self._count("protocol_errors")
            reason = f"protocol error: {exc}"
            self._close_log.warning("closing %s (peer %d): %s", conn.peer, peer, reason)
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            conn.close(reason)
            self.runner.feed(PeerClosed(peer))

    async def _serve_connection(self, conn: Connection, hello: m.Hello) -> None:
        s = self.settings
        if hello.role == "peer":
            await self._serve_peer(conn, hello)
            return
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


class _Accepted:
    """One accepted connection, from accept on: its raw socket, and its Connection once the
    streams (and TLS, if configured) are up. The handshake slots hold these."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.accepted_at_s = time.monotonic()
        try:
            host, port = sock.getpeername()[:2]
        except OSError:  # reset before we looked
            host, port = "?", 0
        self.source = str(host)
        self.peer = f"{host}:{port}"
        self.conn: Connection | None = None
        self.is_closed = False
        self.close_reason = ""

    def evict(self) -> None:
        """Closed to make room: told so with a Refused(busy) if it can read a frame (no TLS,
        or TLS already up); one still in its TLS handshake just sees the socket close."""
        if self.conn is not None and not self.conn.closed:
            self.conn.send(m.Refused(code="busy", reason="too many connections in handshake "
                                     "(the oldest are closed first)"))
            self.conn.flush()
        self.close("closed to make room in the handshake slots", abort=True)

    def close(self, reason: str, abort: bool = False) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.close_reason = reason
        if self.conn is not None:
            self.conn.flush()
            self.conn.close(reason, abort=abort)
        else:
            # Still in its TLS handshake (the transport owns the socket): a shutdown ends
            # the handshake at once, and the transport then closes the socket itself.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def abort(self) -> None:
        if self.conn is not None:
            self.conn.writer.transport.abort()
        else:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


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
    if settings.http is not None:
        from tcpsched.runtime.http.app import check_http_bind

        check_http_bind(settings.http[0], settings.token, settings.tls.authenticates_dialers)


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
