"""The worker core (`core/workerproto.py`) driven without I/O: one test per rule of the worker's
side of the protocol, the rule quoted in the docstring."""

from __future__ import annotations

import random
from typing import Any

from tcpsched.core import messages as m
from tcpsched.core import workerproto as wp
from tcpsched.core.capabilities import Capabilities


class Harness:
    """One worker core, its clock, and what it asked for."""

    def __init__(self, coordinators: tuple[str, ...] = ("c1",), slots: int = 2,
                 **config: Any) -> None:
        self.now = 100.0
        self.proto = wp.WorkerProtocol(
            wp.WorkerConfig(name="w1", slots=slots, coordinators=coordinators,
                            incarnation="inc-1", drain_timeout_s=5.0, **config),
            random.Random(1), self.now)
        self.effects: list[Any] = []
        self._sessions = 0

    def step(self, event: Any) -> list[Any]:
        effects = self.proto.step(event, self.now)
        self.effects.extend(effects)
        return effects

    def advance(self, seconds: float) -> list[Any]:
        """Let `seconds` pass, firing the core's timer at each deadline on the way."""
        end = self.now + seconds
        effects = []
        while (deadline := self.proto.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            effects += self.step(wp.Tick())
        self.now = end
        return effects

    def next_dial(self) -> str:
        """Wait for the core's next dial; the address it dials."""
        for _ in range(100):
            dials = [e for e in self.advance(0.05) if isinstance(e, wp.Dial)]
            if dials:
                return dials[0].address
        raise AssertionError("the core never dialed")

    def connect(self) -> tuple[int, m.Register]:
        """Dial where the core says; the session and the Register it sends."""
        address = self.next_dial()
        self._sessions += 1
        effects = self.step(wp.SessionStarted(self._sessions, address))
        (register,) = sent(effects, m.Register)
        return self._sessions, register

    def register(self, epoch: int = 1, interval: float = 0.5,
                 kill: tuple[m.AttemptRef, ...] = ()) -> tuple[int, list[Any]]:
        session, _ = self.connect()
        return session, self.receive(session, m.Registered(heartbeat_interval=interval,
                                                           epoch=epoch, kill=kill))

    def receive(self, session: int, msg: Any) -> list[Any]:
        return self.step(wp.Received(session, msg))

    def finish(self, job_id: str, attempt: int, state: str = "succeeded") -> list[Any]:
        return self.step(wp.JobFinished(result(job_id, attempt, state)))


def sent(effects: list[Any], kind: type) -> list[Any]:
    return [e.msg for e in effects if isinstance(e, wp.Send) and isinstance(e.msg, kind)]


def assign(job_id: str, attempt: int = 1, epoch: int = 1, kind: str = "shell") -> m.Assign:
    return m.Assign(job_id=job_id, attempt=attempt, epoch=epoch, kind=kind,
                    command="true" if kind == "shell" else None,
                    function=None if kind == "shell" else "mod:fn", args=(), kwargs={},
                    timeout=None)


def result(job_id: str, attempt: int, state: str = "succeeded") -> m.Result:
    return m.Result(job_id=job_id, attempt=attempt, state=state, exit_code=0, result=None,
                    stdout="", stderr="", error=None, started_at=1.0, finished_at=2.0)


def ref(job_id: str, attempt: int = 1) -> m.AttemptRef:
    return m.AttemptRef(job_id=job_id, attempt=attempt)


def test_registers_with_running_and_unacknowledged_attempts() -> None:
    """"Register reports attempts still running and finished ones whose result the coordinator
    has not acknowledged", with the incarnation, the slots and what the worker runs."""
    h = Harness(capabilities=Capabilities(allow_shell=False, allow_call=("mod",)))
    session, _ = h.register()
    h.receive(session, assign("j1", kind="call"))
    h.receive(session, assign("j2", kind="call"))
    h.finish("j2", 1)
    h.step(wp.SessionClosed(session, "reset"))
    _, register = h.connect()
    assert register.running == (ref("j1"), ref("j2"))
    assert (register.name, register.slots, register.incarnation) == ("w1", 2, "inc-1")
    assert (register.allow_shell, register.allow_call) == (False, ("mod",))
    assert register.draining is False


def test_results_kept_until_acked_and_resent_after_reregistering() -> None:
    """"A finished attempt's result stays in the outbox until a ResultAck takes it out; every
    new registration sends the outbox again.\""""
    h = Harness()
    session, _ = h.register()
    h.receive(session, assign("j1"))
    assert sent(h.finish("j1", 1), m.Result) == [result("j1", 1)]
    h.step(wp.SessionClosed(session, "reset"))
    session, effects = h.register()
    assert sent(effects, m.Result) == [result("j1", 1)]
    h.receive(session, m.ResultAck(job_id="j1", attempt=1, epoch=1))
    assert h.proto.outbox == {}
    h.step(wp.SessionClosed(session, "reset"))
    _, effects = h.register()
    assert sent(effects, m.Result) == []


def test_an_order_from_a_lower_epoch_is_refused_and_answered() -> None:
    """"An order from an epoch below the highest seen is refused, and the refusal is answered
    so its sender learns it was deposed.\""""
    h = Harness()
    session, _ = h.register(epoch=3)
    h.receive(session, assign("j1", epoch=3))
    h.finish("j1", 1)
    effects = h.receive(session, assign("j2", epoch=2))
    assert not [e for e in effects if isinstance(e, wp.StartJob)]
    assert sent(effects, m.Fenced) == [m.Fenced(epoch=3, order="assign", order_epoch=2,
                                                job_id="j2", attempt=1)]
    h.receive(session, assign("j3", epoch=3))
    effects = h.receive(session, m.Kill(job_id="j3", attempt=1, reason="x", epoch=1))
    assert not [e for e in effects if isinstance(e, wp.KillJob)]
    assert sent(effects, m.Fenced)[0].order == "kill"
    effects = h.receive(session, m.ResultAck(job_id="j1", attempt=1, epoch=2))
    assert sent(effects, m.Fenced)[0].order == "result_ack"
    assert ("j1", 1) in h.proto.outbox  # a deposed leader's ack takes nothing out
    assert h.proto.statistics().orders_refused == 3


def test_the_highest_epoch_is_kept_across_sessions() -> None:
    """"The core keeps the highest epoch it has seen in any accepted order across sessions",
    says it in Register, and refuses a Registered from below it for the next coordinator."""
    h = Harness(coordinators=("c1", "c2"))
    session, _ = h.register(epoch=2)
    h.receive(session, assign("j1", epoch=3))
    h.step(wp.SessionClosed(session, "reset"))
    session, register = h.connect()
    assert register.epoch_seen == 3
    effects = h.receive(session, m.Registered(heartbeat_interval=0.5, epoch=1))
    assert sent(effects, m.Fenced) == [m.Fenced(epoch=3, order="registered", order_epoch=1)]
    assert [e for e in effects if isinstance(e, wp.CloseSession)]
    assert not h.proto.is_registered
    assert h.next_dial() == "c2"


def test_a_redirect_is_followed() -> None:
    """"A coordinator that does not lead answers Redirect: the core dials the leader it names,
    or the next coordinator of its list"; a hint older than the epoch seen is no hint."""
    h = Harness(coordinators=("c1", "c2", "c3"))
    session, _ = h.connect()
    effects = h.receive(session, m.Redirect(leader="c3", epoch=4))
    assert [e for e in effects if isinstance(e, wp.CloseSession)]
    # A fresh hint is dialled at once, in the same step: a failover costs no backoff.
    assert [e.address for e in effects if isinstance(e, wp.Dial)] == ["c3"]
    h.step(wp.SessionStarted(2, "c3"))
    h.receive(2, m.Registered(heartbeat_interval=0.5, epoch=5))
    h.step(wp.SessionClosed(2, "leader died"))
    assert h.next_dial() == "c3"  # the lost leader first: it may just have restarted
    h.step(wp.DialFailed("c3", "connection refused"))
    assert h.next_dial() == "c2"
    h.step(wp.SessionStarted(3, "c2"))
    h.receive(3, m.Redirect(leader="c1", epoch=4))  # older than epoch 5: a stale hint
    assert h.next_dial() == "c3"
    h.step(wp.SessionStarted(4, "c3"))
    h.receive(4, m.Redirect(leader=None, epoch=6))
    assert h.next_dial() == "c1"
    assert h.proto.statistics().redirects == 3


def test_a_drain_hands_back_what_still_runs_and_exits_0() -> None:
    """"DrainRequested sends Draining, gives running attempts drain_timeout_s to finish, then
    kills and hands back the rest, waits for the outbox to be acknowledged, and exits 0."\""""
    h = Harness()
    session, _ = h.register()
    h.receive(session, assign("j1"))
    h.receive(session, assign("j2"))
    effects = h.step(wp.DrainRequested())
    assert sent(effects, m.Draining) == [m.Draining()]
    effects = h.receive(session, assign("j3"))
    assert sent(effects, m.HandBack) == [m.HandBack(job_id="j3", attempt=1, reason="draining")]
    h.finish("j1", 1)
    effects = h.advance(5.0)
    assert [(e.job_id, e.attempt) for e in effects if isinstance(e, wp.KillJob)] == [("j2", 1)]
    assert sent(effects, m.HandBack) == [m.HandBack(job_id="j2", attempt=1,
                                                    reason="drain timeout")]
    assert not [e for e in effects if isinstance(e, wp.Exit)]  # j1's result is not taken yet
    assert sent(h.finish("j2", 1, "cancelled"), m.Result) == []  # handed back: not ours
    effects = h.receive(session, m.ResultAck(job_id="j1", attempt=1, epoch=1))
    assert [e for e in effects if isinstance(e, wp.Exit)] == [wp.Exit(0, "drained")]
    assert h.proto.next_deadline() is None


def test_an_assign_without_a_free_slot_is_handed_back() -> None:
    """"An Assign beyond the free slots is handed back at once."\""""
    h = Harness(slots=1)
    session, _ = h.register()
    h.receive(session, assign("j1"))
    effects = h.receive(session, assign("j2"))
    assert sent(effects, m.HandBack) == [m.HandBack(job_id="j2", attempt=1,
                                                    reason="no free slot")]
    assert h.proto.running == {"j1": 1}
    h.finish("j1", 1)
    assert [e for e in h.receive(session, assign("j2", 2)) if isinstance(e, wp.StartJob)]


def test_heartbeats_at_the_interval_the_coordinator_asks() -> None:
    """"Once registered, the core beats at the interval the coordinator asked for", listing
    the attempts it runs."""
    h = Harness()
    session, effects = h.register(interval=0.25)
    assert sent(effects, m.Heartbeat) == [m.Heartbeat()]
    h.receive(session, assign("j1"))
    beats = []
    for _ in range(8):
        beats += [(round(h.now, 3), msg) for msg in sent(h.advance(0.125), m.Heartbeat)]
    start = beats[0][0]
    assert [t - start for t, _ in beats] == [0.0, 0.25, 0.5, 0.75]
    assert all(msg.running == (ref("j1"),) for _, msg in beats)


def test_a_duplicate_name_refusal_exits_2() -> None:
    """"A second process under the name of a live worker is refused (Refused(code='name')):
    the core exits 2"; nothing it is told after that matters."""
    h = Harness()
    session, _ = h.connect()
    reason = "worker name 'w1' is in use by a live worker"
    effects = h.receive(session, m.Refused(code="name", reason=reason))
    assert effects == [wp.Exit(wp.EXIT_NAME_IN_USE, reason)]
    assert h.proto.step(wp.Tick(), h.now + 10) == []
    assert h.proto.statistics().state == "exited"


def test_an_epoch_refusal_moves_to_the_next_coordinator() -> None:
    """A coordinator that refuses us for another reason (a stale epoch) is left for the next
    one; only a name refusal ends the process."""
    h = Harness(coordinators=("c1", "c2"))
    session, _ = h.connect()
    effects = h.receive(session, m.Refused(code="epoch", reason="coordinator is stale"))
    assert [e for e in effects if isinstance(e, wp.CloseSession)]
    assert h.next_dial() == "c2"


def test_a_capability_refusal_is_a_failed_attempt_without_a_slot() -> None:
    """"The coordinator places jobs by our capabilities, so this is a second line of defence":
    a job the worker does not run fails at once, saying why, and never starts."""
    h = Harness(capabilities=Capabilities(allow_shell=False))
    session, _ = h.register()
    effects = h.receive(session, assign("j1"))
    assert not [e for e in effects if isinstance(e, wp.StartJob)]
    (failed,) = sent(effects, m.Result)
    assert failed.state == "failed" and "--no-shell" in str(failed.error)
    assert h.proto.running == {}


def test_dial_failures_back_off_and_an_auth_refusal_exits_4() -> None:
    """A failed dial moves on to the next coordinator after a jittered backoff that doubles up
    to the cap; a refused token ends the process with exit code 4."""
    h = Harness(coordinators=("c1", "c2"), reconnect_base_s=0.1, reconnect_cap_s=0.4)
    assert h.next_dial() == "c1"
    waits = []
    for expected in ("c2", "c1", "c2", "c1"):
        h.step(wp.DialFailed(h.proto._target, "refused"))
        deadline = h.proto.next_deadline()
        assert deadline is not None
        waits.append(deadline - h.now)
        assert h.next_dial() == expected
    assert all(0 <= w <= 0.4 for w in waits)
    effects = h.step(wp.DialFailed("c1", "wrong token", auth_refused=True))
    assert effects == [wp.Exit(wp.EXIT_AUTH, "wrong token")]


def test_a_coordinator_that_does_not_answer_register_is_left() -> None:
    """A session that gets no Registered within register_timeout_s is closed, and the next
    coordinator dialed."""
    h = Harness(coordinators=("c1", "c2"), register_timeout_s=3.0)
    h.connect()
    effects = h.advance(3.0)
    assert [e for e in effects if isinstance(e, wp.CloseSession)]
    assert h.next_dial() == "c2"


def test_a_newer_attempt_supersedes_the_running_one() -> None:
    """An Assign of a newer attempt of a job this worker runs kills the old attempt, whose
    result is then dropped (it would be stale), and starts the new one."""
    h = Harness()
    session, _ = h.register()
    h.receive(session, assign("j1", 1))
    effects = h.receive(session, assign("j1", 2))
    assert [(e.job_id, e.attempt) for e in effects if isinstance(e, wp.KillJob)] == [("j1", 1)]
    assert [e.assign.attempt for e in effects if isinstance(e, wp.StartJob)] == [2]
    assert sent(h.finish("j1", 1, "cancelled"), m.Result) == []
    assert sent(h.finish("j1", 2), m.Result) == [result("j1", 2)]


def test_a_session_that_timed_out_moves_on_to_the_next_coordinator() -> None:
    """"A registered session that is lost tries the same coordinator first, unless it timed
    out (the network stopped acknowledging our beats: a partition)": a leader behind a cut is
    not dialled again first, which would cost a whole dial timeout while the majority's new
    leader has no workers."""
    h = Harness(coordinators=("c1", "c2", "c3"))
    session, _ = h.connect()
    effects = h.receive(session, m.Redirect(leader="c3", epoch=1))
    assert [e.address for e in effects if isinstance(e, wp.Dial)] == ["c3"]  # at once
    h.step(wp.SessionStarted(2, "c3"))
    h.receive(2, m.Registered(heartbeat_interval=0.5, epoch=1))
    h.step(wp.SessionClosed(2, "[Errno 110] Connection timed out", timed_out=True))
    assert h.next_dial() == "c2"


def test_a_coordinator_that_failed_to_dial_is_not_the_next_one_tried() -> None:
    """After a redirect took the core off its place in the list, the lost leader failing its
    dial is followed by another coordinator, not by the same one again."""
    h = Harness(coordinators=("c1", "c2", "c3"))
    h.step(wp.DialFailed(h.next_dial(), "connection refused"))  # c1
    session, _ = h.connect()  # c2
    effects = h.receive(session, m.Redirect(leader="c3", epoch=1))
    assert [e.address for e in effects if isinstance(e, wp.Dial)] == ["c3"]  # at once
    h.step(wp.SessionStarted(2, "c3"))
    h.receive(2, m.Registered(heartbeat_interval=0.5, epoch=1))
    h.step(wp.SessionClosed(2, "closed by the coordinator"))
    assert h.next_dial() == "c3"  # closed, not timed out: it may just have restarted
    h.step(wp.DialFailed("c3", "timed out"))
    assert h.next_dial() == "c1"
