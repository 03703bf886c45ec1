"""The worker's side of the worker protocol, as a sans-I/O state machine.

Theory of operation: one `WorkerProtocol` per worker process. The shell (`tcpsched/worker.py`,
or the simulation's `testing/sim_worker.py`) feeds it events through `step(event, now)` and
carries out the effects it returns; it arms one timer at `next_deadline()` and feeds `Tick`
when it fires. The core never dials, runs a job or reads a clock itself.

Sessions: the core asks for a dial (`Dial`); the shell answers `SessionStarted` (handshake
done) or `DialFailed`. On a session the core sends `Register` (the attempts it still runs and
the finished ones whose result is not acknowledged yet, both its own; its incarnation; what it
runs; whether it drains; the highest epoch it has seen) and waits for `Registered`, then beats
at the interval the coordinator asked for. A coordinator that does not lead answers `Redirect`:
the core dials the leader it names, or the next coordinator of its list. A failed dial, or a
session that ends before `Registered`, moves on to the next coordinator with capped
exponential backoff and full jitter; a registered session that is lost tries the same
coordinator first (it was the leader, and may just have restarted), unless it timed out (the
network stopped acknowledging our beats: a partition), which moves on to the next at once.

Fencing: the core keeps the highest epoch it has seen in any accepted order (`Registered`,
`Assign`, `Kill`, `ResultAck`) across sessions, and refuses an order from a lower epoch. The
refusal is answered with `Fenced`, never dropped: its sender has been deposed and must learn it
(a stale `Assign` ignored without a word used to leave its job `running` forever). A stale
`Registered` is refused and the session left for the next coordinator. A `Redirect` is not an
order and raises nothing; its epoch only tells whether its hint is fresh.

Results: a finished attempt's result goes into the outbox and stays there until a `ResultAck`
of a current epoch takes it out; every new registration sends the outbox again. Before it is
sent, a result is checked against the limits the coordinator gave (`codec.peer_refusal`): one
it would refuse, which would cut the connection on every reconnect, becomes a failed attempt
saying why; so does one that was in flight on `result_sends_max` sessions that all died.

Slots, prefetch and drain: an `Assign` for a free slot starts at once; one beyond the slots
waits in the lookahead (`core/prefetch.py`, `prefetch` places) and starts as soon as a slot
frees; one beyond both, or while draining, is handed back at once.
`DrainRequested` (SIGTERM) sends `Draining`, gives running attempts `drain_timeout_s` to finish,
then kills and hands back the rest, waits up to `result_flush_s` for the outbox to be
acknowledged, and exits 0. A second process under the name of a live worker is refused by the
coordinator (`Refused(code="name")`): the core exits 2 (a usage error: pick another --name).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.capabilities import Capabilities
from tcpsched.core.codec import peer_refusal
from tcpsched.core.events import Tick
from tcpsched.core.limits import FRAME_BYTES_MAX, WireLimits
from tcpsched.core.prefetch import Lookahead

if TYPE_CHECKING:
    import random

log = logging.getLogger(__name__)

REDIRECT_HOPS_FREE = 3  # redirects followed at once before they back off like failures

__all__ = [
    "EXIT_AUTH", "EXIT_NAME_IN_USE", "CloseSession", "Dial", "DialFailed", "DrainRequested",
    "Exit", "JobFinished", "KillJob", "Received", "Send", "SessionClosed", "SessionStarted",
    "StartJob", "Tick", "WorkerConfig", "WorkerProtocol", "WorkerStatistics",
]

EXIT_NAME_IN_USE = 2  # a usage error: pick another --name
EXIT_AUTH = 4  # the coordinator refused our token
REGISTER_TIMEOUT_S = 10.0  # a coordinator that does not answer Register by then is left
RESULT_FLUSH_S = 5.0  # at exit, how long to wait for the coordinator to take our results
RESULT_SENDS_MAX = 3  # sessions a result may be in flight on, all lost, before it is replaced
HEARTBEAT_INTERVAL_MIN_S = 0.01  # whatever a coordinator asks, the core never beats faster
DIAL_FAILURES_LOGGED_EVERY = 20  # a coordinator that stays down is logged now and then


@attrs.frozen
class WorkerConfig:
    """What the core needs to know of the worker; `incarnation` is random per process
    (messages.Register), so a reconnect proves it is the same worker."""

    name: str
    slots: int
    coordinators: tuple[str, ...] = attrs.field(validator=attrs.validators.min_len(1))
    incarnation: str = ""
    tags: tuple[str, ...] = ()
    capabilities: Capabilities = attrs.field(factory=Capabilities)
    drain_timeout_s: float = 30.0
    reconnect_base_s: float = 0.1
    reconnect_cap_s: float = 1.0
    register_timeout_s: float = REGISTER_TIMEOUT_S
    result_flush_s: float = RESULT_FLUSH_S
    result_sends_max: int = RESULT_SENDS_MAX
    frame_bytes_max: int = FRAME_BYTES_MAX  # what we assume the coordinator takes, until told
    prefetch: int = 0  # assignments held beyond the slots, to start at once (core/prefetch.py)


# -- events ---------------------------------------------------------------------------------------


@attrs.frozen
class SessionStarted:
    """The shell's dial to `address` finished its handshake; `session` is its own number."""

    session: int
    address: str


@attrs.frozen
class DialFailed:
    """The dial to `address` failed; `auth_refused` when the coordinator refused our token."""

    address: str
    reason: str
    auth_refused: bool = False


@attrs.frozen
class Received:
    session: int
    msg: Any


@attrs.frozen
class SessionClosed:
    """The session ended from the other side or the network (not by `CloseSession`);
    `timed_out`: the network stopped acknowledging what we sent (the path to the coordinator
    is dead, e.g. a partition), rather than the coordinator closing or resetting it."""

    session: int
    reason: str
    timed_out: bool = False


@attrs.frozen
class JobFinished:
    """An attempt the core started (`StartJob`) ended, however it ended (a kill included)."""

    result: m.Result


@attrs.frozen
class DrainRequested:
    """SIGTERM or SIGINT: take no new jobs, finish or hand back the running ones, exit 0."""


@attrs.frozen
class SlotsHeld:
    """Thread calls stopped by a timeout or a kill still run (a thread cannot be killed): they
    hold `held` slots until they return, so no new job may take those (`--isolation thread`)."""

    held: int


Event = (SessionStarted | DialFailed | Received | SessionClosed | JobFinished | DrainRequested
         | SlotsHeld | Tick)

# -- effects --------------------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Send `msg` on the current session."""

    msg: Any


@attrs.frozen
class StartJob:
    """Run this attempt; feed `JobFinished` when it ends."""

    assign: m.Assign


@attrs.frozen
class KillJob:
    """Stop this attempt (its `JobFinished` still comes, and tells how it ended)."""

    job_id: str
    attempt: int
    reason: str


@attrs.frozen
class CloseSession:
    """Close the current session; the core asks for the next dial itself (`Dial`)."""

    reason: str


@attrs.frozen
class Dial:
    """Dial `address` now; answer with `SessionStarted` or `DialFailed`."""

    address: str


@attrs.frozen
class Exit:
    """Stop every job still running and end the process with `code`; `reason` is one line."""

    code: int
    reason: str


Effect = Send | StartJob | KillJob | CloseSession | Dial | Exit


@attrs.frozen
class WorkerStatistics:
    state: str  # "waiting", "dialing", "registering", "registered" or "exited"
    address: str | None
    epoch_seen: int
    running: int
    outbox: int
    draining: bool
    sessions: int
    orders_refused: int
    redirects: int
    results_sent: int
    handed_back: int
    waiting: int = 0  # prefetched assignments waiting for a slot


class WorkerProtocol:
    """One worker's side of the protocol (see the module's theory of operation)."""

    def __init__(self, config: WorkerConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self._rng = rng
        self._now = now
        self._wall = now
        self._effects: list[Effect] = []
        self.running: dict[str, int] = {}  # job id -> the attempt that holds a slot here
        self.waiting = Lookahead(config.prefetch)  # assigned beyond the slots, not started
        # Killed attempts whose result nobody wants (handed back, superseded): dropped on finish.
        self._abandoned: set[tuple[str, int]] = set()
        self.outbox: dict[tuple[str, int], m.Result] = {}
        self._sends: dict[tuple[str, int], int] = {}  # sessions each result went out on
        self.epoch_seen = 0
        self.heartbeat_interval_s = 0.5
        self.limits = WireLimits(frame_bytes_max=config.frame_bytes_max)  # until Registered
        self.draining = False
        self.session: int | None = None
        self.address: str | None = None  # of the current session
        self.is_registered = False
        self.exit_code: int | None = None
        self._index = 0  # position in config.coordinators of the last coordinator tried
        self._target = config.coordinators[0]
        self._dial_at: float | None = now  # dial at once
        self._is_dialing = False
        self._backoff_s = config.reconnect_base_s
        self._hops = 0  # sessions left since we last registered
        self.held = 0  # slots held by stopped thread calls (SlotsHeld)
        self._dial_failures = 0
        self._register_by: float | None = None
        self._beat_at: float | None = None
        self._drain_until: float | None = None
        self._flush_until: float | None = None
        self._sessions = 0
        self._orders_refused = 0
        self._redirects = 0
        self._results_sent = 0
        self._handed_back = 0

    # -- the sans-I/O interface ----------------------------------------------------------------

    def step(self, event: Event, now: float, wall: float | None = None) -> list[Effect]:
        """One event at monotonic `now` (and Unix time `wall`, for the times results show)."""
        if self.exit_code is not None:
            return []
        self._effects = []
        self._now = now
        self._wall = now if wall is None else wall
        if isinstance(event, Received):
            if event.session == self.session:
                self._on_message(event.msg, now)
        elif isinstance(event, JobFinished):
            self._on_job_finished(event.result, now)
        elif isinstance(event, SessionStarted):
            self._on_session_started(event, now)
        elif isinstance(event, SessionClosed):
            if event.session == self.session:
                self._on_session_closed(event.reason, now, timed_out=event.timed_out)
        elif isinstance(event, DialFailed):
            self._on_dial_failed(event, now)
        elif isinstance(event, DrainRequested):
            self._on_drain_requested(now)
        elif isinstance(event, SlotsHeld):
            if event.held != self.held:
                self.held = event.held
                self._start_waiting()
                # At once: the coordinator must count them before the result that ends
                # their attempt frees the slot in its books.
                if self.is_registered:
                    self._send(m.Heartbeat(running=self.running_refs(), held=self.held))
        elif not isinstance(event, Tick):
            raise TypeError(f"unknown event {event!r}")
        self._advance(now)
        effects, self._effects = self._effects, []
        return effects

    def next_deadline(self) -> float | None:
        if self.exit_code is not None:
            return None
        candidates = [self._drain_until, self._flush_until]
        if self.session is None:
            candidates.append(None if self._is_dialing else self._dial_at)
        elif self.is_registered:
            candidates.append(self._beat_at)
        else:
            candidates.append(self._register_by)
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def statistics(self) -> WorkerStatistics:
        if self.exit_code is not None:
            state = "exited"
        elif self.is_registered:
            state = "registered"
        elif self.session is not None:
            state = "registering"
        else:
            state = "dialing" if self._is_dialing else "waiting"
        return WorkerStatistics(
            state=state, address=self.address, epoch_seen=self.epoch_seen,
            running=len(self.running), outbox=len(self.outbox), draining=self.draining,
            sessions=self._sessions, orders_refused=self._orders_refused,
            redirects=self._redirects, results_sent=self._results_sent,
            handed_back=self._handed_back, waiting=len(self.waiting),
        )  # fmt: skip

    # -- what Register and Heartbeat report ----------------------------------------------------

    def running_refs(self) -> tuple[m.AttemptRef, ...]:
        """The attempts this worker holds: running, and prefetched ones waiting for a slot
        (the leader counts both as assigned here)."""
        held = sorted([*self.running.items(), *self.waiting.items()])
        return tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in held)

    def owned_refs(self) -> tuple[m.AttemptRef, ...]:
        """What Register reports: attempts still running and finished ones whose result the
        coordinator has not acknowledged. Both are ours; leaving out the finished ones would
        make a restarted coordinator think them lost and run them again."""
        finished = tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in sorted(self.outbox))
        return self.running_refs() + finished

    # -- time ----------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self.exit_code is not None:
            return
        if self._drain_until is not None and now >= self._drain_until:
            self._hand_back_all("drain timeout")
        if self._flush_until is not None and now >= self._flush_until:
            self._exit(0, f"drained; {len(self.outbox)} result(s) not acknowledged in time")
            return
        if self.session is None:
            if not self._is_dialing and self._dial_at is not None and now >= self._dial_at:
                self._is_dialing = True
                self._dial_at = None
                self._effects.append(Dial(self._target))
        elif not self.is_registered:
            if self._register_by is not None and now >= self._register_by:
                self._leave(f"no answer to register within {self.config.register_timeout_s:g}s",
                            self._next_in_list())
        elif self._beat_at is not None and now >= self._beat_at:
            self._send(m.Heartbeat(running=self.running_refs(), held=self.held))
            self._beat_at = now + self.heartbeat_interval_s

    def _send(self, msg: Any) -> None:
        self._effects.append(Send(msg))

    def _exit(self, code: int, reason: str) -> None:
        self.exit_code = code
        self._effects.append(Exit(code, reason))

    # -- sessions ------------------------------------------------------------------------------

    def _next_in_list(self, avoid: str | None = None) -> str:
        """The next coordinator of the list, but not `avoid` (one that just failed) when there
        is another: a redirect takes the core off its place in the list, so without this the
        leader it was sent to, once lost and failed again, could come up as "next" once more
        and cost a second dial timeout before any other coordinator is tried."""
        coordinators = self.config.coordinators
        self._index = (self._index + 1) % len(coordinators)
        if coordinators[self._index] == avoid and len(set(coordinators)) > 1:
            self._index = (self._index + 1) % len(coordinators)
        return coordinators[self._index]

    def _schedule_dial(self, address: str, now: float, *, failed: bool) -> None:
        """Dial `address` after a jittered backoff; a failure doubles the next one (capped),
        so coordinators that refuse us, or redirect us around in a circle, are not hammered."""
        self._target = address
        self._dial_at = now + self._rng.uniform(0.0, self._backoff_s)
        if failed:
            self._backoff_s = min(self.config.reconnect_cap_s, self._backoff_s * 2)

    def _on_session_started(self, event: SessionStarted, now: float) -> None:
        assert self.session is None, "a second session while one is open"
        cfg = self.config
        self._is_dialing = False
        self.session = event.session
        self.address = event.address
        self.is_registered = False
        self._register_by = now + cfg.register_timeout_s
        self._sessions += 1
        caps = cfg.capabilities
        self._send(m.Register(
            name=cfg.name, slots=cfg.slots, tags=cfg.tags, running=self.owned_refs(),
            draining=self.draining, incarnation=cfg.incarnation, allow_shell=caps.allow_shell,
            allow_call=caps.allow_call, epoch_seen=self.epoch_seen, prefetch=cfg.prefetch,
        ))  # fmt: skip

    def _on_dial_failed(self, event: DialFailed, now: float) -> None:
        self._is_dialing = False
        if event.auth_refused:
            log.error("worker=%s: %s", self.config.name, event.reason)
            self._exit(EXIT_AUTH, event.reason)
            return
        self._dial_failures += 1
        if self._dial_failures == 1 or self._dial_failures % DIAL_FAILURES_LOGGED_EVERY == 0:
            log.warning("worker=%s: %s (retrying)", self.config.name, event.reason)
        self._schedule_dial(self._next_in_list(avoid=event.address), now, failed=True)

    def _on_session_closed(self, reason: str, now: float, *, timed_out: bool = False) -> None:
        address = self.address or self._target
        was_registered = self.is_registered
        self._end_session()
        if was_registered and timed_out:
            log.warning("worker=%s: connection to %s lost: %s; trying another coordinator",
                        self.config.name, address, reason)
            # The network stopped answering (a partition, a pulled cable), not the process: a
            # dial to it now would most likely hang for its whole timeout. The others may
            # already have a new leader that needs us.
            self._schedule_dial(self._next_in_list(avoid=address), now, failed=False)
        elif was_registered:
            log.warning("worker=%s: connection to %s lost: %s", self.config.name, address,
                        reason)
            # It was the leader; it may just have restarted: try it first.
            self._schedule_dial(address, now, failed=False)
        else:
            log.warning("worker=%s: %s closed the session before registering us: %s",
                        self.config.name, address, reason)
            self._schedule_dial(self._next_in_list(), now, failed=True)

    def _end_session(self) -> None:
        self.session = None
        self.is_registered = False
        self._register_by = None
        self._beat_at = None

    def _leave(self, reason: str, address: str, *, failed: bool = True,
               at_once: bool = False) -> None:
        """Close the session ourselves and dial `address` next."""
        log.info("worker=%s leaves %s: %s", self.config.name, self.address, reason)
        self._effects.append(CloseSession(reason))
        self._end_session()
        self._hops += 1
        self._schedule_dial(address, self._now, failed=failed)
        if at_once:
            self._dial_at = self._now

    # -- messages ------------------------------------------------------------------------------

    def _on_message(self, msg: Any, now: float) -> None:
        if isinstance(msg, m.Assign | m.Kill | m.ResultAck):
            if not self.is_registered:
                self._leave(f"{msg.TYPE} before registered", self._next_in_list())
            elif self._accepts(msg, msg.epoch, getattr(msg, "job_id", None),
                               getattr(msg, "attempt", None)):
                if isinstance(msg, m.Assign):
                    self._on_assign(msg)
                elif isinstance(msg, m.Kill):
                    self._kill(msg.job_id, msg.attempt, msg.reason)
                else:
                    self._on_result_ack(msg)
        elif isinstance(msg, m.Registered):
            self._on_registered(msg, now)
        elif isinstance(msg, m.Redirect):
            self._on_redirect(msg)
        elif isinstance(msg, m.Refused):
            self._on_refused(msg)
        else:
            self._leave(f"unexpected {type(msg).__name__}", self._next_in_list())

    def _accepts(self, msg: Any, epoch: int, job_id: str | None, attempt: int | None) -> bool:
        """Fencing: an order from an epoch below the highest seen is refused, and the refusal
        is answered so its sender learns it was deposed; any other raises the highest seen."""
        if epoch >= self.epoch_seen:
            self.epoch_seen = epoch
            return True
        self._orders_refused += 1
        log.warning("worker=%s: refused %s job=%s from stale epoch %d < %d (sent by %s)",
                    self.config.name, msg.TYPE, job_id, epoch, self.epoch_seen, self.address)
        self._send(m.Fenced(epoch=self.epoch_seen, order=msg.TYPE, order_epoch=epoch,
                            job_id=job_id, attempt=attempt))
        return False

    def _on_registered(self, msg: m.Registered, now: float) -> None:
        if self.is_registered:
            self._leave("registered twice", self._next_in_list())
            return
        if not self._accepts(msg, msg.epoch, None, None):
            # A coordinator behind the cluster: its kill list is no order of a leader.
            self._leave(f"stale coordinator (epoch {msg.epoch} < {self.epoch_seen})",
                        self._next_in_list())
            return
        self.is_registered = True
        self._register_by = None
        self._dial_failures = 0
        self._hops = 0
        self._backoff_s = self.config.reconnect_base_s
        self.heartbeat_interval_s = max(msg.heartbeat_interval, HEARTBEAT_INTERVAL_MIN_S)
        self.limits = msg.limits
        for ref in msg.kill:
            self._kill(ref.job_id, ref.attempt, "stale attempt (coordinator moved on)")
        for key, result in list(self.outbox.items()):
            sends = self._sends.get(key, 0)
            fresh = self._deliverable(result, sends)
            self.outbox[key] = fresh
            self._sends[key] = 1 if fresh is not result else sends + 1
            self._send(fresh)
            self._results_sent += 1
        self._send(m.Heartbeat(running=self.running_refs(), held=self.held))
        self._beat_at = now + self.heartbeat_interval_s
        log.info("worker=%s registered with %s epoch=%d slots=%d running=%d resent=%d",
                 self.config.name, self.address, msg.epoch, self.config.slots,
                 len(self.running), len(self.outbox))

    def _on_redirect(self, msg: m.Redirect) -> None:
        """Follow a redirect to the leader it names, unless its epoch is older than one we
        have seen (the hint may name a deposed leader): then, as with no hint, the next
        coordinator of the list. A hint naming the coordinator we are on is no hint."""
        self._redirects += 1
        hint = msg.leader
        if hint is None or hint == self.address or msg.epoch < self.epoch_seen:
            log.info("worker=%s: %s does not lead and names no fresh leader (epoch %d); "
                     "trying the next coordinator", self.config.name, self.address, msg.epoch)
            self._leave("redirected", self._next_in_list())
            return
        log.info("worker=%s: %s redirects to the leader at %s (epoch %d)", self.config.name,
                 self.address, hint, msg.epoch)
        # A fresh hint is followed at once (a failover must not cost a backoff); a run of
        # redirects without registering backs off like failures (coordinators that disagree).
        self._leave(f"redirected to {hint}", hint, failed=self._hops > REDIRECT_HOPS_FREE,
                    at_once=self._hops <= REDIRECT_HOPS_FREE)

    def _on_refused(self, msg: m.Refused) -> None:
        if msg.code == "name":
            log.error("worker=%s: %s refused to register it: %s", self.config.name,
                      self.address, msg.reason)
            self._exit(EXIT_NAME_IN_USE, msg.reason)
            return
        log.warning("worker=%s: %s refused to register it (%s): %s", self.config.name,
                    self.address, msg.code, msg.reason)
        self._leave(f"refused ({msg.code})", self._next_in_list())

    # -- orders --------------------------------------------------------------------------------

    def _hand_back(self, job_id: str, attempt: int, reason: str) -> None:
        self._handed_back += 1
        self._send(m.HandBack(job_id=job_id, attempt=attempt, reason=reason))

    def _on_assign(self, msg: m.Assign) -> None:
        waiting = self.waiting.attempt(msg.job_id)
        if waiting is not None:
            if waiting >= msg.attempt:
                return  # a duplicate of what waits here already
            self.waiting.remove(msg.job_id)  # superseded before it started
        current = self.running.get(msg.job_id)
        if current is not None:
            if current >= msg.attempt:
                return  # a duplicate of what we run already
            # Superseded: its result would be stale anyway.
            del self.running[msg.job_id]
            self._abandon(msg.job_id, current, "superseded by a newer attempt")
        refusal = self.config.capabilities.refusal(msg.kind, msg.function)
        if refusal is not None:
            # The coordinator places jobs by our capabilities, so this is a second line of
            # defence: the same rule (core/capabilities.py), checked before anything runs.
            error = f"refused by worker {self.config.name}: it {refusal}"
            log.warning("job=%s: %s", msg.job_id, error)
            self._keep_result(m.Result(
                job_id=msg.job_id, attempt=msg.attempt, state="failed", exit_code=None,
                result=None, stdout="", stderr="", error=error, started_at=self._wall,
                finished_at=self._wall,
            ))  # fmt: skip
            return
        if self.draining:
            self._hand_back(msg.job_id, msg.attempt, "draining")
        elif len(self.running) + self.held < self.config.slots:
            self._start(msg)
        elif self.waiting.has_room():
            self.waiting.put(msg)
        else:
            self._hand_back(msg.job_id, msg.attempt, "no free slot")

    def _start(self, msg: m.Assign) -> None:
        self.running[msg.job_id] = msg.attempt
        self._effects.append(StartJob(msg))

    def _start_waiting(self) -> None:
        """Prefetched assignments take the slots that are free, oldest first."""
        while self.waiting and not self.draining \
                and len(self.running) + self.held < self.config.slots:
            assign = self.waiting.take_oldest()
            assert assign is not None
            self._start(assign)

    def _kill(self, job_id: str, attempt: int, reason: str) -> None:
        if self.waiting.remove(job_id, attempt) is not None:
            # Never started: it ends here, reported like an attempt killed at once.
            log.info("job=%s attempt=%d: removed before it started (%s)", job_id, attempt,
                     reason)
            self._keep_result(m.Result(
                job_id=job_id, attempt=attempt, state="cancelled", exit_code=None, result=None,
                stdout="", stderr="", error=f"killed before it started: {reason}",
                started_at=self._wall, finished_at=self._wall,
            ))  # fmt: skip
            return
        if self.running.get(job_id) == attempt:
            log.info("job=%s attempt=%d: kill (%s)", job_id, attempt, reason)
            self._effects.append(KillJob(job_id, attempt, reason))

    def _abandon(self, job_id: str, attempt: int, reason: str) -> None:
        self._abandoned.add((job_id, attempt))
        self._effects.append(KillJob(job_id, attempt, reason))

    def _on_result_ack(self, msg: m.ResultAck) -> None:
        key = (msg.job_id, msg.attempt)
        self.outbox.pop(key, None)
        self._sends.pop(key, None)
        if self._flush_until is not None and not self.outbox:
            self._exit(0, "drained")

    # -- jobs ----------------------------------------------------------------------------------

    def _on_job_finished(self, result: m.Result, now: float) -> None:
        key = (result.job_id, result.attempt)
        if key in self._abandoned:
            self._abandoned.discard(key)
            return
        if self.running.get(result.job_id) != result.attempt:
            return  # not an attempt we run: the shell reports each one once
        del self.running[result.job_id]
        self._keep_result(result)
        self._start_waiting()
        if self._drain_until is not None and not self.running:
            self._hand_back_all("drain timeout")

    def _keep_result(self, result: m.Result) -> None:
        result = self._deliverable(result)
        key = (result.job_id, result.attempt)
        self.outbox[key] = result
        if self.is_registered:
            self._sends[key] = 1
            self._send(result)
            self._results_sent += 1

    def _deliverable(self, result: m.Result, sends: int = 0) -> m.Result:
        """`result`, or a failed attempt in its place if the coordinator would refuse it (by
        the limits it gave us), or if it already went out on `result_sends_max` sessions that
        all died before taking it: sending it again unchanged would only repeat that."""
        if sends < self.config.result_sends_max and _surely_taken(result, self.limits):
            return result  # most results: no need to pack one just to measure it
        why = peer_refusal(result, self.limits, m.WORKER_TO_COORDINATOR)
        if why is None and sends < self.config.result_sends_max:
            return result
        if why is None:
            why = (f"the connection to the coordinator was lost {sends} times while it was "
                   "being delivered")
        error = f"result cannot be sent to the coordinator: {why}"
        log.warning("job=%s attempt=%d: %s; reporting a failed attempt instead",
                    result.job_id, result.attempt, error)
        failed = attrs.evolve(result, state="failed", result=None, error=error)
        if peer_refusal(failed, self.limits, m.WORKER_TO_COORDINATOR) is not None:
            failed = attrs.evolve(failed, stdout="", stderr="[tcpsched: output dropped with "
                                  "the result: too large to send]")
        return failed

    # -- drain ---------------------------------------------------------------------------------

    def _on_drain_requested(self, now: float) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("worker=%s draining: %d running, up to %gs", self.config.name,
                 len(self.running), self.config.drain_timeout_s)
        if self.is_registered:
            self._send(m.Draining())
        for assign in self.waiting.take_all():
            # Never started, so nothing to finish: back to the queue at once.
            if self.is_registered:
                self._hand_back(assign.job_id, assign.attempt, "draining")
            log.info("job=%s attempt=%d handed back before it started", assign.job_id,
                     assign.attempt)
        if self.running:
            self._drain_until = now + self.config.drain_timeout_s
        else:
            self._hand_back_all("drain timeout")

    def _hand_back_all(self, reason: str) -> None:
        """The drain's end: kill and hand back what still runs, then flush the outbox."""
        self._drain_until = None
        for job_id, attempt in sorted(self.running.items()):
            self._abandon(job_id, attempt, "worker draining")
            if self.is_registered:
                self._hand_back(job_id, attempt, reason)
            log.info("job=%s attempt=%d handed back", job_id, attempt)
        self.running.clear()
        log.info("worker=%s drained: %d result(s) to flush", self.config.name, len(self.outbox))
        if not self.outbox:
            self._exit(0, "drained")
        else:
            self._flush_until = self._now + self.config.result_flush_s


# A Result's field names and type tag packed (about 110 bytes), its scalars (9 bytes at most
# each) and string headers (5 bytes at most each), with room to spare.
_RESULT_PACKED_BYTES_BOUND = 256
_WIRE_INT = range(-(2**63), 2**64)


def _surely_taken(result: m.Result, limits: WireLimits) -> bool:
    """Whether `peer_refusal` would surely pass `result` without packing it: its value a
    scalar msgpack carries, and an upper bound on its packed size (a str of N characters is
    at most 4N bytes of UTF-8) within what the coordinator unpacks without looking inside."""
    value = result.result
    kind = type(value)
    if kind is str:
        value_bytes = 4 * len(value)
    elif kind is int:
        if value not in _WIRE_INT:
            return False
        value_bytes = 0
    elif value is None or kind is float or kind is bool:
        value_bytes = 0
    else:
        return False
    code = result.exit_code
    if code is not None and (type(code) is not int or code not in _WIRE_INT):
        return False
    text = (len(result.job_id) + len(result.state) + len(result.stdout) + len(result.stderr)
            + len(result.error or ""))
    bound = _RESULT_PACKED_BYTES_BOUND + value_bytes + 4 * text
    return bound <= min(limits.frame_bytes_max, limits.array_items_max, limits.map_items_max)

