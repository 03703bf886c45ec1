"""Typed journal records: one frozen attrs class per kind, each carrying its (epoch, seq).

Theory of operation: the leader's scheduler emits a record as a plain map (its own records need
no checking, and building it costs one dict); the node core numbers it (epoch, seq) and encodes
it into the journal line that is written and replicated. Whatever comes back from outside the
process — a journal line at recovery, an entry a follower receives — is turned into the typed
record of its kind with `typed_record` before it is applied: every field is checked against its
annotation and the validators below, exactly as wire messages are (`core/codec.py`), so a line
with a valid CRC but `priority: "high"`, a job submitted as `running`, a negative attempt or a
non-finite time is refused where it is read (with its file and line, by recovery) instead of
crashing the table or leaving a job that can never end. References (the job a record names must
exist, in a state the change is legal from) are checked by `JobTable.apply`, which refuses an
illegal transition.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from tcpsched.core.jobs import (
    JOB_ID_BYTES_MAX,
    JobRecord,
    JobState,
    check_env,
    check_spec,
    is_finite,
)
from tcpsched.core.records import job_from_dict

EPOCH_MAX = 2**53  # epochs and seqs stay exact in every JSON reader
ATTEMPTS_MAX = 1_000_000
NAME_CHARS_MAX = 128
FORGET_IDS_MAX = 1_000_000


def _int_in(low: int, high: int) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be an integer in [{low}, {high}], "
                             f"not {value!r}")

    return check


def _check_time(name: str, value: Any) -> None:
    if type(value) not in (int, float) or not is_finite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative time, not {value!r}")


def _time(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_time(attribute.name, value)


def _optional_time(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _time(inst, attribute, value)


def _job_id(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= JOB_ID_BYTES_MAX:
        raise ValueError(f"{attribute.name} must be a job id, not {value!r}")


def _name(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= NAME_CHARS_MAX:
        raise ValueError(f"{attribute.name} must be a worker name, not {value!r}")


def _optional_str(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and type(value) is not str:
        raise ValueError(f"{attribute.name} must be text or null, not {type(value).__name__}")


def _str(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str:
        raise ValueError(f"{attribute.name} must be text, not {type(value).__name__}")


def _optional_int(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or abs(value) > 2**31):
        raise ValueError(f"{attribute.name} must be an integer or null, not {value!r}")


def _bool(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise ValueError(f"{attribute.name} must be true or false, not {value!r}")


_position: Any = _int_in(0, EPOCH_MAX)  # typed: schedule_records imports it in a cycle
_SPEC_SEQUENCES = ("args", "tags", "after")
_KIND_OTHER = {"shell": "function", "call": "command"}  # what a job of each kind must not name


@attrs.frozen
class SubmitRecord:
    OP: ClassVar[str] = "submit"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    job: dict[str, Any] = attrs.field()

    @job.validator
    def _job(self, _attribute: attrs.Attribute[Any], value: Any) -> None:
        checked_job(value)


def checked_job(value: Any) -> JobRecord:
    """The job a submit's `job` map describes, built once and checked as a new job: what
    `JobSpec`'s own validators check (kind, priority, retries, timeout, ...), and that it is
    born pending with no attempt, worker or non-finite time. ValueError says what is wrong.

    Recovery keeps the job it returns (`typed_submit`) instead of building it again in
    `JobTable.apply`: a journal tail of submits costs one build per record, not three.
    """
    if type(value) is not dict:
        raise ValueError("job must be a map")
    _job_id(None, _JOB_ATTRIBUTE, value.get("id"))
    if value.get("state", "pending") != JobState.PENDING.value:
        # A job is born pending; one "submitted" running, with no worker to report it,
        # could never end.
        raise ValueError(f"job {value.get('id')!r} submitted as {value.get('state')!r}; a "
                         "new job is pending")
    for name in ("attempts", "lost_workers", "failures"):
        if value.get(name, 0) != 0:
            raise ValueError(f"a new job has no {name}")
    if value.get("worker") is not None:
        raise ValueError("a new job has no worker")
    if type(value.get("seq")) is not int or not 0 <= value["seq"] <= EPOCH_MAX:
        raise ValueError(f"job seq must be an integer in [0, {EPOCH_MAX}]")
    for name in ("submitted_at", "not_before"):
        _check_time(name, value.get(name, 0.0))
    for name in _SPEC_SEQUENCES:
        if name in value and type(value[name]) is not list:
            raise ValueError(f"job {name} must be a list")
    kind = value.get("kind")
    if kind is None:
        raise ValueError("bad job spec (the job has no kind)")
    # `job_from_dict` reads only the target of its kind; the other must be absent, as JobSpec
    # requires, and env a map (it reads an empty env of any type as none).
    if kind in _KIND_OTHER and value.get(_KIND_OTHER[kind]) is not None:
        raise ValueError(f"a {kind} job needs no {_KIND_OTHER[kind]}")
    if "env" in value:
        check_env(value["env"])
    try:
        job = job_from_dict(value)
        check_spec(job.spec)  # the checks JobSpec runs on construction
    except TypeError as exc:
        raise ValueError(f"bad job spec ({exc})") from None
    return job


@attrs.frozen
class StartRecord:
    OP: ClassVar[str] = "start"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    id: str = attrs.field(validator=_job_id)
    attempt: int = attrs.field(validator=_int_in(1, ATTEMPTS_MAX))
    worker: str = attrs.field(validator=_name)
    # None: assigned into a prefetch place, not started yet (core/prefetch.py).
    at: float | None = attrs.field(validator=_optional_time)


FINISH_STATES = frozenset({"succeeded", "failed", "cancelled"})


@attrs.frozen
class FinishRecord:
    OP: ClassVar[str] = "finish"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    id: str = attrs.field(validator=_job_id)
    state: str = attrs.field()
    at: float = attrs.field(validator=_time)
    attempt: int = attrs.field(default=1, validator=_int_in(0, ATTEMPTS_MAX))
    exit_code: int | None = attrs.field(default=None, validator=_optional_int)
    result: Any = None
    stdout: str = attrs.field(default="", validator=_str)
    stderr: str = attrs.field(default="", validator=_str)
    error: str | None = attrs.field(default=None, validator=_optional_str)
    started_at: float | None = attrs.field(default=None, validator=_optional_time)
    finished_at: float | None = attrs.field(default=None, validator=_optional_time)
    lost: bool = attrs.field(default=False, validator=_bool)
    poisoned: bool = attrs.field(default=False, validator=_bool)

    @state.validator
    def _state(self, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in FINISH_STATES:
            raise ValueError(f"state must be one of {sorted(FINISH_STATES)}, not {value!r}")


REQUEUE_REASONS = frozenset({"lost", "failed", "handed_back"})


@attrs.frozen
class RequeueRecord:
    OP: ClassVar[str] = "requeue"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    id: str = attrs.field(validator=_job_id)
    reason: str = attrs.field()
    not_before: float = attrs.field(default=0.0, validator=_time)
    error: str | None = attrs.field(default=None, validator=_optional_str)
    exit_code: int | None = attrs.field(default=None, validator=_optional_int)
    stdout: str = attrs.field(default="", validator=_str)
    stderr: str = attrs.field(default="", validator=_str)

    @reason.validator
    def _reason(self, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in REQUEUE_REASONS:
            raise ValueError(f"reason must be one of {sorted(REQUEUE_REASONS)}, not {value!r}")


@attrs.frozen
class CancelRecord:
    OP: ClassVar[str] = "cancel"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    id: str = attrs.field(validator=_job_id)
    at: float = attrs.field(validator=_time)
    error: str | None = attrs.field(default=None, validator=_optional_str)


@attrs.frozen
class ForgetRecord:
    OP: ClassVar[str] = "forget"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    ids: tuple[str, ...] = attrs.field(converter=tuple)

    @ids.validator
    def _ids(self, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        if len(value) > FORGET_IDS_MAX:
            raise ValueError(f"forget holds more than {FORGET_IDS_MAX} ids")
        for job_id in value:
            _job_id(self, attribute, job_id)


@attrs.frozen
class RetryRecord:
    """`retry`: a failed or cancelled job back to pending as a new attempt (core/state.py)."""

    OP: ClassVar[str] = "retry"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    id: str = attrs.field(validator=_job_id)
    at: float = attrs.field(validator=_time)


@attrs.frozen
class EpochRecord:
    """A leader's first entry of its epoch: where the epoch lives in the log."""

    OP: ClassVar[str] = "epoch"
    epoch: int = attrs.field(validator=_position)
    seq: int = attrs.field(validator=_position)
    leader: int = attrs.field(validator=_int_in(1, 1_000_000))


Record = (SubmitRecord | StartRecord | FinishRecord | RequeueRecord | CancelRecord
          | ForgetRecord | EpochRecord | RetryRecord)
RECORD_TYPES: dict[str, type] = {cls.OP: cls for cls in (  # type: ignore[attr-defined]
    SubmitRecord, StartRecord, FinishRecord, RequeueRecord, CancelRecord, ForgetRecord,
    EpochRecord, RetryRecord)}
# Schedules' records (cron and interval schedules, core/schedule_records.py).
from tcpsched.core.schedule_records import SCHEDULE_RECORD_TYPES  # noqa: E402

RECORD_TYPES.update({cls.OP: cls for cls in SCHEDULE_RECORD_TYPES})  # type: ignore[attr-defined]
_FIELDS = {op: {f.name for f in attrs.fields(cls)} - {"epoch", "seq"}
           for op, cls in RECORD_TYPES.items()}
_FIELDS["epoch"] = _FIELDS["epoch"] | {"epoch"}  # the epoch record names the epoch it begins


def typed_record(record: dict[str, Any], epoch: int, seq: int) -> Record:
    """The typed, checked record of a map read from outside (a journal line, a replicated
    entry); ValueError says what is wrong with it."""
    op = record.get("op")
    cls = RECORD_TYPES.get(op)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown record op {op!r}")
    fields = {k: v for k, v in record.items() if k != "op"}
    unknown = fields.keys() - _FIELDS[op]  # type: ignore[index]
    if unknown:
        raise ValueError(f"{op} record has unknown field(s) {sorted(unknown)}")
    if op == "epoch":
        # The record names the leader's epoch; it must be the epoch it is numbered in.
        if fields.get("epoch") not in (epoch, None) and epoch:
            raise ValueError(f"epoch record for {fields.get('epoch')!r} in epoch {epoch}")
        fields.pop("epoch", None)
    try:
        return cls(epoch=epoch, seq=seq, **fields)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ValueError(f"bad {op} record ({exc})") from None


_SUBMIT_FIELDS = frozenset({"op", "job"})
# The attributes the validators name in their messages, for checks made outside a record.
_JOB_ATTRIBUTE: Any = attrs.fields(StartRecord).id
_POSITION_ATTRIBUTES: dict[str, Any] = {"epoch": attrs.fields(StartRecord).epoch,
                                        "seq": attrs.fields(StartRecord).seq}


def typed_submit(record: dict[str, Any], epoch: int, seq: int) -> JobRecord:
    """`typed_record` of a submit, giving the job it checked (to apply with `built=`)."""
    if record.keys() - _SUBMIT_FIELDS:
        raise ValueError(f"submit record has unknown field(s) "
                         f"{sorted(record.keys() - _SUBMIT_FIELDS)}")
    if "job" not in record:
        raise ValueError("bad submit record (missing the job)")
    for name, value in (("epoch", epoch), ("seq", seq)):
        _position(None, _POSITION_ATTRIBUTES[name], value)
    return checked_job(record["job"])
