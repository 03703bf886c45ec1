"""Every message that crosses the wire, one frozen attrs class each.

Theory of operation: a message is a plain value; `core/codec.py` turns it into a msgpack map
tagged with its `TYPE` and back, checking every field against the annotation written here (and
the attrs validators below for ranges). So this file is the whole protocol: reading it tells you
what a peer may send and in which phase.

Phases of a connection: the side that dials sends `Hello`; the listening side answers
`Challenge` when a token is configured (the dialer proves it knows the token with `Auth`) and
then `Welcome` (with its own proof, so authentication is mutual) or `Refused`. Only
`HANDSHAKE_TYPES` are decoded before that, with a small frame limit. After it, a client sends
requests (each with a `req_id`) and gets `Reply` or `ErrorReply`; a worker sends `Register`,
`Heartbeat`, `Result`, `HandBack`, `Draining`, `Fenced`, and receives `Registered`, `Assign`,
`Kill`, `ResultAck`, `Redirect`.

Fencing: every order from a leader (`Registered` with its kill list, `Assign`, `Kill`,
`ResultAck`) carries the leader's epoch. A worker keeps the highest epoch it has seen and refuses
an order from a lower one, answering `Fenced` so that the deposed sender learns the higher epoch
(a refusal dropped without a word is how jobs used to stay `running` forever). `Register` says
the highest epoch the worker has seen, so a new leader learns it before it orders anything.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from tcpsched.core.capabilities import ALLOW_CALL_ENTRIES_MAX, parse_allow_call
from tcpsched.core.jobs import JobSpec, check_cwd, check_env, finite_time
from tcpsched.core.limits import ARRAY_ITEMS_MAX, FRAME_BYTES_MAX, MAP_ITEMS_MAX, WireLimits
from tcpsched.core.prefetch import PREFETCH_MAX

PROTOCOL_VERSION = 2  # 2: frames after a token handshake are sealed (core/channel.py)
ROLES = ("worker", "client", "peer")
NONCE_BYTES = 32
MAC_BYTES = 32
NAME_CHARS_MAX = 128
IDS_PER_REQUEST_MAX = 100_000


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: int | float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


def _name(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not 0 < len(value) <= NAME_CHARS_MAX:
        raise ValueError(f"{attribute.name} must have 1 to {NAME_CHARS_MAX} characters")


def _role(_inst: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")


def _nonce(_inst: object, attribute: attrs.Attribute[Any], value: bytes) -> None:
    if len(value) != NONCE_BYTES:
        raise ValueError(f"{attribute.name} must be {NONCE_BYTES} bytes")


def _ids(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if len(value) > IDS_PER_REQUEST_MAX:
        raise ValueError(f"{attribute.name} holds more than {IDS_PER_REQUEST_MAX} ids")


# -- handshake -------------------------------------------------------------------------------


@attrs.frozen
class Hello:
    TYPE: ClassVar[str] = "hello"
    version: int
    role: str = attrs.field(validator=_role)
    name: str = attrs.field(validator=_name)
    nonce: bytes = attrs.field(validator=_nonce)


@attrs.frozen
class Challenge:
    TYPE: ClassVar[str] = "challenge"
    nonce: bytes = attrs.field(validator=_nonce)


@attrs.frozen
class Auth:
    TYPE: ClassVar[str] = "auth"
    mac: bytes


@attrs.frozen
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    node: str
    epoch: int = attrs.field(validator=_non_negative)
    proof: bytes = b""


@attrs.frozen
class Refused:
    TYPE: ClassVar[str] = "refused"
    code: str  # "auth", "version", "busy", "role"; after the handshake, "name" or "epoch"
    reason: str


# -- client requests and replies ----------------------------------------------------------------


@attrs.frozen
class Submit:
    TYPE: ClassVar[str] = "submit"
    req_id: int
    jobs: tuple[JobSpec, ...]


@attrs.frozen
class Status:
    TYPE: ClassVar[str] = "status"
    req_id: int
    job_ids: tuple[str, ...] = attrs.field(validator=_ids)


@attrs.frozen
class Wait:
    TYPE: ClassVar[str] = "wait"
    req_id: int
    job_ids: tuple[str, ...] = attrs.field(validator=_ids)
    timeout: float | None = None


@attrs.frozen
class ListJobs:
    TYPE: ClassVar[str] = "list"
    req_id: int
    state: str | None = None
    limit: int = attrs.field(default=100, validator=_non_negative)
    # A page: the listing continues after the job `after` (newest first), and the reply is
    # {"jobs": [...], "next": id or None} so the client knows whether more follow.
    after: str | None = None
    page: bool = False


@attrs.frozen
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    req_id: int
    job_id: str


@attrs.frozen
class Workers:
    TYPE: ClassVar[str] = "workers"
    req_id: int


@attrs.frozen
class Stats:
    TYPE: ClassVar[str] = "stats"
    req_id: int


@attrs.frozen
class Leader:
    TYPE: ClassVar[str] = "leader"
    req_id: int


@attrs.frozen
class Coordinators:
    """Every configured coordinator as the one asked sees it; any coordinator answers (no
    redirect), so an operator can look at a group that has no leader."""

    TYPE: ClassVar[str] = "coordinators"
    req_id: int


@attrs.frozen
class Reply:
    TYPE: ClassVar[str] = "reply"
    req_id: int
    value: Any


@attrs.frozen
class ErrorReply:
    """A refused request. `kind` is one of ERROR_KINDS, so clients can map it to an exception."""

    TYPE: ClassVar[str] = "error"
    req_id: int
    kind: str
    message: str
    leader_hint: str | None = None
    retry_after: float | None = None  # kind "queue_full": seconds the client should wait


# conflict: an idempotency key already names a job with another spec.
# queue_full: the leader holds --max-pending pending jobs; the batch was refused whole.
ERROR_KINDS = ("not_found", "bad_request", "not_leader", "unavailable", "timeout", "conflict",
               "queue_full")

# -- workers -------------------------------------------------------------------------------------


@attrs.frozen
class AttemptRef:
    job_id: str
    attempt: int = attrs.field(validator=_non_negative)


def _allow_call(_inst: object, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if len(value) > ALLOW_CALL_ENTRIES_MAX:
        raise ValueError(f"allow_call holds more than {ALLOW_CALL_ENTRIES_MAX} entries")
    for entry in value:
        if parse_allow_call(entry) != entry:
            raise ValueError(f"allow_call entry {entry!r:.80} is not in normal form")


@attrs.frozen
class Register:
    """A worker's first message. `incarnation` is random per worker process: the same name
    with the same incarnation is that process reconnecting; with another, while the first is
    alive, it is a second worker under a name already in use, and is refused. `allow_shell`
    and `allow_call` say what it runs (core/capabilities.py), so jobs go only where they can."""

    TYPE: ClassVar[str] = "register"
    name: str = attrs.field(validator=_name)
    slots: int = attrs.field()
    tags: tuple[str, ...] = ()
    running: tuple[AttemptRef, ...] = ()
    draining: bool = False
    incarnation: str = attrs.field(default="", validator=attrs.validators.max_len(64))
    allow_shell: bool = True
    allow_call: tuple[str, ...] = attrs.field(default=(), validator=_allow_call)
    epoch_seen: int = attrs.field(default=0, validator=_non_negative)
    # Assignments it holds beyond its slots, to start the moment one frees (core/prefetch.py).
    prefetch: int = attrs.field(default=0, validator=attrs.validators.and_(
        _non_negative, attrs.validators.le(PREFETCH_MAX)))

    @slots.validator
    def _slots(self, _attribute: attrs.Attribute[Any], value: int) -> None:
        if not 1 <= value <= 10_000:
            raise ValueError("slots must be within [1, 10000]")


@attrs.frozen
class Registered:
    """The coordinator's answer to Register: how often to beat, what to stop running, and the
    limits it enforces on what the worker sends (core/limits.py), so that a result it would
    refuse is never sent."""

    TYPE: ClassVar[str] = "registered"
    heartbeat_interval: float
    epoch: int
    kill: tuple[AttemptRef, ...] = ()
    frame_bytes_max: int = attrs.field(default=FRAME_BYTES_MAX, validator=_non_negative)
    array_items_max: int = attrs.field(default=ARRAY_ITEMS_MAX, validator=_non_negative)
    map_items_max: int = attrs.field(default=MAP_ITEMS_MAX, validator=_non_negative)

    @property
    def limits(self) -> WireLimits:
        return WireLimits(max(self.frame_bytes_max, 1), max(self.array_items_max, 1),
                          max(self.map_items_max, 1))


@attrs.frozen
class Heartbeat:
    """`held`: slots taken by attempts that ended but whose work still runs (a timed-out
    call on a thread-isolated worker); the leader counts them as busy."""

    TYPE: ClassVar[str] = "heartbeat"
    running: tuple[AttemptRef, ...] = ()
    held: int = attrs.field(default=0, validator=_non_negative)


@attrs.frozen
class Assign:
    TYPE: ClassVar[str] = "assign"
    job_id: str
    attempt: int
    epoch: int
    kind: str
    command: str | None
    function: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timeout: float | None
    # Checked as a JobSpec checks them: a worker hands them to execve and chdir as they are.
    env: dict[str, str] = attrs.field(factory=dict, validator=lambda _i, _a, v: check_env(v))
    cwd: str | None = attrs.field(default=None, validator=lambda _i, _a, v: check_cwd(v))


@attrs.frozen
class Kill:
    TYPE: ClassVar[str] = "kill"
    job_id: str
    attempt: int
    reason: str
    epoch: int = attrs.field(validator=_non_negative)


@attrs.frozen
class Result:
    """How one attempt ended. `state` is succeeded, failed or cancelled."""

    TYPE: ClassVar[str] = "result"
    job_id: str
    attempt: int
    state: str = attrs.field()
    exit_code: int | None
    result: Any
    stdout: str
    stderr: str
    error: str | None
    started_at: float = attrs.field(validator=finite_time)
    finished_at: float = attrs.field(validator=finite_time)

    @state.validator
    def _state(self, _attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in ("succeeded", "failed", "cancelled"):
            raise ValueError("state must be succeeded, failed or cancelled")


@attrs.frozen
class ResultAck:
    TYPE: ClassVar[str] = "result_ack"
    job_id: str
    attempt: int
    epoch: int = attrs.field(validator=_non_negative)


@attrs.frozen
class HandBack:
    """A draining worker returns an attempt it will not finish; it requeues at once."""

    TYPE: ClassVar[str] = "hand_back"
    job_id: str
    attempt: int
    reason: str


@attrs.frozen
class Draining:
    TYPE: ClassVar[str] = "draining"


@attrs.frozen
class Fenced:
    """A worker's answer to an order it refused because it came from an epoch below `epoch`,
    the highest the worker has seen: its sender has been deposed (or is a fresh coordinator
    that does not know the cluster moved on). `order` is the refused message's TYPE and
    `order_epoch` the epoch it carried; `job_id` and `attempt` name the attempt it concerned,
    if any, so the sender can put a refused assignment back in the queue at once."""

    TYPE: ClassVar[str] = "fenced"
    epoch: int = attrs.field(validator=_non_negative)
    order: str
    order_epoch: int = attrs.field(validator=_non_negative)
    job_id: str | None = None
    attempt: int | None = None


@attrs.frozen
class Redirect:
    """A coordinator that does not lead answers `Register` with this: `leader` is the
    leader's address when known (the worker dials it next), else None (the worker tries the
    next coordinator in its list after a short backoff). `epoch` is the highest epoch the
    sender knows, so a worker can tell an old hint from a fresh one."""

    TYPE: ClassVar[str] = "redirect"
    leader: str | None
    epoch: int = attrs.field(validator=_non_negative)


Message = (
    Hello | Challenge | Auth | Welcome | Refused
    | Submit | Status | Wait | ListJobs | Cancel | Workers | Stats | Leader | Coordinators
    | Reply | ErrorReply
    | Register | Registered | Heartbeat | Assign | Kill | Result | ResultAck | HandBack | Draining
    | Fenced | Redirect
)

ALL_MESSAGES: tuple[type, ...] = (
    Hello, Challenge, Auth, Welcome, Refused,
    Submit, Status, Wait, ListJobs, Cancel, Workers, Stats, Leader, Coordinators, Reply,
    ErrorReply,
    Register, Registered, Heartbeat, Assign, Kill, Result, ResultAck, HandBack, Draining,
    Fenced, Redirect,
)  # fmt: skip

HANDSHAKE_TYPES: frozenset[type] = frozenset({Hello, Challenge, Auth, Welcome, Refused})
CLIENT_REQUESTS: frozenset[type] = frozenset(
    {Submit, Status, Wait, ListJobs, Cancel, Workers, Stats, Leader, Coordinators}
)
WORKER_TO_COORDINATOR: frozenset[type] = frozenset(
    {Register, Heartbeat, Result, HandBack, Draining, Fenced}
)
# `Refused` after the handshake: the coordinator will not take this Register (code "name", or
# "epoch" when the worker has seen a higher epoch than the coordinator's).
COORDINATOR_TO_WORKER: frozenset[type] = frozenset(
    {Registered, Refused, Redirect, Assign, Kill, ResultAck}
)
COORDINATOR_TO_CLIENT: frozenset[type] = frozenset({Reply, ErrorReply})

# -- live output (issue 13): a running job's output, streamed by its worker, tailed by clients ---

FOLLOW_WAIT_S_MAX = 60.0  # how long one `tail` request may wait for output


def _follow_wait(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= FOLLOW_WAIT_S_MAX:
        raise ValueError(f"{attribute.name} must be within [0, {FOLLOW_WAIT_S_MAX:g}] seconds")


@attrs.frozen
class Output:
    """A worker streams a running attempt's output (core/livelog.py): each stream's text from
    its offset on (characters since the attempt began; a jump is a gap). Never acknowledged:
    the final output comes with the `Result`, and a new session sends the spool again."""

    TYPE: ClassVar[str] = "output"
    job_id: str
    attempt: int = attrs.field(validator=_non_negative)
    stdout_offset: int = attrs.field(validator=_non_negative)
    stdout: str
    stderr_offset: int = attrs.field(validator=_non_negative)
    stderr: str


@attrs.frozen
class Tail:
    """A client follows a job's output: what there is past its offsets for `attempt` (None:
    the current one), waiting up to `wait` seconds for some if there is none yet. The reply
    is {"id", "attempt", "state", "stdout_offset", "stdout", "stderr_offset", "stderr",
    "done", "exit_code", "error"}; `done` once the job is finished (the text is then the
    final output's rest)."""

    TYPE: ClassVar[str] = "tail"
    req_id: int
    job_id: str
    attempt: int | None = None
    stdout_offset: int = attrs.field(default=0, validator=_non_negative)
    stderr_offset: int = attrs.field(default=0, validator=_non_negative)
    wait: float = attrs.field(default=0.0, validator=_follow_wait)


ALL_MESSAGES = (*ALL_MESSAGES, Output, Tail)
CLIENT_REQUESTS = CLIENT_REQUESTS | {Tail}
WORKER_TO_COORDINATOR = WORKER_TO_COORDINATOR | {Output}

# -- schedules (issue 12: cron and interval schedules; core/schedule_side.py) -------------------

SCHEDULE_ACTIONS = ("remove", "pause", "resume")


def _action(_inst: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in SCHEDULE_ACTIONS:
        raise ValueError(f"action must be one of {SCHEDULE_ACTIONS}")


@attrs.frozen
class ScheduleAdd:
    """A schedule: exactly one of `cron` (in time zone `tz`, default UTC) and `every`."""

    TYPE: ClassVar[str] = "schedule_add"
    req_id: int
    name: str = attrs.field(validator=_name)
    job: JobSpec
    cron: str | None = None
    tz: str | None = None
    every: float | None = None
    no_overlap: bool = False
    catch_up: str = "once"


@attrs.frozen
class ScheduleList:
    TYPE: ClassVar[str] = "schedule_list"
    req_id: int


@attrs.frozen
class ScheduleShow:
    TYPE: ClassVar[str] = "schedule_show"
    req_id: int
    name: str = attrs.field(validator=_name)
    count: int = attrs.field(default=5, validator=_non_negative)  # next fire times shown


@attrs.frozen
class ScheduleChange:
    TYPE: ClassVar[str] = "schedule_change"
    req_id: int
    name: str = attrs.field(validator=_name)
    action: str = attrs.field(validator=_action)


SCHEDULE_REQUESTS: frozenset[type] = frozenset(
    {ScheduleAdd, ScheduleList, ScheduleShow, ScheduleChange})
ALL_MESSAGES = (*ALL_MESSAGES, ScheduleAdd, ScheduleList, ScheduleShow, ScheduleChange)
CLIENT_REQUESTS = CLIENT_REQUESTS | SCHEDULE_REQUESTS

# -- routing and placement (issue 12): `explain JOB` ----------------------------------------------


@attrs.frozen
class Explain:
    """Why a job went where it went, or why it is still pending (`core/explain.py`)."""

    TYPE: ClassVar[str] = "explain"
    req_id: int
    job_id: str


ALL_MESSAGES = (*ALL_MESSAGES, Explain)
CLIENT_REQUESTS = CLIENT_REQUESTS | {Explain}

# -- workflows: dependencies, groups and retry (core/deps.py, core/groups.py) -------------------


def _group(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not 0 < len(value) <= NAME_CHARS_MAX:
        raise ValueError(f"{attribute.name} must have 1 to {NAME_CHARS_MAX} characters")


@attrs.frozen
class GroupRequest:
    """About every job of a group: `action` is "status" (counts, progress, throughput, ETA),
    "ids" (in submission order), "list" (records, newest first) or "cancel"; `state` filters
    ids and list."""

    TYPE: ClassVar[str] = "group"
    req_id: int
    group: str = attrs.field(validator=_group)
    action: str = "status"
    state: str | None = None
    limit: int = attrs.field(default=100, validator=_non_negative)


@attrs.frozen
class Retry:
    """Requeue failed or cancelled jobs as a new attempt: the jobs `job_ids` name, or those of
    `group` (only those in `state` when it is given)."""

    TYPE: ClassVar[str] = "retry"
    req_id: int
    job_ids: tuple[str, ...] = attrs.field(default=(), validator=_ids)
    group: str | None = attrs.field(default=None, validator=_group)
    state: str | None = None


ALL_MESSAGES = (*ALL_MESSAGES, GroupRequest, Retry)
CLIENT_REQUESTS = CLIENT_REQUESTS | {GroupRequest, Retry}

# -- the dashboard's dependency view (issue 13, runtime/http; core/children.py) -----------------


@attrs.frozen
class Children:
    """The jobs whose `after` names `job_id`, newest first, up to `limit`: [{"id", "state"}]."""

    TYPE: ClassVar[str] = "children"
    req_id: int
    job_id: str
    limit: int = attrs.field(default=100, validator=_non_negative)


ALL_MESSAGES = (*ALL_MESSAGES, Children)
CLIENT_REQUESTS = CLIENT_REQUESTS | {Children}
