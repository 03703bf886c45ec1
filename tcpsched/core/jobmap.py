"""The job table's map of a restarted coordinator: snapshot rows kept as rows until first used.

Theory of operation: a restart on a million queued jobs used to build a frozen `JobRecord`
and its `JobSpec` for every snapshot row (33 slot stores, two objects and a tuple each: about
a third of the restart's CPU, and 345 bytes a job), though most of those jobs are only
counted and queued before anyone looks at one. A plain row (nine fields, arguments a list,
every other field at its default: what a queued job with defaults leaves) holds all such a
job is, and it is checked in bulk as it is read. So `JobMap` keeps it as a stored row, a
tuple of its nine fields with one shared string per distinct state, kind and target
(core/rowblocks.py: 112 bytes, its arguments a tuple of 56), and turns it into the very `JobRecord`
the eager load built (`plain_job_of_row`) the first time anyone reads it, storing that in its
place: identity then holds from one read to the next.

It is a dict, so the C paths the scheduler's hot path takes stay C (`in`, `len`, `[k] = v`,
iteration over ids); every method that hands out a value (`[k]`, `get`, `pop`, `values`,
`items`, `==`) hands out records only, never a row. A table that has no rows (a fresh start,
or a snapshot of jobs that are not plain) keeps a plain dict and pays nothing.

Stored rows are never changed: `JobTable.image()` takes the stored values as they are
(`stored_values`), and a snapshot writes a stored row as the row it already is, in its
thread, while the table goes on replacing rows by records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tcpsched.core.jobbuild import plain_job_of_row
from tcpsched.core.jobs import JobRecord
from tcpsched.core.records import RowsJobs, jobs_from_rows
from tcpsched.core.rowblocks import columns_of_block, stored_rows

_get = dict.get
_getitem = dict.__getitem__
_setitem = dict.__setitem__
_pop = dict.pop
_values = dict.values
_items = dict.items
_MISSING: Any = object()


def _record(jobs: JobMap, job_id: str, value: Any) -> Any:
    """The record of a stored value, building (and storing) it if the value is a row."""
    if type(value) is tuple:
        value = plain_job_of_row(value)
        _setitem(jobs, job_id, value)
    return value


class JobMap(dict):  # type: ignore[type-arg]
    """Job id -> `JobRecord`, where a value may still be stored as its snapshot row."""

    __slots__ = ()

    def __getitem__(self, job_id: str) -> JobRecord:
        value = _getitem(self, job_id)
        return _record(self, job_id, value) if type(value) is tuple else value

    def get(self, job_id: str, default: Any = None) -> Any:
        value = _get(self, job_id, _MISSING)
        if value is _MISSING:
            return default
        return _record(self, job_id, value) if type(value) is tuple else value

    def pop(self, job_id: str, default: Any = _MISSING) -> Any:
        value = _pop(self, job_id, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(job_id)
            return default
        return plain_job_of_row(value) if type(value) is tuple else value

    def values(self) -> _Values:  # type: ignore[override]
        return _Values(self)

    def items(self) -> _Items:  # type: ignore[override]
        return _Items(self)

    def stored_values(self) -> list[Any]:
        """Every stored value as it is, records and rows (for `JobTable.image()`)."""
        return list(_values(self))

    def rows_left(self) -> int:
        """How many jobs are still stored as rows (O(n): for tests and figures)."""
        return sum(1 for value in _values(self) if type(value) is tuple)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, dict):
            return NotImplemented
        if len(self) != len(other):
            return False
        get = other.get
        return all(get(job_id, _MISSING) == job for job_id, job in self.items())

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"JobMap({dict(self.items())!r})"

    def copy(self) -> dict[str, JobRecord]:
        return dict(self.items())


class _Values:
    """`JobMap.values()`: records in insertion order (either way), rows built as reached."""

    __slots__ = ("_jobs",)

    def __init__(self, jobs: JobMap) -> None:
        self._jobs = jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[JobRecord]:
        jobs = self._jobs
        for job_id, value in _items(jobs):
            yield _record(jobs, job_id, value) if type(value) is tuple else value

    def __reversed__(self) -> Iterator[JobRecord]:
        jobs = self._jobs
        for job_id in reversed(jobs):
            value = _getitem(jobs, job_id)
            yield _record(jobs, job_id, value) if type(value) is tuple else value


class _Items:
    """`JobMap.items()`: (id, record) pairs in insertion order."""

    __slots__ = ("_jobs",)

    def __init__(self, jobs: JobMap) -> None:
        self._jobs = jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[tuple[str, JobRecord]]:
        jobs = self._jobs
        for job_id, value in _items(jobs):
            yield job_id, (_record(jobs, job_id, value) if type(value) is tuple else value)


def stored_values(jobs: dict[str, Any]) -> list[Any]:
    """Every job of a table's map as stored: records, and for a `JobMap` rows too."""
    return list(_values(jobs))


def rows_to_store(chunk: list[Any], shared: dict[str, str], *, blocks: bool
                  ) -> tuple[RowsJobs, bool]:
    """The jobs of one snapshot line, and whether they are stored rows for a `JobMap` to keep
    (a block, or a chunk of plain rows: nine fields, arguments a list) rather than records
    (`jobs_from_rows`, for any other chunk). `blocks`: the snapshot's format has blocks
    (core/rowblocks.py). The same checks refuse the same rows either way."""
    if blocks and len(chunk) == 1 and type(chunk[0]) is dict:
        return stored_rows(columns_of_block(chunk[0]), shared), True
    if set(map(type, chunk)) - {list}:
        raise ValueError("a snapshot line holds rows (lists)"
                         + (" or one block" if blocks else ""))
    if not chunk or set(map(len, chunk)) != {9}:
        return jobs_from_rows(chunk), False
    columns = list(zip(*chunk, strict=True))
    if set(map(type, columns[6])) != {list}:
        return jobs_from_rows(chunk), False
    return stored_rows(columns, shared), True
