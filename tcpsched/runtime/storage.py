"""The data directory: the journal writer with its fsync policy, compaction, and the lock.

Theory of operation (Redis AOF + RDB, etcd WAL + snapshot):

* Writing. `append` only encodes a record into a buffer (the line format is in
  runtime/journal.py); `flush`, called once at the end of an event-loop turn before any reply
  leaves (runtime/runner.py), writes the whole buffer with one `write` and, under
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
  where recovery ended. The directory also holds `epoch.json`, the last epoch a coordinator
  started with there. `check` runs recovery read-only, for `--check`.
"""

from __future__ import annotations

import contextlib
import fcntl
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
    write_durably,
)
from tcpsched.runtime.journal import Recovery, encode_line, list_segments, recover, segment_name
from tcpsched.runtime.snapshot import (
    SNAPSHOT_TMP_NAME,
    CompactionHook,
    compaction_step,
    write_snapshot,
)

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
COMPACT_BYTES = 64 * 1024 * 1024
COMPACT_RECORDS = 500_000
EPOCH_NAME = "epoch.json"
LOCK_NAME = "lock"

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def read_epoch(data_dir: Path) -> int:
    path = data_dir / EPOCH_NAME
    try:
        data = json.loads(path.read_bytes())
        epoch = data["epoch"]
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise JournalError(f"{path}: unreadable epoch file ({exc})") from None
    if type(epoch) is not int or epoch < 0:
        raise JournalError(f"{path}: epoch must be a non-negative integer")
    return epoch


# -- the writer -------------------------------------------------------------------------------


@attrs.frozen
class StorageConfig:
    fsync: str = "always"
    compact_bytes: int = COMPACT_BYTES
    compact_records: int = COMPACT_RECORDS
    batch_interval_s: float = BATCH_FSYNC_INTERVAL_S
    background_compaction: bool = True


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
        self.table = recovery.table
        self.config = config
        self.seq = recovery.last_seq
        self.snapshot_seq = recovery.snapshot_seq
        self.snapshot_bytes = recovery.snapshot_bytes
        self._lock_fd = lock_fd
        self._call_later = call_later
        self._hook = hook
        self._buffer: list[bytes] = []
        self._failed: str | None = None
        self._closing = False
        self._unsynced = False
        self._sync_timer: Any = None
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
             hook: CompactionHook | None = None) -> tuple[Storage, Recovery]:
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
            recovery = recover(data_dir, repair=repair)
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

    # -- epoch ----------------------------------------------------------------------------------

    def next_epoch(self, at_least: int = 0) -> int:
        """The last epoch this directory saw plus one (or `at_least`, if higher), stored
        durably before it is returned."""
        path = self.data_dir / EPOCH_NAME
        epoch = max(read_epoch(self.data_dir) + 1, at_least)
        try:
            write_durably(path, _dumps({"epoch": epoch}).encode() + b"\n")
        except OSError as exc:
            raise JournalError(f"cannot store the new epoch in {path}: "
                               f"{exc.strerror or exc}") from None
        return epoch

    @property
    def failure(self) -> str | None:
        """Why the journal stopped taking records, or None while it works."""
        return self._failed

    # -- the JournalSink interface ---------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        self.seq += 1
        if self._failed is None:  # after a failure nothing is written: keep nothing
            self._buffer.append(encode_line(self.seq, record))

    def flush(self) -> None:
        """Write the buffered records with one write (and fsync, by policy); maybe compact."""
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
            self.segment_records += records
            self._unsynced = True
            policy = self.config.fsync
            if policy == "always":
                self._sync()
            elif policy == "batch":
                self._sync_soon()
            self._maybe_compact()
        self._publish()

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
        if not self._unsynced:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: the only safe
            # answer is to stop (PostgreSQL learned this the hard way).
            self._fail(f"cannot fsync the journal {self.segment_path}: {exc.strerror or exc}")
        self.fsyncs += 1
        self._unsynced = False
        self._last_sync = time.monotonic()

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
        """Start a new segment and write a snapshot of the table as of the last record.

        The part that must see a consistent table (fsync, new segment, image) runs now; the
        snapshot is written in a thread when `background_compaction` is set.
        """
        self._sync()  # the journal's own fsync: failing, it is fatal like any journal fsync
        compaction_step(self._hook, "fsync-segment")
        seq = self.seq
        new_path = self.data_dir / segment_name(seq + 1)
        try:
            old = [path for first, path in list_segments(self.data_dir) if first <= seq]
            if new_path != self.segment_path:
                self._start_segment(new_path)
                old = [path for path in old if path != new_path]
        except OSError as exc:
            self._compaction_failed(f"cannot start the next journal segment {new_path.name}",
                                    exc)
            return
        self.segment_bytes = 0
        self.segment_records = 0
        self._compact_retry_at = (0, 0)
        image = self.table.image()
        if self.config.background_compaction:
            self._compaction = threading.Thread(target=self._compact_in_thread,
                                                args=(seq, image, old),
                                                name="tcpsched-compaction", daemon=True)
            self._compaction.start()
        else:
            try:
                self._finish_compaction(seq, image, old)
            except OSError as exc:
                self._compaction_failed("cannot write the snapshot", exc)

    def _start_segment(self, path: Path) -> None:
        """Create the next segment, durably named, and append to it from now on. On an
        error the current segment stays the one appended to, and the new file is removed
        (an empty segment is harmless to recovery, but it is clutter)."""
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

    def _compact_in_thread(self, seq: int, image: TableImage, old: list[Path]) -> None:
        try:
            self._finish_compaction(seq, image, old)
        except OSError as exc:
            # The journal still holds everything; the next threshold tries again.
            self._compaction_error = (f"compaction failed: cannot write the snapshot at seq={seq}: "
                                      f"{describe_os_error(exc)}")
            self.compaction_failures += 1
            log.error("%s (the journal still holds every record)", self._compaction_error)

    def _finish_compaction(self, seq: int, image: TableImage, old: list[Path]) -> None:
        started = time.perf_counter()
        size = write_snapshot(self.data_dir, seq, image, self._hook)
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            compaction_step(self._hook, "delete-segment")
        fsync_dir(self.data_dir)
        self.snapshot_seq = seq
        self.snapshot_bytes = size
        self.compactions += 1
        self._compaction_error = None
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
        epoch = read_epoch(data_dir)
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
        f"last sequence number: {result.last_seq}",
        f"epoch: {epoch}",
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
