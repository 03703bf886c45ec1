"""The data directory: the journal writer with its fsync policy, compaction, and the lock.

Theory of operation (Redis AOF + RDB, etcd WAL + snapshot):

* Writing. `append` only encodes a record into a buffer (the line format is in
  runtime/journal_lines.py); `flush`, called once at the end of an event-loop turn before any
  reply leaves (runtime/runner.py), writes the whole buffer with one `write` and, under
  `--fsync always`, one `fdatasync` (group commit). `batch` fsyncs at most every
  `BATCH_FSYNC_INTERVAL_S` (a timer catches the tail); `never` leaves it to the kernel. In every
  policy the write happens before the reply, so killing the process loses nothing; the policy
  only decides what a power cut or kernel crash may take (see `FSYNC_LOSS`).
* Compaction. When the active segment passes a size or record threshold: fsync it, open the
  next segment (named by the next sequence number) and fsync the directory; take an immutable
  image of the table (a list copy, since jobs are frozen values); then, in a thread, write the
  snapshot (runtime/snapshot.py: temp file, fsync, rename, fsync the directory), and only then
  delete the segments the snapshot covers. A crash between any two of those steps leaves either
  the old snapshot with every segment after it, or the new snapshot with segments that may
  still hold records it covers (skipped by sequence number): nothing is lost.
* Errors. Two kinds, each with one path. The journal's own write or fsync failing (a full disk,
  an I/O error) is fatal: a failed write is cut back off the segment, and from then on nothing
  is written and every `flush` raises `JournalError`, so no reply that depends on it can leave;
  `on_failure` is told once, and the coordinator stops. Compaction failing (no inode for the
  next segment, no room for the snapshot) is not: compaction only saves space, the journal
  still holds every record, so it is logged and tried again once the segment has grown by
  another threshold, when space may have come back.
* Opening. `Storage.open` locks the directory (flock: one coordinator per data directory),
  recovers the table (runtime/journal.py) and appends to the last segment when its records end
  where recovery ended. The election promise (the epoch) is a line of the journal too, and the
  snapshot keeps the last one. `check` runs recovery read-only, for `--check`.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import attrs

from tcpsched.core.state import TableImage
from tcpsched.errors import JournalError
from tcpsched.runtime.files import (
    describe_os_error,
    fsync_dir,
    remove_quietly,
    write_all,
)
from tcpsched.runtime.journal import Recovery, recover
from tcpsched.runtime.journal_lines import (
    encode_commit,
    encode_line,
    encode_promise,
    line_epoch,
    list_segments,
    segment_name,
)
from tcpsched.runtime.snapshot import (
    SNAPSHOT_NAME,
    SNAPSHOT_TMP_NAME,
    CompactionHook,
    compaction_step,
    read_snapshot,
    write_snapshot,
)
from tcpsched.runtime.syncer import BackgroundSync, SyncResult

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "batch", "never")
BATCH_FSYNC_INTERVAL_S = 0.005
FSYNC_LOSS = {
    "always": "nothing: a reply is sent only after its record is fsynced",
    "batch": "on a power cut or kernel crash, the records acknowledged in the last "
             f"{BATCH_FSYNC_INTERVAL_S * 1000:g} ms; a killed process loses nothing",
    "never": "on a power cut or kernel crash, whatever the kernel had not yet written back "
             "(up to ~30 s on Linux defaults); a killed process loses nothing",
}  # fmt: skip
SNAPSHOT_INSTALL_NAME = "snapshot.json.install"  # a leader's snapshot, while it arrives
COMPACT_BYTES = 64 * 1024 * 1024
COMPACT_RECORDS = 500_000
LOCK_NAME = "lock"

_dumps = json.JSONEncoder(separators=(",", ":")).encode


# -- the writer -------------------------------------------------------------------------------


BACKGROUND_FSYNC_S = 0.0005


@attrs.frozen
class StorageConfig:
    fsync: str = "always"
    compact_bytes: int = COMPACT_BYTES
    compact_records: int = COMPACT_RECORDS
    batch_interval_s: float = BATCH_FSYNC_INTERVAL_S
    background_compaction: bool = True
    # `flush_background` syncs beside the loop once fsyncs take this long on average, and in
    # the loop again below half of it: a sync on the thread costs about 0.2 ms of CPU in
    # handoffs, which a fast disk's fsync does not repay (0 always goes beside the loop).
    background_fsync_s: float = BACKGROUND_FSYNC_S


class Storage:
    """The open data directory: appends records, makes them durable, compacts.

    Made by `Storage.open`, which recovers first. `append` and `flush` are the runner's
    `JournalSink`. After a failed write or fsync nothing more is written and every `flush`
    raises `JournalError`: acknowledging after an unknown write would break the promise.
    """

    def __init__(self, data_dir: Path, recovery: Recovery, config: StorageConfig, *,
                 lock_fd: int,
                 call_later: Callable[[float, Callable[[], None]], Any] | None = None,
                 hook: CompactionHook | None = None) -> None:
        self.data_dir = data_dir
        # Told once, with the reason, when the journal fails (also from the batch fsync timer,
        # when no flush is under way to raise).
        self.on_failure: Callable[[str], None] | None = None
        self.on_fsync: Callable[[float], None] | None = None  # told each fsync's seconds
        self.table = recovery.table
        self.config = config
        self.seq = recovery.last_seq
        self.epoch = recovery.last_epoch  # of the last entry written
        self.promise = recovery.promise
        self.commit_seq = recovery.commit_seq
        # Where a snapshot may stand now: (seq, epoch of that entry, image), or None when the
        # table holds entries that are not committed yet. Alone, the table is always the
        # state after the last entry; in a group the node core says (coordinator.py).
        self.snapshot_source: Callable[[], tuple[int, int, TableImage] | None] = (
            lambda: (self.seq, self.epoch, self.table.image()))
        self.on_compacted: Callable[[int], None] | None = None
        self.snapshot_seq = recovery.snapshot_seq
        self.snapshot_epoch = recovery.snapshot_epoch
        self.snapshot_bytes = recovery.snapshot_bytes
        self._lock_fd = lock_fd
        self._call_later = call_later
        self._hook = hook
        self._buffer: list[bytes] = []
        self._failed: str | None = None
        self._closing = False
        self._unsynced = False
        self._sync_timer: Any = None
        # fsync "always" beside the loop (runtime/syncer.py, `flush_background`): entries up to
        # `durable_seq` are fsynced; `_synced` is told each time a background sync ends.
        self._background = BackgroundSync()
        self._post: Callable[[Callable[[], None]], object] | None = None
        self._synced: Callable[[int | None], None] | None = None
        self.durable_seq = self.seq
        self._fsync_avg_s = 0.0  # moving average of fsync times: chooses where the next runs
        self._beside = config.background_fsync_s <= 0.0
        self._last_sync = time.monotonic()
        self._compaction: threading.Thread | None = None
        self._compaction_error: str | None = None
        # After a failed compaction: wait until the segment holds this many records or bytes.
        self._compact_retry_at = (0, 0)
        self.compactions = 0
        self.compaction_failures = 0
        self.fsyncs = 0
        self.writes = 0
        self.records_written = 0
        self.figures: dict[str, Any] = {}
        last = recovery.last_segment
        if last is not None and recovery.last_segment_first + recovery.last_segment_records \
                == self.seq + 1:
            self.segment_path = last
            self.segment_records = recovery.last_segment_records
            self.segment_bytes = recovery.last_segment_bytes
        else:
            self.segment_path = data_dir / segment_name(self.seq + 1)
            self.segment_records = 0
            self.segment_bytes = 0
        self._fd = os.open(self.segment_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(data_dir)
        self._publish()

    @classmethod
    def open(cls, data_dir: Path, config: StorageConfig = StorageConfig(), *,
             repair: bool = False,
             call_later: Callable[[float, Callable[[], None]], Any] | None = None,
             hook: CompactionHook | None = None, group: bool = False
             ) -> tuple[Storage, Recovery]:
        """Lock the directory (creating it), recover, and open the journal for appending."""
        if config.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}")
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot use data directory {data_dir}: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise JournalError(f"data directory {data_dir} is in use by another "
                               "coordinator") from None
        try:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / SNAPSHOT_TMP_NAME).unlink()  # an interrupted compaction's leftover
            with contextlib.suppress(FileNotFoundError):
                (data_dir / SNAPSHOT_INSTALL_NAME).unlink()  # a snapshot cut off mid-transfer
            recovery = recover(data_dir, repair=repair, group=group)
            storage = cls(data_dir, recovery, config, lock_fd=lock_fd, call_later=call_later,
                          hook=hook)
            return storage, recovery
        except OSError as exc:
            os.close(lock_fd)
            raise JournalError(f"cannot open the data directory {data_dir}: "
                               f"{describe_os_error(exc)}") from None
        except BaseException:
            os.close(lock_fd)
            raise

    @property
    def failure(self) -> str | None:
        """Why the journal stopped taking records, or None while it works."""
        return self._failed

    # -- the JournalSink interface ---------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        self.seq += 1
        if self._failed is None:  # after a failure nothing is written: keep nothing
            self._buffer.append(encode_line(self.seq, record, self.epoch))

    def append_entry(self, seq: int, epoch: int, line: bytes) -> None:
        """Buffer one entry numbered and encoded by the node core (the bytes a leader also
        ships to its followers)."""
        if seq != self.seq + 1:
            raise JournalError(f"entry {seq} appended after {self.seq}: the log has a gap")
        self.seq = seq
        self.epoch = epoch
        if self._failed is None:
            self._buffer.append(line)

    def write_promise(self, epoch: int, leader: int) -> None:
        """Buffer the election promise; it is durable at the next flush, before any
        acknowledgement that depends on it leaves."""
        self.promise = (epoch, leader)
        if self._failed is None:
            self._buffer.append(encode_promise(epoch, leader))

    def write_commit(self, seq: int) -> None:
        """Buffer a commit mark: a restart applies entries up to the last one it finds."""
        self.commit_seq = max(self.commit_seq, seq)
        if self._failed is None:
            self._buffer.append(encode_commit(seq))

    def truncate_after(self, seq: int) -> None:
        """Cut every entry after `seq` off the journal (a stale tail that the leader's log
        contradicts), durably, and journal the promise again (it may have been in the cut)."""
        if self._failed is not None:
            raise JournalError(self._failed)
        if seq >= self.seq:
            return
        if seq < self.snapshot_seq:
            raise JournalError(f"cannot cut the journal after {seq}: the snapshot covers "
                               f"{self.snapshot_seq}")
        self._write_buffer()
        try:
            self._cut_after(seq)
        except OSError as exc:
            self._fail(f"cannot cut the journal after seq={seq}: {describe_os_error(exc)}")
        self.write_promise(*self.promise)
        self.write_commit(min(self.commit_seq, seq))
        self.flush()

    def _cut_after(self, seq: int) -> None:
        segments = [(first, path) for first, path in list_segments(self.data_dir)]
        keep: tuple[int, Any] | None = None
        for first, path in segments:
            if first <= seq + 1:
                keep = (first, path)
        if keep is None:
            raise FileNotFoundError(f"no journal segment holds entry {seq + 1}")
        first, path = keep
        data = path.read_bytes()
        # The entry after `seq` starts the cut; local lines before it stay.
        cut_at = len(data)
        position = 0
        entry_seq = first
        epoch = self.snapshot_epoch
        for line in data.split(b"\n")[:-1]:
            if line.startswith(b'{"seq":'):
                if entry_seq == seq + 1:
                    cut_at = position
                    break
                epoch = line_epoch(line)
                entry_seq += 1
            position += len(line) + 1
        self._wait_background()  # it may be syncing the fd closed here
        os.close(self._fd)
        with open(path, "r+b") as f:
            f.truncate(cut_at)
            f.flush()
            os.fsync(f.fileno())
        for later_first, later in segments:
            if later_first > first:
                later.unlink()
        fsync_dir(self.data_dir)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND, 0o644)
        self.segment_path = path
        self.segment_bytes = cut_at
        self.segment_records = seq + 1 - first
        self.seq = seq
        self.durable_seq = min(self.durable_seq, seq)
        self.epoch = epoch
        log.warning("journal cut after seq=%d (a stale tail the leader's log contradicts)", seq)

    # -- snapshots from and for peers ---------------------------------------------------------

    def snapshot_for_peer(self) -> tuple[int, int, Path] | None:
        """(seq, epoch, path) of the snapshot a follower behind our log window is sent."""
        path = self.data_dir / SNAPSHOT_NAME
        if self.snapshot_seq == 0 or not path.exists():
            return None
        return self.snapshot_seq, self.snapshot_epoch, path

    def receive_snapshot_chunk(self, offset: int, data: bytes) -> None:
        """Write one chunk of a leader's snapshot beside ours (installed by the last one)."""
        path = self.data_dir / SNAPSHOT_INSTALL_NAME
        try:
            with open(path, "r+b" if offset else "wb") as f:
                f.seek(offset)
                f.write(data)
        except OSError as exc:
            remove_quietly(path)
            self._fail(f"cannot store the leader's snapshot in {path}: {describe_os_error(exc)}")

    def install_snapshot(self, snap_seq: int, snap_epoch: int) -> Any:
        """Make the received snapshot ours: checked, fsynced, renamed over `snapshot.json`;
        every journal segment goes and a new one starts after it, with our promise. Returns
        its table. A crash in between leaves either the old state or the new snapshot with
        no segment older than it, both of which recovery reads."""
        path = self.data_dir / SNAPSHOT_INSTALL_NAME
        self.wait_compaction()  # ours must not replace it, or delete segments, meanwhile
        seq, table, size = read_snapshot(path)
        if seq != snap_seq:
            remove_quietly(path)
            raise JournalError(f"the leader's snapshot stands at seq={seq}, not {snap_seq}")
        self._write_buffer()
        try:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(path, self.data_dir / SNAPSHOT_NAME)
            fsync_dir(self.data_dir)
            old = [p for _, p in list_segments(self.data_dir)]
            new_path = self.data_dir / segment_name(snap_seq + 1)
            if new_path in old:
                old.remove(new_path)
                new_path.unlink()
            self._start_segment(new_path)
            for segment in old:
                segment.unlink()
            fsync_dir(self.data_dir)
        except OSError as exc:
            self._fail(f"cannot install the leader's snapshot: {describe_os_error(exc)}")
        self.seq = snap_seq
        self.epoch = self.snapshot_epoch = snap_epoch
        self.snapshot_seq = snap_seq
        self.snapshot_bytes = size
        self.segment_bytes = self.segment_records = 0
        self.commit_seq = snap_seq
        self.table = table
        self.write_promise(*self.promise)
        self.write_commit(snap_seq)
        self.flush()
        log.info("installed the leader's snapshot at seq=%d (%d jobs, %d bytes)", snap_seq,
                 len(table), size)
        return table

    def reload(self, upto: int) -> Any:
        """The table rebuilt from disk with entries up to `upto` applied (a deposed leader's
        table may hold entries that were never committed)."""
        self._write_buffer()
        result = recover(self.data_dir, read_only=True, group=True, upto=upto)
        self.table = result.table
        return result.table

    def flush(self) -> None:
        """Write the buffered records with one write (and fsync, by policy); maybe compact."""
        if self._write_buffer():
            policy = self.config.fsync
            if policy == "always":
                self._sync()
            elif policy == "batch":
                self._sync_soon()
            self._maybe_compact()
        self._publish()

    def flush_background(self, post: Callable[[Callable[[], None]], object],
                         synced: Callable[[int | None], None]) -> bool:
        """Write the buffered records now and, with fsync "always", fsync them on the sync
        thread (runtime/syncer.py) rather than here. True when `synced(seq)` will be called on
        the loop thread (through `post`, its call_soon_threadsafe) once they are durable, with
        `durable_seq` then (None if the fsync failed: `failure` says why); False when nothing
        is to be waited for (another policy, or all that was written is durable already)."""
        if self.config.fsync != "always" or not (self._beside or self._background.busy):
            self.flush()  # a fast disk's fsync costs less here than its handoffs would
            return False
        self._post, self._synced = post, synced
        if self._write_buffer():
            self._maybe_compact()  # compaction syncs here first when it runs (rarely)
        self._publish()
        if self._background.busy:
            return True  # its end starts the next one for what was written meanwhile
        if not self._unsynced:
            return False
        self._start_background()
        return True

    def _start_background(self) -> None:
        assert self._post is not None
        self._unsynced = False
        self._background.start(self._fd, self.seq, self._post, self._on_background_done)

    def _on_background_done(self, token: object) -> None:
        """On the loop thread: take the sync's result (unless a wait took it), start the next
        one for what was written meanwhile, and tell the runner what is durable now."""
        result = self._background.take(token)
        try:
            if result is not None:
                self._absorb(result)
        except JournalError:
            pass  # `_fail` recorded it (and told `on_failure`)
        synced = self._synced
        if self._failed is not None:
            if synced is not None:
                synced(None)
            return
        if self._unsynced and not self._background.busy:
            if self._beside:
                self._start_background()
            else:  # the disk got fast again: this one here, and the next ones in the loop
                try:
                    self._sync()
                except JournalError:
                    if synced is not None:
                        synced(None)
                    return
        self._publish()
        if synced is not None:
            synced(self.durable_seq)

    def _absorb(self, result: SyncResult) -> None:
        if result.error is not None:
            exc = result.error
            self._fail(f"cannot fsync the journal {self.segment_path}: {exc.strerror or exc}")
        self.fsyncs += 1
        self._last_sync = time.monotonic()
        self.durable_seq = max(self.durable_seq, result.seq)
        self._timed(result.seconds)
        if self.on_fsync is not None:
            self.on_fsync(result.seconds)

    def _timed(self, seconds: float) -> None:
        """One more fsync's time: past the threshold on average the next ones run beside the
        loop, below half of it in the loop again (hysteresis: no flapping at the edge)."""
        self._fsync_avg_s += 0.2 * (seconds - self._fsync_avg_s)
        threshold = self.config.background_fsync_s
        if threshold > 0.0:
            if self._fsync_avg_s >= threshold:
                self._beside = True
            elif self._fsync_avg_s < threshold / 2:
                self._beside = False

    def _wait_background(self) -> None:
        """Let the background sync in flight end (before its fd is closed, or when durability
        is wanted now); raises JournalError if it failed."""
        result = self._background.wait()
        if result is not None:
            self._absorb(result)

    def _write_buffer(self) -> bool:
        """Write what is buffered, with one write; True if anything was written."""
        if self._failed is not None:
            raise JournalError(self._failed)
        if self._buffer:
            data = b"".join(self._buffer)
            records = len(self._buffer)
            self._buffer.clear()
            try:
                write_all(self._fd, data)
            except OSError as exc:
                self._cut_failed_write()
                self._fail(f"cannot write the journal {self.segment_path}: {exc.strerror or exc}")
            self.writes += 1
            self.records_written += records
            self.segment_bytes += len(data)
            self.segment_records = self.seq + 1 - self._segment_first()
            self._unsynced = True
            return True
        return False

    def _segment_first(self) -> int:
        name = self.segment_path.name
        return int(name[len("journal-"):-len(".jsonl")])

    # -- durability -------------------------------------------------------------------------

    def _fail(self, message: str) -> NoReturn:
        self._failed = message
        self._buffer.clear()
        if self.on_failure is not None:
            self.on_failure(message)
        raise JournalError(message)

    def _cut_failed_write(self) -> None:
        """Cut a failed write's partial bytes off the segment, so that the journal holds
        exactly the records written before it (no torn line, nothing refused that would come
        back at the restart). If even that fails, recovery cuts the torn line."""
        try:
            os.ftruncate(self._fd, self.segment_bytes)
        except OSError as exc:
            log.warning("cannot cut the failed write off %s: %s (the restart will cut its torn "
                        "line)", self.segment_path, exc.strerror or exc)

    def _sync(self) -> None:
        self._wait_background()
        if not self._unsynced:
            return
        began = time.monotonic()
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: the only safe
            # answer is to stop (PostgreSQL learned this the hard way).
            self._fail(f"cannot fsync the journal {self.segment_path}: {exc.strerror or exc}")
        self.fsyncs += 1
        self._unsynced = False
        self.durable_seq = self.seq
        self._last_sync = time.monotonic()
        self._timed(self._last_sync - began)
        if self.on_fsync is not None:
            self.on_fsync(self._last_sync - began)

    def _sync_soon(self) -> None:
        wait = self._last_sync + self.config.batch_interval_s - time.monotonic()
        if wait <= 0:
            self._sync()
        elif self._sync_timer is None and self._call_later is not None:
            self._sync_timer = self._call_later(wait, self._on_sync_timer)

    def _on_sync_timer(self) -> None:
        self._sync_timer = None
        if self._failed is None:
            try:
                self._sync()
            except JournalError:
                if self.on_failure is None:  # otherwise `_fail` told it, and it reports
                    log.critical("%s", self._failed)

    # -- compaction -------------------------------------------------------------------------

    def maybe_compact(self) -> None:
        """Compact if a threshold is passed and the table may be snapshotted now (the runner
        asks again once a node core has taken in the flush: its commit may have moved)."""
        if self._failed is None:
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        cfg = self.config
        if self._closing:
            return  # shutting down: the journal is enough, and exiting promptly matters more
        if self._compaction is not None:
            if self._compaction.is_alive():
                return
            self._compaction = None
        if self.segment_records == 0:
            return
        retry_records, retry_bytes = self._compact_retry_at
        if self.segment_records < retry_records and self.segment_bytes < retry_bytes:
            return  # the last attempt failed: wait for another threshold's worth of journal
        # Like Redis's auto-aof-rewrite-percentage: never compact more often than the journal
        # grows by the snapshot's own size, or a big table would be rewritten over and over.
        if self.segment_bytes >= max(cfg.compact_bytes, self.snapshot_bytes) \
                or self.segment_records >= cfg.compact_records:
            self.compact()

    def _compaction_failed(self, what: str, exc: OSError) -> None:
        """Compaction could not go on: the journal still holds every record, so go on without
        it and try again once the segment has grown by another threshold."""
        cfg = self.config
        self._compaction_error = f"compaction failed: {what}: {exc.strerror or exc}"
        self.compaction_failures += 1
        self._compact_retry_at = (self.segment_records + cfg.compact_records,
                                  self.segment_bytes + max(cfg.compact_bytes, self.snapshot_bytes))
        log.error("%s (the journal still holds every record, in %s; trying again after "
                  "another %d records)", self._compaction_error, self.segment_path.name,
                  cfg.compact_records)

    def compact(self) -> None:
        """Start a new segment and write a snapshot of the table where it stands.

        The part that must see a consistent table (fsync, new segment, image) runs now; the
        snapshot is written in a thread when `background_compaction` is set. The snapshot
        stands at `snapshot_source()` (alone: the last entry; in a group: the last applied
        entry, and only while the table holds nothing uncommitted): segments are deleted only
        when every entry in them is at or below it.
        """
        point = self.snapshot_source()
        if point is None:
            return  # the table holds uncommitted entries: try again at the next flush
        seq, epoch, image = point
        # Records appended since the last flush belong to the segment the snapshot point is
        # in: written after the new segment starts, they would sit in a segment named after a
        # later seq, which recovery refuses.
        self._write_buffer()
        self._sync()  # the journal's own fsync: failing, it is fatal like any journal fsync
        compaction_step(self._hook, "fsync-segment")
        new_path = self.data_dir / segment_name(self.seq + 1)
        try:
            segments = list_segments(self.data_dir)
            # A segment can go once the next one starts at or below seq + 1.
            old = [path for (_first, path), (nxt, _) in itertools.pairwise(segments)
                   if nxt <= seq + 1]
            if new_path != self.segment_path:
                if self.seq <= seq:
                    old.append(self.segment_path)
                self._start_segment(new_path)
                old = [path for path in old if path != new_path]
        except OSError as exc:
            self._compaction_failed(f"cannot start the next journal segment {new_path.name}",
                                    exc)
            return
        self.segment_bytes = 0
        self.segment_records = 0
        self._compact_retry_at = (0, 0)
        promise = self.promise
        if self.config.background_compaction:
            self._compaction = threading.Thread(target=self._compact_in_thread,
                                                args=(seq, epoch, promise, image, old),
                                                name="tcpsched-compaction", daemon=True)
            self._compaction.start()
        else:
            try:
                self._finish_compaction(seq, epoch, promise, image, old)
            except OSError as exc:
                self._compaction_failed("cannot write the snapshot", exc)

    def _start_segment(self, path: Path) -> None:
        """Create the next segment, durably named, and append to it from now on. On an
        error the current segment stays the one appended to, and the new file is removed
        (an empty segment is harmless to recovery, but it is clutter)."""
        self._wait_background()  # it may be syncing the fd closed here
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            compaction_step(self._hook, "create-segment")
            fsync_dir(self.data_dir)
        except OSError:
            os.close(fd)
            remove_quietly(path)
            raise
        compaction_step(self._hook, "fsync-dir")
        os.close(self._fd)
        self._fd = fd
        self.segment_path = path

    def _compact_in_thread(self, seq: int, epoch: int, promise: tuple[int, int],
                           image: TableImage, old: list[Path]) -> None:
        try:
            self._finish_compaction(seq, epoch, promise, image, old)
        except OSError as exc:
            # The journal still holds everything; the next threshold tries again.
            self._compaction_error = (f"compaction failed: cannot write the snapshot at seq={seq}: "
                                      f"{describe_os_error(exc)}")
            self.compaction_failures += 1
            log.error("%s (the journal still holds every record)", self._compaction_error)

    def _finish_compaction(self, seq: int, epoch: int, promise: tuple[int, int],
                           image: TableImage, old: list[Path]) -> None:
        started = time.perf_counter()
        size = write_snapshot(self.data_dir, seq, image, self._hook, epoch=epoch,
                              promise=promise)
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            compaction_step(self._hook, "delete-segment")
        fsync_dir(self.data_dir)
        self.snapshot_seq = seq
        self.snapshot_epoch = epoch
        self.snapshot_bytes = size
        self.compactions += 1
        self._compaction_error = None
        if self.on_compacted is not None:
            self.on_compacted(seq)
        log.info("compacted: snapshot at seq=%d jobs=%d bytes=%d in %.2fs; %d old segment(s) "
                 "deleted", seq, len(image.jobs), size, time.perf_counter() - started, len(old))

    def wait_compaction(self, timeout: float | None = None) -> None:
        thread = self._compaction
        if thread is not None:
            thread.join(timeout)

    # -- figures and shutdown ---------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {
            "journal_seq": self.seq,
            "journal_fsync": self.config.fsync,
            "journal_segment_bytes": self.segment_bytes,
            "journal_segment_records": self.segment_records,
            "journal_writes": self.writes,
            "journal_fsyncs": self.fsyncs,
            "snapshot_seq": self.snapshot_seq,
            "snapshot_bytes": self.snapshot_bytes,
            "compactions": self.compactions,
            "compaction_failures": self.compaction_failures,
            "compaction_error": self._compaction_error,  # the last one, until one succeeds
        }

    def publish(self, target: dict[str, Any]) -> None:
        """Keep `target` (the scheduler's `extra_stats`) up to date after every flush."""
        self.figures = target
        self._publish()

    def _publish(self) -> None:
        self.figures.update(self.statistics())

    def close(self) -> None:
        """Flush, fsync whatever the policy, wait for a running compaction, unlock."""
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        self._closing = True
        try:
            if self._failed is None:
                self.flush()
                self._sync()
            # The lock is held until a running compaction ends: a successor must never
            # recover while this process still replaces the snapshot or deletes segments.
            self.wait_compaction()
        finally:
            self._background.close()  # after a failure one may still run on the fd
            with contextlib.suppress(OSError):
                os.close(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)


# -- offline check ------------------------------------------------------------------------------


def check(data_dir: Path) -> tuple[int, list[str]]:
    """Verify a data directory without changing it: (exit code, lines to print)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return 1, [f"error: {data_dir}: no such data directory"]
    try:
        result = recover(data_dir, read_only=True)
    except JournalError as exc:
        return 1, [f"error: {exc}"]
    except OSError as exc:
        return 1, [f"error: {data_dir}: {exc.strerror or exc}"]
    states = " ".join(f"{state}={n}" for state, n in result.jobs_by_state().items())
    snapshot = (f"seq={result.snapshot_seq} ({result.snapshot_bytes} bytes)"
                if result.snapshot_bytes else "none")
    lines = [
        f"data directory: {data_dir}",
        f"snapshot: {snapshot}",
        f"journal: {len(result.segments)} segment(s), {result.replayed} record(s) after the "
        f"snapshot, {result.skipped} already in it",
        f"last sequence number: {result.last_seq} (epoch {result.last_epoch}), commit mark: "
        f"{result.commit_seq}",
        f"epoch: {result.promise[0]} (promised to coordinator {result.promise[1]})",
        f"jobs: {len(result.table)} ({states})",
    ]
    lines.extend(f"warning: {w}" for w in result.warnings)
    if result.problem is not None:
        lines.append(f"error: {result.problem}; the coordinator would refuse to start "
                     "(--repair keeps the records before it)")
        return 1, lines
    lines.append("ok: sound" + (" (a torn last line would be cut at start)"
                                if result.warnings else ""))
    return 0, lines
