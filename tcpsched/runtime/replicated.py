"""A follower's reading of replicated entries: a batch of journal lines to records, cheaply.

Theory of operation
-------------------
A follower applies every entry its leader commits, so how much it pays per entry decides what a
peer group costs (issue 10: 3 coordinators at most 30% below one). The journal's own reader
(`runtime/journal_lines.decode_entry`) checks a line as if it came from outside: its frame, its CRC,
then the record as a wire message (types, states, references; `core/record_types.py`), and
builds a submit's job twice. That is what recovery must do with bytes read back from a disk. A
replicated entry is not such bytes: the leader made the record itself, applied it to its own
table with the same `JobTable.apply`, and sent the line on an authenticated, epoch-fenced peer
link; the follower journals it as received and recovery checks it in full on any replay. So
here a whole batch (one Append's committed entries) is one JSON parse: the lines joined into
one array (`[l1,l2,...]`, their newlines are whitespace), parsed with orjson at once. Each
line's position (seq, epoch) and CRC are still checked against the log entry it arrived as
(a few C calls), so a line cut or altered on the way is refused before it is applied, and
`JobTable.apply` refuses records that do not fit the table (unknown job, bad state) as before.

Anything wrong in a batch raises ValueError; the node then reads the batch again one entry at a
time with the full reader, which names the bad entry (core/node.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Protocol

from tcpsched.core.records import TAG, decode_record
from tcpsched.runtime.fastjson import loads

_REC_MARK = b',"rec":'
_TAG_KEY = b'"%s"' % TAG.encode()


class _Entry(Protocol):
    """What is read of a log entry (core/replication.py's frozen `Entry`)."""

    @property
    def epoch(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def data(self) -> bytes: ...


def decode_entries(entries: Sequence[_Entry]) -> list[dict[str, Any]]:
    """The records of `entries` (journal lines as `journal_lines.encode_line` writes them), in
    order; ValueError if any line is not the entry it claims to be."""
    lines = [entry.data for entry in entries]
    text = b"[" + b",".join(lines) + b"]"
    parsed = loads(text)
    # A user value JSON cannot carry as it is (bytes, a map with odd keys) is written as a map
    # keyed by `records.TAG`; with no such key anywhere in the text (nor an escape that could
    # spell one), `decode_record` would give every record back as it is.
    tagged = _TAG_KEY in text or b"\\u" in text
    if type(parsed) is not list or len(parsed) != len(lines):
        raise ValueError("the lines are not one JSON object each")
    records = []
    for entry, line, value in zip(entries, lines, parsed, strict=True):
        if type(value) is not dict:
            raise ValueError(f"entry {entry.seq} is not a journal line")
        record = value.get("rec")
        if (value.get("seq") != entry.seq or value.get("epoch", 0) != entry.epoch
                or type(record) is not dict or "op" not in record):
            raise ValueError(f"entry {entry.seq} is not a journal line of that position")
        at = line.find(_REC_MARK)
        end = len(line) - 2 if line.endswith(b"\n") else len(line) - 1
        if at < 0 or zlib.crc32(line[at + 7 : end], entry.epoch) != value.get("crc"):
            raise ValueError(f"entry {entry.seq}: checksum mismatch")
        records.append(decode_record(record) if tagged else record)
    return records
