"""Snapshot blocks: a chunk of plain snapshot rows written as columns, and read back as rows.

Theory of operation: at a million queued jobs a snapshot line of 10,000 rows repeats the same
state, kind, function and priority in every row, and parsing it made a list and three strings
per row that the load then threw away (a third of the parse, and as long again to free them).
Since snapshot format 3, a chunk whose rows are all plain (nine fields, arguments a list:
what `job_to_row` gives a queued job with defaults) is written as one JSON object, a block:

    {"ids":[...],"seqs":[...],"states":"pending","submitted_at":[...],"kinds":"call",
     "targets":"operator:add","args":[[0,1],...],"priorities":0,"keys":[...]}

Each field is the column of that row field; a column whose rows all hold one value may be
that value instead of a list (a value that is not a list: states, kinds, targets and
priorities never are lists). Other chunks stay rows. The file is the same JSON document as
before, with blocks among the rows of its jobs array; a format-2 snapshot still loads.

Reading a block or a plain chunk of rows gives the same stored rows (`stored_rows`): tuples
of the nine fields, the arguments a tuple too (the job's own `args`, 16 bytes less than the
parsed list), one string object per distinct state, kind and target, checked exactly as
`jobs_from_rows` checks rows (`check_columns`, the same errors naming a job).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

from tcpsched.core.jobbuild import KINDS, check_columns
from tcpsched.core.jobs import JobState
from tcpsched.core.records import RowsJobs

BLOCK_FIELDS = ("ids", "seqs", "states", "submitted_at", "kinds", "targets", "args",
                "priorities", "keys")
_PER_ROW = frozenset({"ids", "seqs", "submitted_at", "args", "keys"})  # always lists
_REPEATABLE = (2, 4, 5, 7)  # states, kinds, targets, priorities: columns by position
_BLOCK_FIELD_SET = frozenset(BLOCK_FIELDS)
_STATE_TEXT = {s.value: s.value for s in JobState}
BLOCK_ROWS_MIN = 100


def block_of_rows(rows: Sequence[Sequence[Any]]) -> dict[str, Any] | None:
    """The block of a chunk of snapshot rows, or None unless every row is plain and there are
    at least `BLOCK_ROWS_MIN` (a few rows parse in no time either way, and read more easily by
    eye as rows)."""
    if len(rows) < BLOCK_ROWS_MIN or set(map(len, rows)) != {9}:
        return None
    columns: list[Any] = list(zip(*rows, strict=True))
    if not set(map(type, columns[6])) <= {list, tuple}:  # stored rows hold tuples
        return None
    for index in _REPEATABLE:
        column = columns[index]
        first = column[0]
        # Equal and of one type (0 == 0.0 == False): the rows read back hold that value.
        if type(first) is not list and column.count(first) == len(column) \
                and set(map(type, column)) == {type(first)}:
            columns[index] = first
    return dict(zip(BLOCK_FIELDS, columns, strict=True))


def columns_of_block(block: Any) -> list[Any]:
    """The nine columns of a block, each a sequence of one value per row; ValueError if the
    block is not one `block_of_rows` writes."""
    if type(block) is not dict or block.keys() != _BLOCK_FIELD_SET:
        raise ValueError(f"a snapshot block holds exactly the fields {list(BLOCK_FIELDS)}")
    columns = [block[name] for name in BLOCK_FIELDS]
    for name, column in zip(BLOCK_FIELDS, columns, strict=True):
        if name in _PER_ROW and type(column) is not list:
            raise ValueError(f"a snapshot block's {name} must be a list")
    n = len(columns[0])
    if not n or any(len(column) != n for column in columns
                    if type(column) is list):
        raise ValueError("a snapshot block's columns must all hold its rows, one value each")
    if set(map(type, columns[6])) != {list}:
        raise ValueError("a snapshot block's args must be lists")
    for index in _REPEATABLE:
        if type(columns[index]) is not list:
            columns[index] = (columns[index],)
    # The kind of each row and its target are checked together: a single target of rows of
    # more than one kind is checked with each of them.
    if len(columns[4]) != len(columns[5]):
        if len(columns[4]) == 1:
            columns[4] = columns[4] * n
        else:
            columns[5] = columns[5] * n
    return columns


def stored_rows(columns: Sequence[Sequence[Any]], shared: dict[str, str]) -> RowsJobs:
    """Check the columns of a chunk (a column of length 1 is that value for every row) and
    give its ids, keys, the state of each row (or, when they share one, {state: rows}), and
    its stored rows. `shared` maps each target (function, command) read so far to its one
    string object, across chunks."""
    ids, seqs, states, submitted, kinds, targets, argss, priorities, keys = columns
    check_columns(ids, seqs, states, submitted, kinds, targets, priorities, keys)
    n = len(ids)
    state_of = {state: _STATE_TEXT[state] for state in set(states)}
    kind_of = {kind: KINDS[kind] for kind in set(kinds)}
    target_of = {target: shared.setdefault(target, target) for target in set(targets)}

    def column(values: Sequence[Any], canonical: dict[Any, Any] | None) -> Any:
        if len(values) == 1 and n != 1:
            return repeat(values[0] if canonical is None else canonical[values[0]], n)
        return values if canonical is None else map(canonical.__getitem__, values)

    rows = list(zip(ids, seqs, column(states, state_of), submitted, column(kinds, kind_of),
                    column(targets, target_of), map(tuple, argss), column(priorities, None),
                    keys,
                    strict=True))
    # One state for all: its count, which `Counter.update` (`JobTable.from_parts`) adds.
    row_states: Any = {states[0]: n} if len(states) == 1 and n > 1 else states
    return RowsJobs(ids, keys, row_states, rows)  # type: ignore[arg-type]
