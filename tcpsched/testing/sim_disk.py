"""A coordinator's simulated disk: what it wrote, what of that is durable, what a crash keeps.

Theory of operation. The node's journal effects (`WriteEntries`, `WritePromise`,
`WriteCommit`) are appended, in order, to a buffer of pending writes; `flush` makes every
pending write durable (the runner's one write + fsync at the end of a turn). A crash keeps the
durable part and a random prefix of the pending writes (the journal is one append-only file, so
whatever reached the platter is a prefix of what was written), never anything out of order.
`Truncate` is what `runtime/storage.py` does: it writes the buffer, cuts the file after the
seq durably, and journals the promise and a commit mark again, so after it everything is
durable. A background fsync (runtime/syncer.py) makes durable what was written before it
began: `sync_target()` when it begins, `sync_done(target)` when it ends (writes are counted,
so a flush or a cut in between only leaves it less to do).

`recovered()` builds the `Recovered` a restarted coordinator gets, exactly as the real
recovery does: in a group the table is the replay of the entries up to the last commit mark
(bounded by the last entry); alone, of every entry (alone, all that is journaled is committed:
no commit marks are written); the window is every entry (no snapshots here: nothing is
compacted), the promise is the last one journaled. `table_upto(seq)` is what the shell's
`reload` returns: the replay of every entry written (durable or not: the file holds them) up
to `seq`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpsched.core.node import Recovered
from tcpsched.core.replication import Entry
from tcpsched.core.state import JobTable
from tcpsched.runtime.journal_lines import decode_entry

if TYPE_CHECKING:
    import random

Write = Entry | tuple[str, int, int]  # an entry, ("promise", epoch, leader), ("commit", seq, 0)


class SimDisk:
    def __init__(self, *, group: bool = True) -> None:
        self.group = group
        self.entries: list[Entry] = []  # durable
        self.promise = (0, 0)
        self.commit_seq = 0
        self.pending: list[Write] = []
        self.writes = 0  # every write ever buffered; the first `applied` of them are durable
        self.applied = 0
        self.truncations = 0  # bumped at each cut: cached replays of this disk go stale

    # -- what the node's effects do ---------------------------------------------------------

    def write_entries(self, entries: tuple[Entry, ...]) -> None:
        last = self.last_seq
        for entry in entries:
            assert entry.seq == last + 1, f"entry {entry.seq} written after {last}"
            last = entry.seq
        self.pending.extend(entries)
        self.writes += len(entries)

    def write_promise(self, epoch: int, leader: int) -> None:
        self.pending.append(("promise", epoch, leader))
        self.writes += 1

    def write_commit(self, seq: int) -> None:
        self.pending.append(("commit", seq, 0))
        self.writes += 1

    def truncate_after(self, seq: int) -> None:
        self.flush()
        if seq >= self.last_seq:
            return
        self.entries = [e for e in self.entries if e.seq <= seq]
        self.commit_seq = min(self.commit_seq, seq)
        self.truncations += 1

    def flush(self) -> None:
        self._apply(self.pending)
        self.pending = []

    def sync_target(self) -> int:
        """What a background sync beginning now will make durable: every write so far."""
        return self.writes

    def sync_done(self, target: int) -> None:
        """The background sync that began at `target` ended: those writes are durable."""
        count = target - self.applied
        if count > 0:
            self._apply(self.pending[:count])
            del self.pending[:count]

    @property
    def durable_seq(self) -> int:
        """The last durable entry."""
        return self.entries[-1].seq if self.entries else 0

    def crash(self, rng: random.Random) -> int:
        """The process died: keep the durable part and a prefix of what was pending. Returns
        how many pending writes were lost."""
        kept = rng.randint(0, len(self.pending))
        lost = len(self.pending) - kept
        self._apply(self.pending[:kept])
        self.pending = []
        self.applied = self.writes  # what was lost is gone: no sync will ever apply it
        return lost

    def _apply(self, writes: list[Write]) -> None:
        self.applied += len(writes)
        for w in writes:
            if isinstance(w, Entry):
                self.entries.append(w)
            elif w[0] == "promise":
                self.promise = (w[1], w[2])
            else:
                self.commit_seq = max(self.commit_seq, w[1])

    # -- what is on it ------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last entry written (durable or pending): what the shell reports as flushed."""
        for w in reversed(self.pending):
            if isinstance(w, Entry):
                return w.seq
        return self.entries[-1].seq if self.entries else 0

    def commit_mark(self) -> int:
        """The highest commit mark written, durable or not."""
        pending = [w[1] for w in self.pending if not isinstance(w, Entry) and w[0] == "commit"]
        return max([self.commit_seq, *pending])

    def written(self) -> list[Entry]:
        """Every entry written, durable or not (what the journal file holds)."""
        return [*self.entries, *(w for w in self.pending if isinstance(w, Entry))]

    def durable_promise_epoch(self) -> int:
        return self.promise[0]

    def table_upto(self, seq: int) -> JobTable:
        return replay(self.written(), seq)

    def recovered(self) -> Recovered:
        assert not self.pending, "recovery reads a disk whose process is gone"
        last = self.entries[-1].seq if self.entries else 0
        upto = min(self.commit_seq, last) if self.group else last
        return Recovered(table=replay(self.entries, upto), entries=tuple(self.entries),
                         base=(0, 0), commit_seq=self.commit_seq,
                         promised_epoch=self.promise[0], promised_leader=self.promise[1])


def replay(entries: list[Entry], upto: int, table: JobTable | None = None,
           start: int = 0) -> JobTable:
    """Apply the records of `entries` with start < seq <= upto to `table` (a new one by
    default), decoding and validating each line as recovery does."""
    table = JobTable() if table is None else table
    for entry in entries:
        if entry.seq <= start:
            continue
        if entry.seq > upto:
            break
        table.apply(decode_entry(entry.data))
    return table
