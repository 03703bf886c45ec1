"""The journal: its line format, its segments, and recovery from a data directory.

Theory of operation (Redis AOF, etcd WAL):

* Lines. Every record the scheduler emits is one line of a segment:
  `{"seq":N,"crc":C,"rec":{...}}` where C is the CRC32 of the exact bytes of the record's JSON.
  A reader checks the frame, the CRC and that sequence numbers follow one another before it
  parses the record, so a torn or altered line is always caught.
* Segments. The journal is a series of files `journal-<first seq>.jsonl`, named by the sequence
  number of their first record; the writer (runtime/storage.py) starts a new one at each
  compaction and deletes the ones a snapshot covers.
* Recovery. Load the snapshot (its CRC checked), replay every newer record through the same
  `JobTable.apply` the leader uses. A torn or bad-CRC last line of the newest segment is what a
  crash in mid-write leaves: it is cut off, the cut bytes kept beside the segment, with a
  warning. A last line whose frame and CRC hold was written whole, and its record may have been
  acknowledged: if it does not check or apply, that is corruption too, never a torn tail. A bad
  line anywhere else is corruption: refuse to start, naming file and line, unless
  `repair` asks to keep the good prefix (everything after it is moved aside, not deleted).
  Segments may still hold records the snapshot covers (a crash during compaction leaves them):
  those are checked but not applied, skipped by sequence number.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import time
import zlib
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any

import attrs

from tcpsched.core.jobs import JobRecord, JobState
from tcpsched.core.plainsubmit import plain_submit
from tcpsched.core.record_types import EPOCH_MAX, typed_record, typed_submit
from tcpsched.core.records import decode_record, encode_record
from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime import fastjson
from tcpsched.runtime.fastjson import loads as fast_loads
from tcpsched.runtime.files import fsync_dir, write_durably
from tcpsched.runtime.journalruns import PlainRun, plain_submit_run
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, read_snapshot, read_snapshot_log

_SEGMENT_RE = re.compile(r"^journal-(\d{20})\.jsonl$")
_SEQ_HEAD = b'{"seq":'
_CRC_MARK = b',"crc":'
_REC_MARK = b',"rec":'


def segment_name(first_seq: int) -> str:
    return f"journal-{first_seq:020d}.jsonl"


def encode_line(seq: int, record: dict[str, Any], epoch: int = 0) -> bytes:
    """One numbered entry. The CRC starts from the epoch, so it covers the epoch too."""
    payload = fastjson.dumps(encode_record(record))
    if epoch:
        return b'{"seq":%d,"epoch":%d,"crc":%d,"rec":%b}\n' % (
            seq, epoch, zlib.crc32(payload, epoch), payload)
    return b'{"seq":%d,"crc":%d,"rec":%b}\n' % (seq, zlib.crc32(payload), payload)


def encode_promise(epoch: int, leader: int) -> bytes:
    """A local line: this node promised `epoch` to `leader` (never replicated, not numbered)."""
    body = b'"promise":%d,"leader":%d' % (epoch, leader)
    return b'{%b,"crc":%d}\n' % (body, zlib.crc32(body))


def encode_commit(seq: int) -> bytes:
    """A local line: entries up to `seq` are committed (recovery applies up to the last one)."""
    body = b'"commit":%d' % seq
    return b'{%b,"crc":%d}\n' % (body, zlib.crc32(body))


class _BadLine(ValueError):
    """One journal line cannot be trusted; the message says why. `whole`: its frame and CRC
    hold, so it was written whole (no crash in mid-write leaves it): what is wrong with it is
    corruption wherever it is, never a torn tail."""

    def __init__(self, why: str, *, whole: bool = False) -> None:
        super().__init__(why)
        self.whole = whole


_PROMISE_HEAD = b'{"promise":'
_COMMIT_HEAD = b'{"commit":'
_LOCAL_CRC = b',"crc":'
_EPOCH_MARK = b',"epoch":'


@attrs.frozen
class LocalLine:
    """A promise (epoch, leader) or a commit mark (seq) read back from the journal."""

    promise: tuple[int, int] | None = None
    commit: int | None = None


def _local_line(line: bytes) -> LocalLine | None:
    """The promise or commit mark on this line, None if it is an entry; _BadLine if broken."""
    if not (line.startswith(_PROMISE_HEAD) or line.startswith(_COMMIT_HEAD)):
        return None
    crc_at = line.rfind(_LOCAL_CRC)
    if crc_at < 0 or not line.endswith(b"}"):
        raise _BadLine("not a journal line")
    body, crc_text = line[1:crc_at], line[crc_at + 7 : -1]
    if not crc_text.isdigit() or zlib.crc32(body) != int(crc_text):
        raise _BadLine("checksum mismatch")
    try:
        fields = json.loads(b"{" + body + b"}")
    except ValueError:
        raise _BadLine("not a journal line", whole=True) from None
    values = list(fields.values())
    if not all(type(v) is int and 0 <= v <= EPOCH_MAX for v in values):
        raise _BadLine("a promise or commit mark must hold non-negative integers", whole=True)
    if "promise" in fields:
        if set(fields) != {"promise", "leader"}:
            raise _BadLine("a promise holds exactly promise and leader", whole=True)
        return LocalLine(promise=(fields["promise"], fields["leader"]))
    if set(fields) != {"commit"}:
        raise _BadLine("a commit mark holds exactly commit", whole=True)
    return LocalLine(commit=fields["commit"])


def _line_payload(line: bytes, expected_seq: int) -> tuple[bytes, int]:
    """The verified record bytes of one entry line (without its newline) and its epoch, or
    _BadLine."""
    if not line.startswith(_SEQ_HEAD) or not line.endswith(b"}"):
        raise _BadLine("not a journal line")
    crc_at = line.find(_CRC_MARK)
    rec_at = line.find(_REC_MARK, crc_at + 1)
    if crc_at < 0 or rec_at < 0:
        raise _BadLine("not a journal line")
    seq_text, crc_text = line[7:crc_at], line[crc_at + 7 : rec_at]
    epoch = 0
    epoch_at = seq_text.find(_EPOCH_MARK)
    if epoch_at >= 0:
        epoch_text, seq_text = seq_text[epoch_at + 9 :], seq_text[:epoch_at]
        if not epoch_text.isdigit() or len(epoch_text) > 18:
            raise _BadLine("not a journal line")
        epoch = int(epoch_text)
    if not (seq_text.isdigit() and crc_text.isdigit()):
        raise _BadLine("not a journal line")
    payload = line[rec_at + 7 : -1]
    if zlib.crc32(payload, epoch) != int(crc_text):
        raise _BadLine("checksum mismatch")
    if int(seq_text) != expected_seq:
        raise _BadLine(f"sequence number {int(seq_text)} where {expected_seq} was expected",
                       whole=True)
    return payload, epoch


def _parse_payload(payload: bytes, epoch: int, seq: int) -> dict[str, Any]:
    return _parse_payload_built(payload, epoch, seq)[0]


def _parse_payload_built(payload: bytes, epoch: int, seq: int
                         ) -> tuple[dict[str, Any], JobRecord | tuple[Any, ...] | None]:
    """The checked record of an entry, and for a submit the job it checked (a plain one as
    its stored row): recovery applies it as built (`JobTable.apply(..., built=job)`), so each
    submit is built once."""
    try:
        record = fast_loads(payload)  # orjson, reading exactly what `json` would
    except ValueError as exc:
        raise _BadLine(f"bad JSON ({exc})", whole=True) from None
    if type(record) is not dict or "op" not in record:
        raise _BadLine("record is not a map with an op", whole=True)
    # The common record, checked in a few lines; its job comes as a stored row, for
    # `JobTable.apply` to keep as it keeps a snapshot's (core/jobmap.py).
    built = plain_submit(record, epoch, seq, as_row=True)
    if built is not None:
        return record, built
    try:
        record = decode_record(record)
        # Checked as a wire message is: a CRC-valid line can still hold nonsense.
        if record["op"] == "submit":
            built = typed_submit(record, epoch, seq)
        else:
            typed_record(record, epoch, seq)
    # AttributeError too: `check_spec` calls a string method on a shell job's command, and a
    # CRC-valid line may hold another type there (a traceback at startup otherwise).
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _BadLine(f"bad record ({exc})", whole=True) from None
    return record, built


def decode_line(line: bytes, expected_seq: int) -> dict[str, Any]:
    """The record of one journal line (without its newline), checked; `_BadLine` otherwise."""
    payload, epoch = _line_payload(line, expected_seq)
    return _parse_payload(payload, epoch, expected_seq)


def line_epoch(line: bytes) -> int:
    """The epoch of an entry line (0 for a line written before epochs were journaled)."""
    at = line.find(_EPOCH_MARK, 0, 64)
    if at < 0:
        return 0
    end = line.find(b",", at + 9)
    text = line[at + 9 : end]
    return int(text) if text.isdigit() else 0


def decode_entry(line: bytes) -> dict[str, Any]:
    """The record of one replicated entry line (with or without its newline)."""
    line = line.rstrip(b"\n")
    head = line[7 : line.find(b",", 7)]
    seq = int(head) if head.isdigit() else -1
    payload, epoch = _line_payload(line, seq)
    return _parse_payload(payload, epoch, seq)


def list_segments(data_dir: Path) -> list[tuple[int, Path]]:
    """The journal segments, oldest first, as (first sequence number, path)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(data_dir):
            match = _SEGMENT_RE.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


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
    # For a coordinator in a group: the entries after the snapshot (the log's window), the
    # last promise and commit mark; `applied_seq` is where the table stands.
    snapshot_epoch: int = 0
    entries: list[tuple[int, int, bytes]] = attrs.field(factory=list)
    promise: tuple[int, int] = (0, 0)
    commit_seq: int = 0
    applied_seq: int = 0

    @property
    def last_epoch(self) -> int:
        return self.entries[-1][1] if self.entries else self.snapshot_epoch

    def jobs_by_state(self) -> dict[str, int]:
        counts = self.table.counts
        return {state.value: counts[state] for state in JobState}


def _cut(path: Path, offset: int, data: bytes, read_only: bool) -> Path:
    """Truncate `path` at `offset`, first keeping the cut bytes in a file beside it."""
    kept = path.with_name(f"{path.name}.cut-at-{offset}")
    if not read_only:
        write_durably(kept, data[offset:])
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(path.parent)
    return kept


@attrs.frozen
class SegmentScan:
    """What one segment held: good lines up to `good_bytes`, then `bad` (line, offset, why)."""

    next_seq: int
    good_bytes: int
    skipped: int
    replayed: int
    bad: tuple[int, int, str] | None
    bad_is_torn_tail: bool


def scan_segment(data: bytes, first: int, expected: int,
                 apply: Callable[..., Any] | None, *, start: int = 0,
                 start_lineno: int = 1,
                 on_entry: Callable[..., Any] | None = None,
                 on_local: Callable[[LocalLine], Any] | None = None,
                 apply_rows: Callable[[list[tuple[Any, ...]]], int] | None = None,
                 on_entries: Callable[..., Any] | None = None) -> SegmentScan:
    """Check the lines of one segment (from byte `start`, holding sequence `first`) and apply
    every record from `expected` on; lines before `expected` are only checked. `apply` is
    called as `JobTable.apply` is, with the job a submit holds already built (`built=`).

    `on_entry(seq, epoch, line, record)` sees every entry from `expected` on (after `apply`,
    if any); `on_local` every promise and commit mark. A line without a newline at the end of
    the data is torn. `bad_is_torn_tail` says whether the bad line is the segment's last one,
    the only place a crash in mid-write can leave it, and not a line written whole (frame and
    CRC intact: its record may have been acknowledged, so it is never cut as torn).

    Runs of plain submits are taken a run at a time (runtime/journalruns.py) when there is
    nothing to apply or `apply_rows` applies their rows (`JobTable.submit_rows`: how many it
    took, stopping before one `apply` would refuse); `on_entries(seqs, epochs, lines,
    records, rows)`, if given, then sees a run's entries at once, instead of `on_entry`.
    """
    lines = data[start:].split(b"\n")
    whole = False
    tail = lines.pop()  # b"" when the data ends with a newline, as it should
    offset = start
    bad: tuple[int, int, str] | None = None
    seq = first
    skipped = replayed = 0
    runs = apply is None or apply_rows is not None
    declined = -1  # the line the last run stopped before: taken line by line
    index, count = 0, len(lines)
    while index < count:
        line = lines[index]
        if runs and seq >= expected and index != declined:
            run = plain_submit_run(data, offset, lines, index, seq)
            taken = len(run.rows)
            if taken and apply is not None:
                assert apply_rows is not None
                taken = apply_rows(run.rows)
            if taken:
                _take_run(run, taken, lines[index : index + taken], on_entry, on_entries)
                offset += sum(map(len, lines[index : index + taken])) + taken
                seq += taken
                replayed += taken
                index += taken
                continue
            declined = index
        lineno = index + start_lineno
        try:
            local = _local_line(line) if line[:3] != b'{"s' else None
            if local is not None:
                if on_local is not None:
                    on_local(local)
                offset += len(line) + 1
                index += 1
                continue
            if seq < expected:
                _line_payload(line, seq)
                skipped += 1
            else:
                payload, epoch = _line_payload(line, seq)
                record, built = _parse_payload_built(payload, epoch, seq)
                if apply is not None:
                    try:
                        apply(record, built=built)
                    except (ValueError, KeyError, TypeError) as exc:
                        raise _BadLine(f"record cannot be applied ({exc})",
                                       whole=True) from None
                if on_entry is not None:
                    on_entry(seq, epoch, line + b"\n", record, built)
                replayed += 1
        except _BadLine as exc:
            bad = (lineno, offset, str(exc))
            whole = exc.whole
            break
        seq += 1
        offset += len(line) + 1
        index += 1
    else:
        if tail:
            bad = (len(lines) + start_lineno, offset, "torn line (no newline at its end)")
    last_lineno = len(lines) + start_lineno - (0 if tail else 1)
    return SegmentScan(next_seq=seq, good_bytes=offset, skipped=skipped, replayed=replayed,
                       bad=bad, bad_is_torn_tail=bad is not None and bad[0] == last_lineno
                       and not whole)


def _take_run(run: PlainRun, taken: int, lines: list[bytes],
              on_entry: Callable[..., Any] | None, on_entries: Callable[..., Any] | None
              ) -> None:
    """Hand the first `taken` entries of a run to `on_entries`, or one by one to
    `on_entry`, each line with its newline, as the line-at-a-time path does."""
    lines_nl = list(map(bytes.__add__, lines, repeat(b"\n", taken)))
    seqs, epochs, records, rows = (run.seqs[:taken], run.epochs[:taken],
                                   run.records[:taken], run.rows[:taken])
    if on_entries is not None:
        on_entries(seqs, epochs, lines_nl, records, rows)
    elif on_entry is not None:
        for entry in zip(seqs, epochs, lines_nl, records, rows, strict=True):
            on_entry(*entry)


def recover(data_dir: Path, *, repair: bool = False, read_only: bool = False,
            group: bool = False, upto: int | None = None) -> Recovery:
    """Rebuild the job table from `data_dir`; see the module comment for the rules.

    Alone, a coordinator's every journaled entry is committed and applied. In a group
    (`group`), entries are applied only up to the last commit mark (or `upto`, when the node
    rebuilds its table after losing the lead): the rest wait in the log to be committed or cut.

    The cycle collector is paused meanwhile: recovery only creates objects (millions of them
    at a million jobs), and every collection it triggered would walk all of them again for
    nothing, which more than doubles the restart time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _recover(data_dir, repair=repair, read_only=read_only, group=group, upto=upto)
    finally:
        if was_enabled:
            gc.enable()


def _recover(data_dir: Path, *, repair: bool, read_only: bool, group: bool,
             upto: int | None) -> Recovery:
    started = time.perf_counter()
    snapshot_path = data_dir / SNAPSHOT_NAME
    if snapshot_path.exists():
        snapshot_seq, table, snapshot_bytes = read_snapshot(snapshot_path)
        snapshot_epoch, promise = read_snapshot_log(snapshot_path)
    else:
        snapshot_seq, table, snapshot_bytes = 0, JobTable(), 0
        snapshot_epoch, promise = 0, (0, 0)
    result = Recovery(table=table, snapshot_seq=snapshot_seq, snapshot_bytes=snapshot_bytes,
                      snapshot_epoch=snapshot_epoch, promise=promise, commit_seq=snapshot_seq)
    segments = list_segments(data_dir)
    expected = snapshot_seq + 1  # the next record to apply
    deferred: list[tuple[int, dict[str, Any], Any]] = []  # built: a job, a stored row or None
    entries = result.entries

    def on_entry(seq: int, epoch: int, line: bytes, record: dict[str, Any],
                 built: JobRecord | None = None) -> None:
        entries.append((seq, epoch, line))
        if group:
            deferred.append((seq, record, built))

    def on_entries(seqs: list[int], epochs: list[int], lines: list[bytes],
                   records: list[dict[str, Any]], rows: list[tuple[Any, ...]]) -> None:
        entries.extend(zip(seqs, epochs, lines, strict=True))
        if group:
            deferred.extend(zip(seqs, records, rows, strict=True))

    def on_local(local: LocalLine) -> None:
        if local.promise is not None:
            result.promise = local.promise
        elif local.commit is not None:
            result.commit_seq = max(result.commit_seq, local.commit)

    apply = None if group else table.apply
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
        scan = scan_segment(data, first, expected, apply, on_entry=on_entry, on_local=on_local,
                            apply_rows=None if group else table.submit_rows,
                            on_entries=on_entries)
        result.skipped += scan.skipped
        result.replayed += scan.replayed
        expected += scan.replayed
        seq, offset, bad = scan.next_seq, scan.good_bytes, scan.bad
        result.last_segment, result.last_segment_first = path, first
        result.last_segment_records, result.last_segment_bytes = seq - first, offset
        if bad is None:
            continue
        lineno, offset, reason = bad
        if is_last and scan.bad_is_torn_tail:
            kept = _cut(path, offset, data, read_only)
            result.warnings.append(
                f"{path}:{lineno}: {reason}; {'would cut' if read_only else 'cut'} this last "
                f"line off (its record was never acknowledged), bytes kept in {kept.name}")
            break
        _refuse_or_repair(result, path, lineno, reason, later=segments[index + 1 :],
                          repair=repair, read_only=read_only, offset=offset, data=data)
        break
    result.last_seq = max(expected - 1, snapshot_seq)
    if group:
        limit = min(result.commit_seq if upto is None else upto, result.last_seq)
        _apply_committed(table, deferred, limit, data_dir)
        result.applied_seq = max(limit, snapshot_seq)
    else:
        result.applied_seq = result.last_seq  # alone, every entry journaled is committed
    if result.promise == (0, 0):
        result.promise = (_legacy_epoch(data_dir), 0)
    result.seconds = time.perf_counter() - started
    return result


def _apply_committed(table: JobTable, deferred: list[tuple[int, dict[str, Any], Any]],
                     limit: int, data_dir: Path) -> None:
    """Apply the entries up to seq `limit`, in order: each run of plain submits (their rows)
    at once, through `JobTable.submit_rows`, which stops before a row `apply` would refuse,
    and that entry is then applied alone, to fail as it always did."""
    index, count = 0, len(deferred)
    while index < count and deferred[index][0] <= limit:
        end = index
        while end < count and deferred[end][0] <= limit and type(deferred[end][2]) is tuple:
            end += 1
        if end > index:
            index += table.submit_rows([built for _, _, built in deferred[index:end]])
            if index == end:
                continue
        seq, record, built = deferred[index]
        try:
            table.apply(record, built=built)
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{data_dir}: entry {seq} cannot be applied ({exc})") from None
        index += 1


LEGACY_EPOCH_NAME = "epoch.json"


def _legacy_epoch(data_dir: Path) -> int:
    """The epoch an older tcpsched kept in `epoch.json`, so a restart still moves past it."""
    try:
        data = json.loads((data_dir / LEGACY_EPOCH_NAME).read_bytes())
    except (OSError, ValueError):
        return 0
    epoch = data.get("epoch") if isinstance(data, dict) else None
    return epoch if type(epoch) is int and 0 <= epoch < 2**53 else 0


def _refuse_or_repair(result: Recovery, path: Path, lineno: int, reason: str, *,
                      later: list[tuple[int, Path]], repair: bool, read_only: bool,
                      whole: bool = False, offset: int = 0, data: bytes = b"") -> None:
    where = f"{path}:{lineno}: {reason}"
    if not repair:
        message = (f"{where}; refusing to start (the journal is corrupt, not merely torn at its "
                   "end; --repair keeps the records before it and moves the rest aside)")
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
