"""Feeds a core object its events and the clock, and carries out the effects it returns.

Theory of operation (aioquic's shape): `feed(event)` calls `core.step(event, now)`; journal
records go to the journal's buffer at once, sends and closes wait in `_held` until the end of
the event-loop turn, when one `journal.flush()` makes every record of the turn durable (group
commit) and only then are the held effects carried out. One timer is armed at the core's
`next_deadline()` and re-armed whenever that comes earlier; a deadline that moves later (a
follower's election timeout, pushed back by every Append) is armed when the timer fires.

A node core (core/node.py) gates its own sends: what it emits depends only on committed
records. So at the end of a turn its held sends, and the turn's Append to each follower, are
written before the fsync, not after: the followers journal the turn while we do, so a commit
costs the longer of the two fsyncs rather than their sum, and an Assign released by a
follower's acknowledgement does not also wait for the fsync of the turn that released it.
What the flush itself releases (`Flushed`) goes after it, as before.

A node's fsync ("always") runs beside the loop, not in it (`Storage.flush_background`,
runtime/syncer.py): the turn's records are written at once and the loop goes on taking in
messages while the disk syncs; when the sync ends, `Synced(seq)` moves the node's durable seq
(and the commit), and what that releases is sent. Everything written while one sync runs goes
into the next, so a commit still waits for exactly one fsync that began after its record was
written. Only while the node `wants_flush` (a promise, or a follower's ack, waits on the
flush) is the flush synchronous, followed by `Flushed`, as before: those must not be released
by a sync that began before they were written.

A failed flush (a full disk, an I/O error) is final: the turn's records, and every later
one, are not durable, so from then on no held reply is sent. Each is answered instead with an
`unavailable` error saying the request was not acknowledged, other messages (orders to
workers) are dropped, and `on_journal_failure` is told once, so the process can stop. This
holds on every path, the shutdown's `flush_now` included: a reply never leaves before its
record is durable.

Clocks: `clock` (monotonic) is the core's `now`, what every timer and duration is measured on;
`wall_clock` (Unix time) goes along only for the times the core stamps on records. A step of
the wall clock therefore moves no deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tcpsched.core.events import Close, Effect, Journal, Send, Tick
from tcpsched.core.messages import ErrorReply, Reply
from tcpsched.core.node import (
    EndOfTurn,
    Flushed,
    JournalFailed,
    ReceiveSnapshot,
    Reload,
    Reloaded,
    SendSnapshot,
    Synced,
    ToPeer,
    Truncate,
    WriteCommit,
    WriteEntries,
    WritePromise,
)
from tcpsched.errors import JournalError, LocalProtocolError
from tcpsched.runtime.transport import Connection

log = logging.getLogger(__name__)


class Core(Protocol):
    def step(self, event: Any, now: float, wall: float | None = None) -> list[Effect]: ...
    def next_deadline(self) -> float | None: ...


class JournalSink(Protocol):
    """Where records go: `append` buffers, `flush` makes the buffered records durable."""

    def append(self, record: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...


class NodeStorage(JournalSink, Protocol):
    """What a node core's effects need of storage (runtime/storage.py)."""

    seq: int

    def append_entry(self, seq: int, epoch: int, line: bytes) -> None: ...
    def write_promise(self, epoch: int, leader: int) -> None: ...
    def write_commit(self, seq: int) -> None: ...
    def truncate_after(self, seq: int) -> None: ...
    def reload(self, upto: int) -> Any: ...


class MemoryJournal:
    """No journal: state lives in memory only. Counts what it would have written."""

    def __init__(self) -> None:
        self.records = 0

    def append(self, record: dict[str, Any]) -> None:
        self.records += 1

    def flush(self) -> None:
        pass


class Runner:
    def __init__(
        self,
        core: Core,
        journal: JournalSink,
        connections: dict[int, Connection],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        peer_send: Callable[[int, Any], None] | None = None,
        peer_flush: Callable[[], None] | None = None,
    ) -> None:
        """`peer_send`: given for a node core (core/node.py), whose effects include peer
        messages (sent at once: heartbeats and replication never wait for our fsync) and
        numbered entries; the runner then tells it `EndOfTurn` and `Flushed`."""
        self.core = core
        self.journal = journal
        self.peer_send = peer_send
        self.peer_flush = peer_flush
        # Snapshots to or from peers are files and tasks: the entry point carries them out.
        self.on_snapshot: Callable[[Any], None] | None = None
        self._reloads: list[int] = []
        self.connections = connections
        self.clock = clock
        self.wall_clock = wall_clock
        self._held: list[Effect] = []
        self._dirty = False
        self._end_of_turn_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        # Why the journal failed, once it has: from then on nothing held is acknowledged.
        self.journal_failure: str | None = None
        self.on_journal_failure: Callable[[str], None] | None = None
        # Told every numbered entry as it is journaled (runtime/http/metrics.py counts them).
        self.on_entries: Callable[[tuple[Any, ...]], None] | None = None

    def feed(self, event: Any) -> None:
        effects = self.core.step(event, self.clock(), self.wall_clock())
        if effects:  # most heartbeats have none
            self._carry(effects)
        self._schedule_end_of_turn()
        if not self._end_of_turn_scheduled:
            # Otherwise the turn's end re-arms, once for all the turn's events: asking the
            # core for its deadline walks every timer it keeps (the leader's scheduler has a
            # dozen), and a busy turn feeds hundreds of messages.
            self._rearm()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once (each lookup is a getpid system call)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _schedule_end_of_turn(self) -> None:
        wants = self._held or self._dirty or self._reloads or (
            self.peer_send is not None and (getattr(self.core, "wants_flush", False)
                                            or getattr(self.core, "wants_turn", False)))
        if wants and not self._end_of_turn_scheduled:
            self._end_of_turn_scheduled = True
            self._get_loop().call_soon(self._end_of_turn)

    def _carry(self, effects: list[Any]) -> None:
        journal: Any = self.journal
        for effect in effects:
            kind = type(effect)
            if kind is Send or kind is Close:
                self._held.append(effect)
            elif kind is ToPeer:
                assert self.peer_send is not None
                self.peer_send(effect.peer, effect.msg)
            elif kind is WriteEntries:
                for entry in effect.entries:
                    journal.append_entry(entry.seq, entry.epoch, entry.data)
                self._dirty = True
                if self.on_entries is not None:
                    self.on_entries(effect.entries)
            elif kind is Journal:
                journal.append(effect.record)
                self._dirty = True
            elif kind is WritePromise:
                journal.write_promise(effect.epoch, effect.leader)
                self._dirty = True
            elif kind is WriteCommit:
                # Rides with the next write: losing one only makes a restart apply less.
                journal.write_commit(effect.seq)
            elif kind is Truncate:
                journal.truncate_after(effect.seq)
            elif kind is Reload:
                self._reloads.append(effect.seq)
            elif kind is SendSnapshot or kind is ReceiveSnapshot:
                assert self.on_snapshot is not None
                self.on_snapshot(effect)
            else:
                raise TypeError(f"unknown effect {effect!r}")

    def _step_now(self, event: Any) -> None:
        self._carry(self.core.step(event, self.clock(), self.wall_clock()))

    def _end_of_turn(self, *, sync: bool = False) -> None:
        """`sync`: flush synchronously even where the fsync could run beside the loop."""
        self._end_of_turn_scheduled = False
        node = self.peer_send is not None
        if node and self.journal_failure is None:
            self._step_now(EndOfTurn())  # one Append per follower for the whole turn
            # Out before our fsync, not after it: the followers' fsyncs run beside ours, and
            # what the node released (committed on a majority) needs nothing of this flush.
            if self.peer_flush is not None:
                self.peer_flush()
            self._carry_held(write_now=True)
        flush = self._dirty or (node and getattr(self.core, "wants_flush", False))
        if flush and self.journal_failure is None:
            background = (node and not sync and not getattr(self.core, "wants_flush", False)
                          and hasattr(self.journal, "flush_background"))
            try:
                if background:
                    pending = self.journal.flush_background(  # type: ignore[attr-defined]
                        self._get_loop().call_soon_threadsafe, self._on_synced)
                else:
                    self.journal.flush()
                    pending = False
            except (JournalError, OSError) as exc:
                self._journal_failed(exc)
                if node:
                    self._step_now(JournalFailed(self.journal_failure or str(exc)))
            else:
                # Cleared only once the flush succeeded: a turn whose flush failed stays
                # unacknowledged on every later path (the shutdown's flush_now too).
                self._dirty = False
                if node and not pending:
                    self._step_now(Flushed(self.journal.seq))  # type: ignore[attr-defined]
        while self._reloads and self.journal_failure is None:
            seq = self._reloads.pop(0)
            table = self.journal.reload(seq)  # type: ignore[attr-defined]
            self._step_now(Reloaded(table, seq))
        self._carry_held()
        if node and self.journal_failure is None:
            # A node's table may be snapshotted only where it is committed, which a turn
            # without a write can reach too (a follower's acknowledgement).
            self.journal.maybe_compact()  # type: ignore[attr-defined]
        if self._dirty or self._held:
            self._schedule_end_of_turn()
        self._rearm()

    def _on_synced(self, seq: int | None) -> None:
        """A background fsync ended (on the loop thread): entries up to `seq` are durable, or
        (None) it failed and the journal with it."""
        if self.journal_failure is not None:
            return
        if seq is None:
            reason = getattr(self.journal, "failure", None) or "the journal's fsync failed"
            self._journal_failed(JournalError(reason))
            self._step_now(JournalFailed(self.journal_failure or reason))
        else:
            self._step_now(Synced(seq))
        self._carry_held(write_now=True)
        if self.journal_failure is None:
            self.journal.maybe_compact()  # type: ignore[attr-defined]
        self._schedule_end_of_turn()
        self._rearm()

    def _carry_held(self, *, write_now: bool = False) -> None:
        """Carry out the held sends and closes; `write_now`: write each connection's frames
        at once rather than at the end of the loop turn (which comes after the fsync)."""
        held, self._held = self._held, []
        if not held:
            return
        if self.journal_failure is not None:
            held = [refusal for effect in held
                    if (refusal := self._refusal(effect)) is not None]
        written: dict[int, Connection] = {}
        for effect in held:
            if isinstance(effect, Send):
                conn = self.connections.get(effect.conn)
                if conn is not None:
                    self._send(conn, effect.msg)
                    written[effect.conn] = conn
            elif isinstance(effect, Close):
                conn = self.connections.get(effect.conn)
                if conn is not None:
                    log.info("closing %s: %s", conn.peer, effect.reason)
                    conn.flush()
                    conn.close(effect.reason)
        if write_now:
            for conn in written.values():
                conn.flush()

    def _journal_failed(self, exc: Exception) -> None:
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        self.journal_failure = reason
        if self.on_journal_failure is not None:
            self.on_journal_failure(reason)
        else:
            log.critical("journal failed: %s; acknowledging nothing more", reason)

    def _refusal(self, effect: Effect) -> Effect | None:
        """What to carry out, once the journal has failed, instead of a held effect: a reply
        becomes an error saying the request was not acknowledged; an error reply and a close
        stay (they acknowledge nothing); anything else (an order to a worker) is dropped."""
        if isinstance(effect, Close):
            return effect
        if not isinstance(effect, Send):
            return None
        if isinstance(effect.msg, ErrorReply):
            return effect
        if isinstance(effect.msg, Reply):
            return Send(effect.conn, ErrorReply(
                req_id=effect.msg.req_id, kind="unavailable",
                message=f"not acknowledged: the coordinator's journal failed "
                        f"({self.journal_failure}) and it is stopping; retry once it is back"))
        return None  # a worker's order or ack: the worker hears again after a restart

    def _send(self, conn: Connection, msg: Any) -> None:
        try:
            conn.send(msg)
        except LocalProtocolError as exc:
            # Too big, or a value msgpack cannot carry: answer the request with an error
            # rather than sending a frame the peer must refuse (and then retry forever).
            log.error("cannot send %s to %s: %s", type(msg).__name__, conn.peer, exc)
            req_id = getattr(msg, "req_id", None)
            if req_id is None:
                conn.close(f"cannot send {type(msg).__name__}")
                return
            conn.send(ErrorReply(req_id=req_id, kind="bad_request",
                                 message=f"the reply cannot be sent: {exc}"))

    def flush_now(self) -> None:
        """Flush and carry out everything held (used at shutdown); after a journal failure,
        held replies are refused, never sent."""
        self._end_of_turn(sync=True)

    def _rearm(self) -> None:
        deadline = self.core.next_deadline()
        armed = self._timer_deadline
        if deadline == armed:
            return
        if deadline is not None and armed is not None and deadline > armed \
                and self._timer is not None:
            # Later than the armed timer: keep that one, which arms the later deadline when it
            # fires (`_on_timer`). A follower's election deadline moves with every Append it
            # gets; cancelling and making a timer each time cost more than one early wake-up
            # per election timeout.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            loop = self._get_loop()
            delay = max(0.0, deadline - self.clock())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        armed = self._timer_deadline
        self._timer = None
        self._timer_deadline = None
        deadline = self.core.next_deadline()
        if deadline is not None and armed is not None and deadline > armed:
            self._rearm()  # the deadline moved later since this timer was armed: not due yet
            return
        self.feed(Tick())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
