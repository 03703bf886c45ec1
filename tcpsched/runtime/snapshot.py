"""Snapshots: the whole job table in one file, written in pieces and read a chunk at a time.

Theory of operation: a snapshot is one JSON document shaped like a journal line,
`{"seq":S,"table":{...},"crc":C}`: S is the last journal record it covers, C the CRC32 of the
exact bytes of the table, and the CRC comes last so that the file can be written in pieces
without holding it all in memory. The table's jobs array holds one chunk per line (JSON
allows the newlines): its rows, or, for a chunk of plain rows, one block of their columns
(core/rowblocks.py, since format 3), so `read_snapshot` parses and converts one chunk at a
time instead of holding every parsed row of a million jobs at once (see
`JobTable.from_parts`).

`write_snapshot` writes `snapshot.json.tmp`, fsyncs it, `os.replace`s it over `snapshot.json`
and fsyncs the directory: a crash at any point leaves the old snapshot or the new one, whole;
a write that fails (a full disk) deletes its temporary file.
It is given a `TableImage`, an immutable view of the table, so it may run in a thread while the
table goes on changing. The optional `CompactionHook` is called after every durable step; tests
use it to crash compaction between any two of them.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tcpsched.core.rowblocks import block_of_rows
from tcpsched.core.state import SNAPSHOT_BLOCKS_FORMAT, JobTable, TableImage
from tcpsched.errors import JournalError
from tcpsched.runtime.fastjson import loads as fast_loads
from tcpsched.runtime.files import fsync_dir, remove_quietly, write_all

SNAPSHOT_NAME = "snapshot.json"
SNAPSHOT_TMP_NAME = "snapshot.json.tmp"
SNAPSHOT_ROWS_PER_WRITE = 10_000

_SEQ_HEAD = b'{"seq":'
_TABLE_MARK = b',"table":'
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode  # json.loads minus its per-call encoding sniffing

CompactionHook = Callable[[str], None]


def compaction_step(hook: CompactionHook | None, name: str) -> None:
    """Report that compaction step `name` is done (and durable, where it is a durable step)."""
    if hook is not None:
        hook(name)


def _snapshot_pieces(seq: int, image: TableImage, log: dict[str, Any]) -> Iterator[bytes]:
    """The snapshot file in pieces: a prefix, the table body, and the CRC of the body last.

    The jobs array holds one chunk of rows per line (JSON allows the newlines), so a reader
    can parse and convert one chunk at a time instead of holding every parsed row at once.
    """
    yield b'{"seq":%d,"table":' % seq
    # Schedules after "log", which `read_snapshot_log` finds in the first bytes.
    head = _dumps({**image.header(SNAPSHOT_BLOCKS_FORMAT), "log": log, "schedules": image.schedules,
                   "finished": image.finished})
    piece = (head[:-1] + ',"jobs":[\n').encode()
    crc = zlib.crc32(piece)
    yield piece
    rows = image.stored_rows()
    separator = ""
    while chunk := list(itertools.islice(rows, SNAPSHOT_ROWS_PER_WRITE)):
        # A chunk of plain rows goes as one block of columns (core/rowblocks.py).
        block = block_of_rows(chunk)
        text = _dumps(chunk)[1:-1] if block is None else _dumps(block)
        piece = (separator + text + "\n").encode()
        separator = ","
        crc = zlib.crc32(piece, crc)
        yield piece
    piece = b"]}"
    crc = zlib.crc32(piece, crc)
    yield piece
    yield b',"crc":%d}\n' % crc


def write_snapshot(data_dir: Path, seq: int, image: TableImage,
                   hook: CompactionHook | None = None, *, epoch: int = 0,
                   promise: tuple[int, int] = (0, 0)) -> int:
    """Write `snapshot.json` for the state at `seq`, atomically and durably; returns its size.

    `epoch` is the epoch of entry `seq` (the log position the snapshot stands for) and
    `promise` this node's election promise, which the segments the snapshot replaces held."""
    log = {"epoch": epoch, "promise": list(promise)}
    tmp = data_dir / SNAPSHOT_TMP_NAME
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for piece in _snapshot_pieces(seq, image, log):
                write_all(fd, piece)
                size += len(piece)
            compaction_step(hook, "write-snapshot-tmp")
            os.fsync(fd)
            compaction_step(hook, "fsync-snapshot-tmp")
        finally:
            os.close(fd)
    except OSError:
        # Most often a full disk: a half-written snapshot is useless, and deleting it gives
        # the space back to the journal, which still holds every record.
        remove_quietly(tmp)
        raise
    os.replace(tmp, data_dir / SNAPSHOT_NAME)
    compaction_step(hook, "replace-snapshot")
    fsync_dir(data_dir)
    compaction_step(hook, "fsync-dir")
    return size


def read_snapshot(path: Path) -> tuple[int, JobTable, int]:
    """(sequence number, table, size in bytes) of a snapshot file, or JournalError.

    The file is mapped, not read: reading a million jobs' snapshot (78 MB) into a bytes
    object cost 0.18 s, most of it the kernel handing out and zeroing 19,000 fresh pages to
    copy the page cache into, against 0.02 s to map it and check its CRC. (Snapshots are
    replaced by rename, never rewritten in place, so the mapping stays whole.)"""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise JournalError(f"{path}: not a tcpsched snapshot (torn or truncated)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read_snapshot(path, data)


def _read_snapshot(path: Path, data: mmap.mmap) -> tuple[int, JobTable, int]:
    table_at = data.find(_TABLE_MARK)
    crc_at = data.rfind(b',"crc":')
    if data[: len(_SEQ_HEAD)] != _SEQ_HEAD or table_at < 0 or crc_at < table_at \
            or data[-2:] != b"}\n":
        raise JournalError(f"{path}: not a tcpsched snapshot (torn or truncated)")
    seq_text, crc_text = data[7:table_at], data[crc_at + 7 : -2]
    if not (seq_text.isdigit() and crc_text.isdigit()):
        raise JournalError(f"{path}: not a tcpsched snapshot")
    body_at = table_at + len(_TABLE_MARK)
    with memoryview(data) as view, view[body_at:crc_at] as body:
        if zlib.crc32(body) != int(crc_text):
            raise JournalError(f"{path}: checksum mismatch; the snapshot is corrupt")
    rows_at = data.find(b"\n", body_at, crc_at)
    if rows_at < 0 or data[rows_at - 8 : rows_at] != b'"jobs":[' \
            or data[crc_at - 2 : crc_at] != b"]}":
        raise JournalError(f"{path}: not a tcpsched snapshot")

    def chunks() -> Iterator[list[list[Any]]]:
        start = rows_at + 1
        while start < crc_at - 2:
            end = data.find(b"\n", start, crc_at)
            if end < 0:
                raise ValueError("subsection not found")  # as `bytes.index` says
            first = start + 1 if data[start : start + 1] == b"," else start
            yield fast_loads(b"[" + data[first:end] + b"]")
            start = end + 1

    try:
        header = _decode(data[body_at : rows_at + 1].decode() + "]}")
        table = JobTable.from_parts(header, chunks())
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise JournalError(f"{path}: cannot rebuild the job table ({exc})") from None
    return int(seq_text), table, crc_at - body_at



SNAPSHOT_HEAD_BYTES_MAX = 64 * 1024


def read_snapshot_log(path: Path) -> tuple[int, tuple[int, int]]:
    """(epoch of the snapshot's last entry, promise) from a snapshot's header; (0, (0, 0)) for
    a snapshot written before peers existed. The file's CRC is checked by `read_snapshot`."""
    with open(path, "rb") as f:
        head = f.read(SNAPSHOT_HEAD_BYTES_MAX)
    start = head.find(b'"log":')
    if start < 0:
        return 0, (0, 0)
    end = head.find(b"}", start)
    try:
        log = json.loads(head[start + 6 : end + 1])
        epoch, promise = log["epoch"], log["promise"]
        if not (type(epoch) is int and len(promise) == 2
                and all(type(v) is int and v >= 0 for v in promise) and epoch >= 0):
            raise ValueError("bad values")
    except (ValueError, KeyError, TypeError) as exc:
        raise JournalError(f"{path}: bad log position in the snapshot header ({exc})") from None
    return epoch, (promise[0], promise[1])
