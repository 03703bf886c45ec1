"""What a node core and its shell say to each other, beside the scheduler's own events.

Theory of operation: the shell (runtime/runner.py and coordinator.py, or the simulation) feeds
a `core/node.py` Node these events and carries out these effects in order, except that sends to
clients and workers wait for the end of the event-loop turn. Peer messages go at once;
journal effects buffer until the turn's one flush, after which the shell reports `Flushed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import peer_messages as pm
from tcpsched.core.events import Close, Send
from tcpsched.core.replication import Entry

if TYPE_CHECKING:
    from tcpsched.core.state import JobTable

# -- events the shell feeds (beside Connected, Received, Closed and Tick) ------------------------


@attrs.frozen
class PeerReceived:
    """A message from coordinator `peer` (on the connection it dialled to us)."""

    peer: int
    msg: Any


@attrs.frozen
class PeerClosed:
    """The connection we hear `peer` on closed."""

    peer: int


@attrs.frozen
class Flushed:
    """Everything written so far is durable; `seq` is the last entry written."""

    seq: int


@attrs.frozen
class Synced:
    """Entries up to `seq` are durable, by an fsync that ran beside the event loop
    (runtime/syncer.py). Unlike `Flushed` it says nothing of what was written after that fsync
    began (a promise, what a follower owes an ack for), so it moves only our own durable seq,
    and with it the commit: the shell sends `Flushed` after a synchronous flush whenever
    `wants_flush` says something waits for one."""

    seq: int


@attrs.frozen
class EndOfTurn:
    """The event loop's turn is over: replicate what it logged, in one Append per follower."""


@attrs.frozen
class Compacted:
    """A snapshot now covers the entries up to `seq`: the log window may let them go."""

    seq: int


@attrs.frozen
class SnapshotInstalled:
    """The shell installed the snapshot the leader sent (the answer to ReceiveSnapshot's last
    chunk): the journal holds nothing but it, and `table` is its table."""

    leader: int
    epoch: int
    snap_epoch: int
    snap_seq: int
    table: JobTable


@attrs.frozen
class JournalFailed:
    """The local journal failed a write or an fsync: nothing more will be durable here."""

    reason: str


@attrs.frozen
class Reloaded:
    """The table rebuilt from disk up to `seq` (the answer to `Reload`)."""

    table: JobTable
    seq: int


# -- effects (beside Send and Close) ------------------------------------------------------------


@attrs.frozen
class ToPeer:
    peer: int
    msg: Any


@attrs.frozen
class WriteEntries:
    """Append these journal lines (already numbered and encoded) to the local journal."""

    entries: tuple[Entry, ...]


@attrs.frozen
class WritePromise:
    """Journal the election promise (a local line, not a numbered entry)."""

    epoch: int
    leader: int


@attrs.frozen
class WriteCommit:
    """Journal a commit mark: recovery applies entries up to it."""

    seq: int


@attrs.frozen
class Truncate:
    """Cut the local journal after `seq`."""

    seq: int


@attrs.frozen
class Reload:
    """Rebuild the table from disk, applying entries up to `seq`, and feed back `Reloaded`."""

    seq: int


@attrs.frozen
class SendSnapshot:
    """Send our latest snapshot file to `peer`, in chunks (it is behind our log window)."""

    peer: int


@attrs.frozen
class ReceiveSnapshot:
    """Store this chunk of the leader's snapshot; on the last one, install it and feed back
    `SnapshotInstalled`."""

    leader: int
    chunk: pm.InstallSnapshot


NodeEffect = (Send | Close | ToPeer | WriteEntries | WritePromise | WriteCommit | Truncate
              | Reload | SendSnapshot | ReceiveSnapshot)
