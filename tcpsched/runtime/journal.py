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
  warning. A bad line anywhere else is corruption: refuse to start, naming file and line, unless
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
from pathlib import Path
from typing import Any

import attrs

from tcpsched.core.jobs import JobState
from tcpsched.core.records import decode_record, encode_record
from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime.files import fsync_dir, write_durably
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, read_snapshot

_SEGMENT_RE = re.compile(r"^journal-(\d{20})\.jsonl$")
_SEQ_HEAD = b'{"seq":'
_CRC_MARK = b',"crc":'
_REC_MARK = b',"rec":'
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_decoder = json.JSONDecoder()
_decode = _decoder.decode  # json.loads minus its per-call encoding sniffing
# One JSON value at an index: (value, index after it); StopIteration if none starts there.
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


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
        text = payload.decode()
        try:
            # The scanner alone: `_decode` around it costs a quarter of the parse of a record
            # (two regex matches for whitespace we never write, two Python calls).
            record, end = _scan_once(text, 0)
            if end != len(text):
                raise ValueError("extra data")
        except (StopIteration, ValueError):
            record = _decode(text)  # whatever the scanner refused: the full parser decides
    except ValueError as exc:
        raise _BadLine(f"bad JSON ({exc})") from None
    if type(record) is not dict or "op" not in record:
        raise _BadLine("record is not a map with an op")
    try:
        return decode_record(record)
    except (ValueError, TypeError, KeyError) as exc:
        raise _BadLine(f"bad record ({exc})") from None


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
