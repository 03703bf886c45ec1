"""Runs of plain submit lines in a journal segment, checked and taken a run at a time.

Theory of operation: a restart's journal tail is mostly plain submits, often thousands in a
row (a `map`), and checking them one line at a time (`journal_lines.line_payload`, the parse,
`plain_submit`, `JobTable.apply`) costs about 6 µs of Python a line, for 0.5 µs of CRC and
1.4 µs of orjson. `plain_submit_run` checks a run of them with passes over the whole run
instead: a compiled pattern frames each line as `line_payload` reads it (a seq, an optional
epoch, a CRC, and a record that starts as a submit's does), then the seqs, the CRCs, the parse
and the rows (`core/plainsubmit.plain_submit_rows`) are each a pass over the run, so the
per-line work left is done in C.

It only ever takes what the line-at-a-time path takes, and gives the same records and rows:
it stops at the first line it is not sure of (any line the pattern does not frame, a seq out
of order, a bad CRC, JSON orjson does not read as `json` would, a record `plain_submit` would
not take) and leaves that line to the line-at-a-time path, which accepts or refuses it with
its own message, exactly as before.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from itertools import takewhile
from operator import methodcaller, truth
from typing import Any, NamedTuple

from tcpsched.core.plainsubmit import plain_submit_rows
from tcpsched.runtime import fastjson

# What `line_payload` reads as seq, epoch, CRC and payload, for a payload that starts as a
# submit's; `\d` of a bytes pattern is ASCII digits only, as `bytes.isdigit` is. Searched with
# `findall` over a block of whole lines (MULTILINE, `.` not crossing a newline), a match is one
# whole line, so as many matches as lines means every line matched.
_PLAIN_SUBMIT_LINE = re.compile(
    rb'^\{"seq":(\d+)(?:,"epoch":(\d{1,18}))?,"crc":(\d+),"rec":(\{"op":"submit","job":\{.*\}\})\}$',
    re.MULTILINE)
_SUBMIT_MARK = b',"rec":{"op":"submit","job":{'  # in every line the pattern can match
RUN_LINES_MAX = 1024  # lines checked at once: what one run holds parsed stays in the caches
_groups = methodcaller("groups", b"")  # as `findall` gives them: b"" for no epoch


class PlainRun(NamedTuple):
    """The first `len(rows)` lines of a run: their seqs, epochs, parsed records and rows."""

    seqs: list[int]
    epochs: list[int]
    records: list[Any]
    rows: list[tuple[Any, ...]]


def _agreeing(got: Sequence[Any], want: Sequence[Any]) -> int:
    """How many leading values of two sequences are equal."""
    if got == want:
        return len(got)
    return next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)


def plain_submit_run(data: bytes, offset: int, lines: Sequence[bytes], start: int, seq: int
                     ) -> PlainRun:
    """The leading lines of `lines[start:]` (entry lines of `data` without their newline, the
    first at byte `offset` and expected to be entry `seq`) that are plain submits the
    line-at-a-time path would take, up to `RUN_LINES_MAX` of them."""
    # The run ends before the first line that is not a submit at all: a tail of a working
    # cluster interleaves submits with start and finish records, and matching the pattern over
    # the next RUN_LINES_MAX lines from every submit there cost as much as all the rest.
    block = []
    for line in lines[start : start + RUN_LINES_MAX]:
        if _SUBMIT_MARK not in line:
            break
        block.append(line)
    if not block:
        return PlainRun([], [], [], [])
    text = data[offset : offset + sum(map(len, block)) + len(block)]
    found = _PLAIN_SUBMIT_LINE.findall(text)
    if len(found) != len(block):  # not every line is one: those before the first that is not
        found = list(map(_groups, takewhile(truth, map(_PLAIN_SUBMIT_LINE.fullmatch, block))))
    # orjson reads each record as `fastjson.loads` does wherever it does not raise, unless a
    # record may hold an integer too wide for it (then any line of the run may: the payloads
    # are pieces of the text, each led by a byte that may lead a number).
    loads = fastjson.loads if fastjson.may_hold_a_wide_int(text) else fastjson.orjson_loads
    if not found:
        return PlainRun([], [], [], [])
    seq_texts, epoch_texts, crc_texts, payloads = zip(*found, strict=True)
    seqs = list(map(int, seq_texts))
    n = _agreeing(seqs, list(range(seq, seq + len(seqs))))
    if b"" not in epoch_texts:
        epochs = list(map(int, epoch_texts[:n]))
    elif epoch_texts.count(b"") == len(epoch_texts):
        epochs = [0] * n
    else:
        epochs = [int(text) if text else 0 for text in epoch_texts[:n]]
    payloads = payloads[:n]
    n = _agreeing(list(map(zlib.crc32, payloads, epochs)), list(map(int, crc_texts[:n])))
    try:
        records = list(map(loads, payloads[:n]))
    except ValueError:  # a line orjson refuses (NaN, say), which `json` may still read
        records = []
        for payload in payloads[:n]:
            try:
                records.append(loads(payload))
            except ValueError:
                break
        n = len(records)
    rows = plain_submit_rows(records, epochs[:n], seqs[:n])
    n = len(rows)
    return PlainRun(seqs[:n], epochs[:n], records[:n], rows)
