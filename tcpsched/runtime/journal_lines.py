"""The journal's line format and segment names: what one line holds, and how it is checked.

Every record is one line of a segment, `{"seq":N,"crc":C,"rec":{...}}` (an `"epoch"` too from
the peer-coordinator format on), where C is the CRC32 of the exact bytes of the record's JSON.
A reader checks the frame, the CRC and that sequence numbers follow one another before it parses
the record, so a torn or altered line is always caught (`decode_line`); a follower checks a
replicated line the same way (`decode_entry`). Promises and commit marks are local lines of
their own (`LocalLine`). Segments are files `journal-<first seq>.jsonl`. Recovery, which reads
segments line by line with these, is `runtime/journal.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import attrs

from tcpsched.core.jobs import JobRecord
from tcpsched.core.plainsubmit import plain_submit
from tcpsched.core.record_types import EPOCH_MAX, typed_record, typed_submit
from tcpsched.core.records import decode_record, encode_record
from tcpsched.runtime import fastjson
from tcpsched.runtime.fastjson import loads as fast_loads

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


class BadLine(ValueError):
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


def local_line(line: bytes) -> LocalLine | None:
    """The promise or commit mark on this line, None if it is an entry; BadLine if broken."""
    if not (line.startswith(_PROMISE_HEAD) or line.startswith(_COMMIT_HEAD)):
        return None
    crc_at = line.rfind(_LOCAL_CRC)
    if crc_at < 0 or not line.endswith(b"}"):
        raise BadLine("not a journal line")
    body, crc_text = line[1:crc_at], line[crc_at + 7 : -1]
    if not crc_text.isdigit() or zlib.crc32(body) != int(crc_text):
        raise BadLine("checksum mismatch")
    try:
        fields = json.loads(b"{" + body + b"}")
    except ValueError:
        raise BadLine("not a journal line", whole=True) from None
    values = list(fields.values())
    if not all(type(v) is int and 0 <= v <= EPOCH_MAX for v in values):
        raise BadLine("a promise or commit mark must hold non-negative integers", whole=True)
    if "promise" in fields:
        if set(fields) != {"promise", "leader"}:
            raise BadLine("a promise holds exactly promise and leader", whole=True)
        return LocalLine(promise=(fields["promise"], fields["leader"]))
    if set(fields) != {"commit"}:
        raise BadLine("a commit mark holds exactly commit", whole=True)
    return LocalLine(commit=fields["commit"])


def line_payload(line: bytes, expected_seq: int) -> tuple[bytes, int]:
    """The verified record bytes of one entry line (without its newline) and its epoch, or
    BadLine."""
    if not line.startswith(_SEQ_HEAD) or not line.endswith(b"}"):
        raise BadLine("not a journal line")
    crc_at = line.find(_CRC_MARK)
    rec_at = line.find(_REC_MARK, crc_at + 1)
    if crc_at < 0 or rec_at < 0:
        raise BadLine("not a journal line")
    seq_text, crc_text = line[7:crc_at], line[crc_at + 7 : rec_at]
    epoch = 0
    epoch_at = seq_text.find(_EPOCH_MARK)
    if epoch_at >= 0:
        epoch_text, seq_text = seq_text[epoch_at + 9 :], seq_text[:epoch_at]
        if not epoch_text.isdigit() or len(epoch_text) > 18:
            raise BadLine("not a journal line")
        epoch = int(epoch_text)
    if not (seq_text.isdigit() and crc_text.isdigit()):
        raise BadLine("not a journal line")
    payload = line[rec_at + 7 : -1]
    if zlib.crc32(payload, epoch) != int(crc_text):
        raise BadLine("checksum mismatch")
    if int(seq_text) != expected_seq:
        raise BadLine(f"sequence number {int(seq_text)} where {expected_seq} was expected",
                       whole=True)
    return payload, epoch


def parse_payload(payload: bytes, epoch: int, seq: int) -> dict[str, Any]:
    return parse_payload_built(payload, epoch, seq)[0]


def parse_payload_built(payload: bytes, epoch: int, seq: int
                         ) -> tuple[dict[str, Any], JobRecord | tuple[Any, ...] | None]:
    """The checked record of an entry, and for a submit the job it checked (a plain one as
    its stored row): recovery applies it as built (`JobTable.apply(..., built=job)`), so each
    submit is built once."""
    try:
        record = fast_loads(payload)  # orjson, reading exactly what `json` would
    except ValueError as exc:
        raise BadLine(f"bad JSON ({exc})", whole=True) from None
    if type(record) is not dict or "op" not in record:
        raise BadLine("record is not a map with an op", whole=True)
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
        raise BadLine(f"bad record ({exc})", whole=True) from None
    return record, built


def decode_line(line: bytes, expected_seq: int) -> dict[str, Any]:
    """The record of one journal line (without its newline), checked; `BadLine` otherwise."""
    payload, epoch = line_payload(line, expected_seq)
    return parse_payload(payload, epoch, expected_seq)


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
    payload, epoch = line_payload(line, seq)
    return parse_payload(payload, epoch, seq)


def list_segments(data_dir: Path) -> list[tuple[int, Path]]:
    """The journal segments, oldest first, as (first sequence number, path)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(data_dir):
            match = _SEGMENT_RE.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)
