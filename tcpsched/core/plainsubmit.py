"""The common journal record, a plain submit, checked and built without the general path.

Theory of operation: a journal tail after a restart is mostly submits of jobs with default
options (`{"op":"submit","job":{"id":..,"seq":..,"state":"pending","submitted_at":..,
"kind":"call","function":..,"args":[..],"key":..}}`), and the general path (`decode_record`,
then `typed_submit`: a dozen lookups of fields such a job does not have, `job_from_dict`,
`check_spec` with its regular expression) cost about 7 µs of the 15 µs a record took.
`plain_submit` takes only a submit whose job map holds nothing but the row fields
(core/records.py), each of the type and range the general path accepts, and builds the very
job it would build (`build_job` with every other field at its default). Anything else, or
anything doubtful (a key that is not text, a bool priority, an unknown kind), gives None, and
the caller takes the general path, which accepts and refuses exactly as before, with its
own messages: the fast path only ever accepts what the general path accepts.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from tcpsched.core.jobbuild import KINDS, build_job
from tcpsched.core.jobs import (
    JOB_ID_BYTES_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    JobState,
    function_name_ok,
)
from tcpsched.core.record_types import EPOCH_MAX

_CALL_FIELDS = frozenset({"id", "seq", "state", "submitted_at", "kind", "function", "args",
                          "priority", "key"})
_SHELL_FIELDS = frozenset({"id", "seq", "state", "submitted_at", "kind", "command",
                           "priority", "key"})  # a shell job takes no args
_FUNCTIONS_KNOWN_MAX = 1024
_functions_ok: set[str] = set()  # function names already matched (few, repeated)
_isfinite = math.isfinite
_intern = sys.intern
_PENDING = JobState.PENDING.value


def _same(value: Any) -> Any:
    return value


def plain_submit(record: dict[str, Any], epoch: int, seq: int, *, as_row: bool = False
                 ) -> Any:
    """The job of a plain submit record (as `typed_submit` builds it), or with `as_row` its
    stored row (a tuple, for `JobTable.apply(..., built=row)`), or None when the record is
    not one: then the general path must check it."""
    if len(record) != 2 or record.get("op") != "submit":
        return None
    job = record.get("job")
    if type(job) is not dict or not (0 <= epoch <= EPOCH_MAX and 0 <= seq <= EPOCH_MAX):
        return None
    kind = job.get("kind")
    if kind == "call":
        if not job.keys() <= _CALL_FIELDS:
            return None
        target = job.get("function")
        if type(target) is not str:
            return None
        if target not in _functions_ok:
            if not function_name_ok(target):
                return None
            if len(_functions_ok) < _FUNCTIONS_KNOWN_MAX:
                _functions_ok.add(target)
        args = job.get("args", ())
        if type(args) is not list and args != ():
            return None
    elif kind == "shell":
        if not job.keys() <= _SHELL_FIELDS:
            return None
        target = job.get("command")
        if type(target) is not str or not target.strip():
            return None
        args = ()
    else:
        return None
    job_id = job.get("id")
    job_seq = job.get("seq")
    submitted_at = job.get("submitted_at", 0.0)
    priority = job.get("priority", 0)
    key = job.get("key")
    if not (type(job_id) is str and 0 < len(job_id) <= JOB_ID_BYTES_MAX
            and job.get("state") == "pending"  # required: `job_from_dict` reads it
            and type(job_seq) is int and 0 <= job_seq <= EPOCH_MAX
            and (type(submitted_at) is float or type(submitted_at) is int)
            and submitted_at >= 0 and _isfinite(submitted_at)
            and type(priority) is int and PRIORITY_MIN <= priority <= PRIORITY_MAX
            and (key is None or (type(key) is str and 0 < len(key) <= JOB_ID_BYTES_MAX))):
        return None
    if not as_row:
        return build_job(job_id, job_seq, "pending", submitted_at, kind, target, args,
                         priority, key, None, _same)
    # The stored row `plain_job_of_row` builds that same job from (core/jobmap.py).
    return (job_id, job_seq, _PENDING, submitted_at, KINDS[kind],
            _intern(target) if kind == "call" else target, tuple(args), priority, key)
