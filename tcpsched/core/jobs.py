"""Jobs: what a user asks for (`JobSpec`), what we know of it (`JobRecord`), and its life.

Theory of operation: a job is born `pending` (queued, delayed, or later waiting on `after`), is
handed to a worker and becomes `running`, and ends in one of three terminal states. A failed or
lost attempt may send it back to `pending` with one more attempt. `LEGAL_TRANSITIONS` is the
whole state machine; `core/state.py` refuses anything else, so a bug that tries an illegal move
is caught where it happens instead of corrupting the table.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any

import attrs

PRIORITY_MIN = -1_000_000
PRIORITY_MAX = 1_000_000
RETRIES_MAX = 1_000
JOB_ID_BYTES_MAX = 128
OUTPUT_BYTES_MAX = 1024 * 1024  # cap on captured stdout and on stderr, each
SECONDS_MAX = 365 * 86400  # the longest timeout or delay: a year
TIMEOUT_S_MIN = 0.001  # what the CLI accepts; a spec takes any positive timeout

_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_VARS_MAX = 256  # variables one job may set
ENV_NAME_CHARS_MAX = 256
ENV_VALUE_CHARS_MAX = 32 * 1024
ENV_CHARS_MAX = 256 * 1024  # all names and values of one job together
CWD_CHARS_MAX = 4096  # PATH_MAX on Linux


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# What `retry` takes back to pending (its own record, core/state.py: not a transition of
# `LEGAL_TRANSITIONS`, which keeps terminal states final for every other change).
RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.CANCELLED})
GROUP_CHARS_MAX = 64

LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.PENDING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def _trim(text: str, chars_max: int | None, job_id: str) -> str:
    if chars_max is None or len(text) <= chars_max:
        return text
    return (text[:chars_max] + f"\n[tcpsched: {len(text) - chars_max} more characters; "
            f"`status {job_id}` shows the whole output]")


def value_chars(value: Any) -> int:
    """About how many characters a user value (a result) takes: strings and bytes by length,
    numbers, booleans and None a few each, containers their items. What retention counts and
    listings trim by; computed once per finished job (`JobTable`), not per reply."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bytes or kind is bytearray:
            total += len(item) + 2
        elif kind is list or kind is tuple:
            total += len(item) + 2
            stack.extend(item)
        elif kind is dict:
            total += len(item) + 2
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 8
    return total


def _trim_result(value: Any, chars: int, chars_max: int | None, job_id: str) -> Any:
    """A result as a listing shows it: whole if it fits `chars_max`, else a string result cut
    like output, and any other value replaced by a note (`status` shows every result whole)."""
    if chars_max is None or chars <= chars_max:
        return value
    if type(value) is str:
        return (value[:chars_max] + f"\n[tcpsched: {len(value) - chars_max} more characters of "
                f"the result; `status {job_id}` shows it whole]")
    return (f"[tcpsched: a {type(value).__name__} result of about {chars} characters; "
            f"`status {job_id}` shows it]")


def function_name_ok(name: str) -> bool:
    """Whether `name` looks like module:function, as a call job's function must."""
    return _FUNCTION_RE.match(name) is not None


def is_legal(old: JobState, new: JobState) -> bool:
    return new in LEGAL_TRANSITIONS[old]


def check_spec(spec: JobSpec) -> None:
    """What a spec must hold (run on construction; recovery runs it on specs it builds
    without the constructor, core/record_types.py)."""
    if spec.kind == "shell":
        if spec.command is None or spec.function is not None:
            raise ValueError("a shell job needs a command and no function")
        if not spec.command.strip():
            raise ValueError("a shell job needs a non-empty command")
        if spec.args or spec.kwargs:
            raise ValueError("a shell job takes no args or kwargs")
    elif spec.kind == "call":
        if spec.function is None or spec.command is not None:
            raise ValueError("a call job needs a function and no command")
        if not _FUNCTION_RE.match(spec.function):
            raise ValueError(f"function must look like module:function, not {spec.function!r}")
    else:
        raise ValueError(f"kind must be 'shell' or 'call', not {spec.kind!r}")
    if not PRIORITY_MIN <= spec.priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be within [{PRIORITY_MIN}, {PRIORITY_MAX}]")
    if not 0 <= spec.retries <= RETRIES_MAX:
        raise ValueError(f"retries must be within [0, {RETRIES_MAX}]")
    # Written so that NaN fails too: every comparison with NaN is false.
    if spec.timeout is not None and not 0 < spec.timeout <= SECONDS_MAX:
        raise ValueError(f"timeout must be more than 0 and at most {SECONDS_MAX} seconds "
                         f"(365 days), not {spec.timeout!r}")
    if not 0 <= spec.delay <= SECONDS_MAX:
        raise ValueError(f"delay must be at least 0 and at most {SECONDS_MAX} seconds "
                         f"(365 days), not {spec.delay!r}")
    if spec.key is not None and not 0 < len(spec.key) <= JOB_ID_BYTES_MAX:
        raise ValueError(f"idempotency key must have 1 to {JOB_ID_BYTES_MAX} characters")
    for tag in spec.tags:
        if not tag or len(tag) > 64:
            raise ValueError("tags must have 1 to 64 characters")
    if spec.group is not None and not 0 < len(spec.group) <= GROUP_CHARS_MAX:
        raise ValueError(f"group must have 1 to {GROUP_CHARS_MAX} characters")
    check_env(spec.env)
    check_cwd(spec.cwd)


def check_cwd(cwd: str | None) -> None:
    if cwd is not None and (not isinstance(cwd, str) or not 0 < len(cwd) <= CWD_CHARS_MAX
                            or "\0" in cwd):
        raise ValueError(f"cwd must be a path of 1 to {CWD_CHARS_MAX} characters, without NUL")


def check_env(env: dict[str, str]) -> None:
    """Names a shell can use (`NAME=value`), string values, bounded: what execve can pass."""
    if not isinstance(env, dict):
        raise ValueError("env must be a map of names to strings")
    if len(env) > ENV_VARS_MAX:
        raise ValueError(f"env may set at most {ENV_VARS_MAX} variables, not {len(env)}")
    total = 0
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name) \
                or len(name) > ENV_NAME_CHARS_MAX:
            raise ValueError(f"env name {name!r:.80} must be letters, digits and _, not "
                             f"starting with a digit, at most {ENV_NAME_CHARS_MAX} characters")
        if not isinstance(value, str):
            raise ValueError(f"env {name}: the value must be a string, not "
                             f"{type(value).__name__}")
        if len(value) > ENV_VALUE_CHARS_MAX or "\0" in value:
            raise ValueError(f"env {name}: the value must have at most {ENV_VALUE_CHARS_MAX} "
                             "characters, without NUL")
        total += len(name) + len(value)
    if total > ENV_CHARS_MAX:
        raise ValueError(f"env holds {total} characters in all, over {ENV_CHARS_MAX}")


# No weak reference slot on jobs and specs (nothing refers to them weakly): 8 bytes each, 16
# per queued job, at a million queued jobs 16 MB.
@attrs.frozen(weakref_slot=False)
class JobSpec:
    """What the user submitted. Validated on construction, so a bad spec never enters the core."""

    kind: str
    command: str | None = None
    function: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    priority: int = 0
    retries: int = 0
    timeout: float | None = None
    delay: float = 0.0
    tags: tuple[str, ...] = ()
    key: str | None = None
    after: tuple[str, ...] = ()
    env: dict[str, str] = attrs.field(factory=dict)  # laid over the worker's environment
    cwd: str | None = None  # None: the worker's --workdir (or its own directory)
    group: str | None = None  # jobs of one `map` share it (core/groups.py)

    def __attrs_post_init__(self) -> None:
        check_spec(self)


def is_finite(value: float) -> bool:
    """`math.isfinite`, but False rather than OverflowError for an integer too large for a
    float: JSON (a CRC-valid journal line, a snapshot, a REST body) can hold one where a time or
    a period belongs, and it must be refused in one line, not crash the reader."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def finite_time(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """A time must be a finite number (or None where it may be unknown): a NaN never compares
    as due and an infinity cannot be shown as a date, so neither may enter a record."""
    if value is not None and not is_finite(value):
        raise ValueError(f"{attribute.name} must be a finite number, not {value!r}")


@attrs.frozen(weakref_slot=False)
class JobRecord:
    """Everything known about one job. Replaced (never mutated) on every change.

    `seq` is the submission order: it keeps FIFO within a priority, also for a job that comes
    back after a lost worker. `lost_workers` counts attempts lost with their worker (the poison
    limit); `failures` counts failed attempts (what `retries` bounds). `not_before` is when a
    delayed or backing-off job may run.
    """

    id: str
    seq: int
    spec: JobSpec
    state: JobState = JobState.PENDING
    attempts: int = 0
    worker: str | None = None
    submitted_at: float = attrs.field(default=0.0, validator=finite_time)
    started_at: float | None = attrs.field(default=None, validator=finite_time)
    finished_at: float | None = attrs.field(default=None, validator=finite_time)
    exit_code: int | None = None
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    not_before: float = attrs.field(default=0.0, validator=finite_time)
    lost_workers: int = 0
    failures: int = 0

    def to_public(self, output_chars_max: int | None = None, result_chars_max: int | None = None,
                  result_chars: int | None = None) -> dict[str, Any]:
        """The record as users see it (CLI `--json`, `Client.status`): the contract's fields.

        `output_chars_max` trims stdout and stderr, and `result_chars_max` the result (whose
        size, `result_chars`, the job table knows), so a reply listing many jobs stays within
        a frame; `status` of one job shows them whole (up to the worker's capture cap).
        """
        spec = self.spec
        out: dict[str, Any] = {
            "id": self.id,
            "state": self.state.value,
            "kind": spec.kind,
        }
        if spec.kind == "shell":
            out["command"] = spec.command
        else:
            out["function"] = spec.function
        out.update(
            args=list(spec.args),
            kwargs=dict(spec.kwargs),
            priority=spec.priority,
            retries=spec.retries,
            attempts=self.attempts,
            timeout=spec.timeout,
            tags=list(spec.tags),
            after=list(spec.after),
            env=dict(spec.env),
            cwd=spec.cwd,
            worker=self.worker,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_code=self.exit_code,
            result=self.result if result_chars_max is None else _trim_result(
                self.result, value_chars(self.result) if result_chars is None else result_chars,
                result_chars_max, self.id),
            stdout=_trim(self.stdout, output_chars_max, self.id),
            stderr=_trim(self.stderr, output_chars_max, self.id),
            error=self.error,
        )
        if spec.key is not None:
            out["key"] = spec.key
        out["group"] = spec.group
        return out
