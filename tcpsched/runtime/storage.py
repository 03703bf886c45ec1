"""The data directory: an append-only JSON journal, snapshots, compaction and recovery.

Theory of operation (Redis AOF + RDB, etcd WAL + snapshot):

* Journal. Every record the scheduler emits is one line of `journal-<first seq>.jsonl`:
  `{"seq":N,"crc":C,"rec":{...}}` where C is the CRC32 of the exact bytes of the record's JSON.
  `append` only encodes into a buffer; `flush`, called once at the end of an event-loop turn
  before any reply leaves (runtime/runner.py), writes the whole buffer with one `write` and,
  under `--fsync always`, one `fdatasync` (group commit). `batch` fsyncs at most every
  `BATCH_FSYNC_INTERVAL_S` (a timer catches the tail); `never` leaves it to the kernel. In every
  policy the write happens before the reply, so killing the process loses nothing; the policy
  only decides what a power cut or kernel crash may take (see `FSYNC_LOSS`).
* Compaction. When the active segment passes a size or record threshold: fsync it, open the
  next segment (named by the next sequence number) and fsync the directory; take an immutable
  image of the table (a list copy, since jobs are frozen values); then, in a thread, write
  `snapshot.json.tmp`, fsync it, `os.replace` it over `snapshot.json`, fsync the directory, and
  only then delete the segments the snapshot covers. A crash between any two of those steps
  leaves either the old snapshot with every segment after it, or the new snapshot with segments
  that may still hold records it covers (skipped by sequence number): nothing is lost.
* Recovery. Load the snapshot (its CRC checked), replay every newer record through the same
  `JobTable.apply` the leader uses. A torn or bad-CRC last line of the newest segment is what a
  crash in mid-write leaves: it is cut off, the cut bytes kept beside the segment, with a
  warning. A bad line anywhere else is corruption: refuse to start, naming file and line, unless
  `repair` asks to keep the good prefix (everything after it is moved aside, not deleted).

The snapshot is one JSON document shaped like a journal line, `{"seq":S,"table":{...},
"crc":C}`, with the CRC last so that it can be written in pieces; its jobs array holds one
chunk of rows per line, so it is also read a chunk at a time (see `read_snapshot`). Every data
directory is locked (flock) by the coordinator using it, and holds `epoch.json`, the last epoch
a coordinator started with there.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import itertools
import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from tcpsched.core.jobs import JobState
from tcpsched.core.state import JobTable, TableImage, decode_record, encode_record
from tcpsched.errors import JournalError

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
SNAPSHOT_NAME = "snapshot.json"
SNAPSHOT_TMP_NAME = "snapshot.json.tmp"
EPOCH_NAME = "epoch.json"
LOCK_NAME = "lock"
SNAPSHOT_ROWS_PER_WRITE = 10_000

_SEGMENT_RE = re.compile(r"^journal-(\d{20})\.jsonl$")
_SEQ_HEAD = b'{"seq":'
_CRC_MARK = b',"crc":'
_REC_MARK = b',"rec":'
_TABLE_MARK = b',"table":'
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode  # json.loads minus its per-call encoding sniffing

CompactionHook = Callable[[str], None]


def segment_name(first_seq: int) -> str:
    return f"journal-{first_seq:020d}.jsonl"


def encode_line(seq: int, record: dict[str, Any]) -> bytes:
    payload = _dumps(encode_record(record)).encode()
    return b'{"seq":%d,"crc":%d,"rec":%b}\n' % (seq, zlib.crc32(payload), payload)


class _BadLine(Exception):
    """One journal line cannot be trusted; the message says why."""


def _line_payload(line: bytes, expected_seq: int) -> bytes:
    """The verified record bytes of one line (without its newline), or _BadLine."""
    if not line.startswith(_SEQ_HEAD) or not line.endswith(b"}"):
        raise _BadLine("not a journal line")
    crc_at = line.find(_CRC_MARK)
    rec_at = line.find(_REC_MARK, crc_at + 1)
    if crc_at < 0 or rec_at < 0:
        raise _BadLine("not a journal line")
    seq_text, crc_text = line[7:crc_at], line[crc_at + 7 : rec_at]
    if not (seq_text.isdigit() and crc_text.isdigit()):
        raise _BadLine("not a journal line")
    payload = line[rec_at + 7 : -1]
    if zlib.crc32(payload) != int(crc_text):
        raise _BadLine("checksum mismatch")
    if int(seq_text) != expected_seq:
        raise _BadLine(f"sequence number {int(seq_text)} where {expected_seq} was expected")
    return payload


def decode_line(line: bytes, expected_seq: int) -> dict[str, Any]:
    """The record of one journal line (without its newline), checked; `_BadLine` otherwise."""
    payload = _line_payload(line, expected_seq)
    try:
        record = _decode(payload.decode())
    except ValueError as exc:
        raise _BadLine(f"bad JSON ({exc})") from None
    if type(record) is not dict or "op" not in record:
        raise _BadLine("record is not a map with an op")
    try:
        return decode_record(record)
    except (ValueError, TypeError, KeyError) as exc:
        raise _BadLine(f"bad record ({exc})") from None


# -- small durable-file helpers -------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def list_segments(data_dir: Path) -> list[tuple[int, Path]]:
    """The journal segments, oldest first, as (first sequence number, path)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(data_dir):
            match = _SEGMENT_RE.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


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


# -- snapshots --------------------------------------------------------------------------------


def _snapshot_pieces(seq: int, image: TableImage) -> Iterator[bytes]:
    """The snapshot file in pieces: a prefix, the table body, and the CRC of the body last.

    The jobs array holds one chunk of rows per line (JSON allows the newlines), so a reader
    can parse and convert one chunk at a time instead of holding every parsed row at once.
    """
    yield b'{"seq":%d,"table":' % seq
    head = _dumps({**image.header(), "finished": image.finished})
    piece = (head[:-1] + ',"jobs":[\n').encode()
    crc = zlib.crc32(piece)
    yield piece
    rows = image.rows()
    separator = ""
    while chunk := list(itertools.islice(rows, SNAPSHOT_ROWS_PER_WRITE)):
        piece = (separator + _dumps(chunk)[1:-1] + "\n").encode()
        separator = ","
        crc = zlib.crc32(piece, crc)
        yield piece
    piece = b"]}"
    crc = zlib.crc32(piece, crc)
    yield piece
    yield b',"crc":%d}\n' % crc


def write_snapshot(data_dir: Path, seq: int, image: TableImage,
                   hook: CompactionHook | None = None) -> int:
    """Write `snapshot.json` for the state at `seq`, atomically and durably; returns its size."""
    tmp = data_dir / SNAPSHOT_TMP_NAME
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for piece in _snapshot_pieces(seq, image):
            _write_all(fd, piece)
            size += len(piece)
        _step(hook, "write-snapshot-tmp")
        os.fsync(fd)
        _step(hook, "fsync-snapshot-tmp")
    finally:
        os.close(fd)
    os.replace(tmp, data_dir / SNAPSHOT_NAME)
    _step(hook, "replace-snapshot")
    _fsync_dir(data_dir)
    _step(hook, "fsync-dir")
    return size


def read_snapshot(path: Path) -> tuple[int, JobTable, int]:
    """(sequence number, table, size in bytes) of a snapshot file, or JournalError."""
    data = path.read_bytes()
    table_at = data.find(_TABLE_MARK)
    crc_at = data.rfind(b',"crc":')
    if not data.startswith(_SEQ_HEAD) or table_at < 0 or crc_at < table_at \
            or not data.endswith(b"}\n"):
        raise JournalError(f"{path}: not a tcpsched snapshot (torn or truncated)")
    seq_text, crc_text = data[7:table_at], data[crc_at + 7 : -2]
    if not (seq_text.isdigit() and crc_text.isdigit()):
        raise JournalError(f"{path}: not a tcpsched snapshot")
    body_at = table_at + len(_TABLE_MARK)
    with memoryview(data) as view:
        if zlib.crc32(view[body_at:crc_at]) != int(crc_text):
            raise JournalError(f"{path}: checksum mismatch; the snapshot is corrupt")
    rows_at = data.find(b"\n", body_at, crc_at)
    if rows_at < 0 or data[rows_at - 8 : rows_at] != b'"jobs":[' \
            or data[crc_at - 2 : crc_at] != b"]}":
        raise JournalError(f"{path}: not a tcpsched snapshot")

    def chunks() -> Iterator[list[list[Any]]]:
        start = rows_at + 1
        while start < crc_at - 2:
            end = data.index(b"\n", start, crc_at)
            first = start + 1 if data[start : start + 1] == b"," else start
            yield _decode("[" + data[first:end].decode() + "]")
            start = end + 1

    try:
        header = _decode(data[body_at : rows_at + 1].decode() + "]}")
        table = JobTable.from_parts(header, chunks())
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise JournalError(f"{path}: cannot rebuild the job table ({exc})") from None
    return int(seq_text), table, crc_at - body_at


def _step(hook: CompactionHook | None, name: str) -> None:
    if hook is not None:
        hook(name)


# -- recovery ---------------------------------------------------------------------------------


@attrs.define
class Recovery:
    """What recovery found; `problem` is set only for a read-only check that found one."""

    table: JobTable
    snapshot_seq: int = 0
    snapshot_bytes: int = 0
    last_seq: int = 0
    replayed: int = 0
    skipped: int = 0
    segments: list[Path] = attrs.field(factory=list)
    last_segment: Path | None = None  # the segment to append to, if its records end at last_seq
    last_segment_first: int = 0
    last_segment_records: int = 0
    last_segment_bytes: int = 0
    warnings: list[str] = attrs.field(factory=list)
    problem: str | None = None
    seconds: float = 0.0

    def jobs_by_state(self) -> dict[str, int]:
        counts = self.table.counts
        return {state.value: counts[state] for state in JobState}


def _cut(path: Path, offset: int, data: bytes, read_only: bool) -> Path:
    """Truncate `path` at `offset`, first keeping the cut bytes in a file beside it."""
    kept = path.with_name(f"{path.name}.cut-at-{offset}")
    if not read_only:
        _write_durably(kept, data[offset:])
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(path.parent)
    return kept


@attrs.frozen
class SegmentScan:
    """What one segment held: good lines up to `good_bytes`, then `bad` (line, offset, why)."""

    next_seq: int
    good_bytes: int
    skipped: int
    replayed: int
    bad: tuple[int, int, str] | None
    bad_is_last_line: bool


def scan_segment(data: bytes, first: int, expected: int,
                 apply: Callable[[dict[str, Any]], Any], *, start: int = 0,
                 start_lineno: int = 1) -> SegmentScan:
    """Check the lines of one segment (from byte `start`, holding sequence `first`) and apply
    every record from `expected` on; lines before `expected` are only checked.

    A line without a newline at the end of the data is torn. `bad_is_last_line` says whether
    the bad line is the segment's last one, the only place a crash in mid-write can leave it.
    """
    lines = data[start:].split(b"\n")
    tail = lines.pop()  # b"" when the data ends with a newline, as it should
    offset = start
    bad: tuple[int, int, str] | None = None
    seq = first
    skipped = replayed = 0
    for lineno, line in enumerate(lines, start_lineno):
        try:
            if seq < expected:
                _line_payload(line, seq)
                skipped += 1
            else:
                record = decode_line(line, seq)
                try:
                    apply(record)
                except (ValueError, KeyError, TypeError) as exc:
                    raise _BadLine(f"record cannot be applied ({exc})") from None
                replayed += 1
        except _BadLine as exc:
            bad = (lineno, offset, str(exc))
            break
        seq += 1
        offset += len(line) + 1
    else:
        if tail:
            bad = (len(lines) + start_lineno, offset, "torn line (no newline at its end)")
    last_lineno = len(lines) + start_lineno - (0 if tail else 1)
    return SegmentScan(next_seq=seq, good_bytes=offset, skipped=skipped, replayed=replayed,
                       bad=bad, bad_is_last_line=bad is not None and bad[0] == last_lineno)


def recover(data_dir: Path, *, repair: bool = False, read_only: bool = False) -> Recovery:
    """Rebuild the job table from `data_dir`; see the module comment for the rules.

    The cycle collector is paused meanwhile: recovery only creates objects (millions of them
    at a million jobs), and every collection it triggered would walk all of them again for
    nothing, which more than doubles the restart time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _recover(data_dir, repair=repair, read_only=read_only)
    finally:
        if was_enabled:
            gc.enable()


def _recover(data_dir: Path, *, repair: bool, read_only: bool) -> Recovery:
    started = time.perf_counter()
    snapshot_path = data_dir / SNAPSHOT_NAME
    if snapshot_path.exists():
        snapshot_seq, table, snapshot_bytes = read_snapshot(snapshot_path)
    else:
        snapshot_seq, table, snapshot_bytes = 0, JobTable(), 0
    result = Recovery(table=table, snapshot_seq=snapshot_seq, snapshot_bytes=snapshot_bytes)
    segments = list_segments(data_dir)
    expected = snapshot_seq + 1  # the next record to apply
    apply = table.apply
    for index, (first, path) in enumerate(segments):
        is_last = index == len(segments) - 1
        if not is_last and segments[index + 1][0] <= expected:
            continue  # every record in it is already in the snapshot
        result.segments.append(path)
        if first > expected:
            reason = f"starts at sequence number {first}, but {expected} comes next"
            _refuse_or_repair(result, path, 1, reason + " (a segment is missing)",
                              later=segments[index + 1 :], repair=repair, read_only=read_only,
                              whole=True)
            break
        data = path.read_bytes()
        scan = scan_segment(data, first, expected, apply)
        result.skipped += scan.skipped
        result.replayed += scan.replayed
        expected += scan.replayed
        seq, offset, bad = scan.next_seq, scan.good_bytes, scan.bad
        result.last_segment, result.last_segment_first = path, first
        result.last_segment_records, result.last_segment_bytes = seq - first, offset
        if bad is None:
            continue
        lineno, offset, reason = bad
        if is_last and scan.bad_is_last_line:
            kept = _cut(path, offset, data, read_only)
            result.warnings.append(
                f"{path}:{lineno}: {reason}; {'would cut' if read_only else 'cut'} this last "
                f"line off (its record was never acknowledged), bytes kept in {kept.name}")
            break
        _refuse_or_repair(result, path, lineno, reason, later=segments[index + 1 :],
                          repair=repair, read_only=read_only, offset=offset, data=data)
        break
    result.last_seq = max(expected - 1, snapshot_seq)
    result.seconds = time.perf_counter() - started
    return result


def _refuse_or_repair(result: Recovery, path: Path, lineno: int, reason: str, *,
                      later: list[tuple[int, Path]], repair: bool, read_only: bool,
                      whole: bool = False, offset: int = 0, data: bytes = b"") -> None:
    where = f"{path}:{lineno}: {reason}"
    if not repair:
        message = (f"{where}; refusing to start (the journal is corrupt before its last line; "
                   "--repair keeps the records before it and moves the rest aside)")
        if read_only:
            result.problem = where
            return
        raise JournalError(message)
    moved = []
    if whole:
        later = [(0, path), *later]
    elif not read_only:
        _cut(path, offset, data, read_only)
    for _, other in later:
        if not read_only:
            other.rename(other.with_name(other.name + ".cut"))
        moved.append(other.name)
    result.warnings.append(
        f"{where}; repaired: kept the records before it"
        + (f", moved aside {', '.join(moved)}" if moved else "")
        + (f", cut bytes kept in {path.name}.cut-at-{offset}" if not whole else ""))
    if read_only:
        result.problem = where


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
    `JournalSink`. After a failed write nothing more is written and every `flush` raises
    `JournalError`: acknowledging after an unknown write would break the promise.
    """

    def __init__(self, data_dir: Path, recovery: Recovery, config: StorageConfig, *,
                 lock_fd: int,
                 call_later: Callable[[float, Callable[[], None]], Any] | None = None,
                 hook: CompactionHook | None = None) -> None:
        self.data_dir = data_dir
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
        self.compactions = 0
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
        _fsync_dir(data_dir)
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
            raise JournalError(f"cannot recover from {data_dir}: "
                               f"{exc.filename or ''} {exc.strerror or exc}") from None
        except BaseException:
            os.close(lock_fd)
            raise

    # -- epoch ----------------------------------------------------------------------------------

    def next_epoch(self) -> int:
        """The last epoch this directory saw plus one, stored durably before it is returned."""
        epoch = read_epoch(self.data_dir) + 1
        _write_durably(self.data_dir / EPOCH_NAME, _dumps({"epoch": epoch}).encode() + b"\n")
        return epoch

    # -- the JournalSink interface ---------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        self.seq += 1
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
                _write_all(self._fd, data)
            except OSError as exc:
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

    def _fail(self, message: str) -> None:
        self._failed = message + "; stopping so that nothing unrecorded is acknowledged"
        raise JournalError(self._failed)

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
        # Like Redis's auto-aof-rewrite-percentage: never compact more often than the journal
        # grows by the snapshot's own size, or a big table would be rewritten over and over.
        if self.segment_bytes >= max(cfg.compact_bytes, self.snapshot_bytes) \
                or self.segment_records >= cfg.compact_records:
            self.compact()

    def compact(self) -> None:
        """Start a new segment and write a snapshot of the table as of the last record.

        The part that must see a consistent table (fsync, new segment, image) runs now; the
        snapshot is written in a thread when `background_compaction` is set.
        """
        self._sync()
        _step(self._hook, "fsync-segment")
        seq = self.seq
        old = [path for first, path in list_segments(self.data_dir) if first <= seq]
        new_path = self.data_dir / segment_name(seq + 1)
        if new_path != self.segment_path:
            fd = os.open(new_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _step(self._hook, "create-segment")
            _fsync_dir(self.data_dir)
            _step(self._hook, "fsync-dir")
            os.close(self._fd)
            self._fd = fd
            self.segment_path = new_path
            old = [path for path in old if path != new_path]
        self.segment_bytes = 0
        self.segment_records = 0
        image = self.table.image()
        if self.config.background_compaction:
            self._compaction = threading.Thread(target=self._compact_in_thread,
                                                args=(seq, image, old),
                                                name="tcpsched-compaction", daemon=True)
            self._compaction.start()
        else:
            self._finish_compaction(seq, image, old)

    def _compact_in_thread(self, seq: int, image: TableImage, old: list[Path]) -> None:
        try:
            self._finish_compaction(seq, image, old)
        except OSError as exc:
            # The journal still holds everything; the next threshold tries again.
            self._compaction_error = f"compaction failed: {exc.strerror or exc}"
            log.error("%s (the journal still holds every record)", self._compaction_error)

    def _finish_compaction(self, seq: int, image: TableImage, old: list[Path]) -> None:
        started = time.perf_counter()
        size = write_snapshot(self.data_dir, seq, image, self._hook)
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _step(self._hook, "delete-segment")
        _fsync_dir(self.data_dir)
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
