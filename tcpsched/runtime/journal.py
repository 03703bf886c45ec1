"""The journal: its segments, and recovery from a data directory (the line format is
`runtime/journal_lines.py`).

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

import gc
import json
import os
import time
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any

import attrs

from tcpsched.core.jobs import JobRecord, JobState
from tcpsched.core.state import JobTable
from tcpsched.errors import JournalError
from tcpsched.runtime.files import fsync_dir, write_durably
from tcpsched.runtime.journal_lines import (
    BadLine,
    LocalLine,
    line_payload,
    list_segments,
    local_line,
    parse_payload_built,
)
from tcpsched.runtime.journalruns import PlainRun, plain_submit_run
from tcpsched.runtime.snapshot import SNAPSHOT_NAME, read_snapshot, read_snapshot_log

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
            local = local_line(line) if line[:3] != b'{"s' else None
            if local is not None:
                if on_local is not None:
                    on_local(local)
                offset += len(line) + 1
                index += 1
                continue
            if seq < expected:
                line_payload(line, seq)
                skipped += 1
            else:
                payload, epoch = line_payload(line, seq)
                record, built = parse_payload_built(payload, epoch, seq)
                if apply is not None:
                    try:
                        apply(record, built=built)
                    except (ValueError, KeyError, TypeError) as exc:
                        raise BadLine(f"record cannot be applied ({exc})",
                                       whole=True) from None
                if on_entry is not None:
                    on_entry(seq, epoch, line + b"\n", record, built)
                replayed += 1
        except BadLine as exc:
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
