"""What `--allow-call` and `--no-shell` let a worker run, by the one shared rule, and where
the scheduler may therefore place a job (no sockets, no clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tcpsched.core import messages as m
from tcpsched.core.capabilities import Capabilities, call_grant, parse_allow_call
from tcpsched.core.events import Close, Closed, Connected, Received, Send
from tcpsched.core.jobs import JobSpec
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.runtime.executor import resolve_callable

TASKS = "tests.integration.allowed_tasks"
CLIENT = 1000


@pytest.mark.parametrize(("entry", "normal"), [
    ("math", "math"), ("math:", "math"), (" pkg.tasks ", "pkg.tasks"),
    ("builtins:str.split", "builtins:str.split"), ("_operator", "_operator"),
])
def test_allow_call_entries_have_one_normal_form(entry: str, normal: str) -> None:
    """`MODULE:` means `MODULE`; exact entries keep their dotted name."""
    assert parse_allow_call(entry) == normal


@pytest.mark.parametrize("entry", ["", ":f", "mod:__class__", "__main__", "a b", "mod:x..y",
                                   "mod:f()", "1mod"])
def test_malformed_allow_call_entries_are_refused(entry: str) -> None:
    """An entry that is not dotted identifiers (or reaches a dunder) is a usage error."""
    with pytest.raises(ValueError, match="--allow-call"):
        parse_allow_call(entry)


@pytest.mark.parametrize(("function", "entries", "grant"), [
    ("mytasks:double", ("mytasks",), "mytasks"),
    ("mytasks.sub:double", ("mytasks",), "mytasks"),
    ("mytasks:os.system", ("mytasks",), None),  # a dotted path may lead out of the module
    ("mytasks:_helper", ("mytasks",), None),
    ("mytasks:__builtins__", ("mytasks",), None),
    ("mytasks._private:f", ("mytasks",), None),
    ("mytasksx:double", ("mytasks",), None),  # a module name, not a string prefix
    ("builtins:str.split", ("builtins:str.split",), ""),  # exactly the named callable
    ("builtins:str.join", ("builtins:str.split",), None),
    ("os:system", (), ""),  # no entries: everything
])
def test_call_grant(function: str, entries: tuple[str, ...], grant: str | None) -> None:
    """Which entry allows a callable: its module for a module entry, "" for an exact one."""
    assert call_grant(function, entries) == grant


def test_resolving_under_a_module_entry_stays_in_the_module() -> None:
    """Under `--allow-call MODULE` a name imported into MODULE from elsewhere is refused; one
    defined there resolves; without an entry dotted paths resolve as before."""
    assert resolve_callable(f"{TASKS}:double", TASKS)(4) == 8
    with pytest.raises(ImportError, match="defined in posix"):
        resolve_callable(f"{TASKS}:system", TASKS)
    with pytest.raises(ImportError, match="top-level public name"):
        resolve_callable(f"{TASKS}:os.system", TASKS)
    with pytest.raises(ImportError, match="not callable"):
        resolve_callable(f"{TASKS}:os", TASKS)
    assert resolve_callable(f"{TASKS}:os.getpid") is not None


def test_capabilities_say_why_they_refuse() -> None:
    """A refusal names the flag behind it."""
    caps = Capabilities(allow_shell=False, allow_call=("math",))
    assert caps.refusal("shell", None) == "does not run shell jobs (--no-shell)"
    assert caps.refusal("call", "math:sqrt") is None
    assert "does not allow os:system (--allow-call math" in str(caps.refusal("call", "os:system"))
    assert Capabilities().is_unrestricted and not caps.is_unrestricted


class Cluster:
    """A scheduler fed worker registrations with capabilities and incarnations."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sched = Scheduler(SchedulerConfig(), random.Random(3), self.now)
        self.sent: list[tuple[int, Any]] = []
        self.closed: list[int] = []
        self._conn = 0
        self._req = 0
        self.step(Connected(CLIENT, "client", "test"))

    def step(self, event: Any) -> None:
        for effect in self.sched.step(event, self.now):
            if isinstance(effect, Send):
                self.sent.append((effect.conn, effect.msg))
            elif isinstance(effect, Close):
                self.closed.append(effect.conn)

    def register(self, name: str, incarnation: str = "", slots: int = 1, **caps: Any) -> int:
        self._conn += 1
        self.step(Connected(self._conn, "worker", name))
        self.step(Received(self._conn, m.Register(name=name, slots=slots,
                                                  incarnation=incarnation, **caps)))
        return self._conn

    def submit(self, spec: JobSpec) -> str:
        self._req += 1
        self.step(Received(CLIENT, m.Submit(req_id=self._req, jobs=(spec,))))
        return str(self.replies()[-1].value[0])

    def replies(self) -> list[Any]:
        return [msg for c, msg in self.sent if c == CLIENT and isinstance(msg, m.Reply)]

    def status(self, job_id: str) -> dict[str, Any]:
        self._req += 1
        self.step(Received(CLIENT, m.Status(req_id=self._req, job_ids=(job_id,))))
        return dict(self.replies()[-1].value[0])

    def to(self, conn: int, kind: type) -> list[Any]:
        return [msg for c, msg in self.sent if c == conn and isinstance(msg, kind)]


SHELL = JobSpec(kind="shell", command="true")
SQRT = JobSpec(kind="call", function="math:sqrt", args=(4,))


def test_a_second_process_under_a_live_name_is_refused_and_a_reconnect_is_not() -> None:
    """Same name, same incarnation: the old connection is replaced. Same name, another
    incarnation, holder alive: refused with a reason, the holder untouched. Once the holder's
    connection is gone, another process may take the name (a restart)."""
    c = Cluster()
    first = c.register("w", incarnation="aaaa")
    again = c.register("w", incarnation="aaaa")
    assert c.closed == [first] and c.to(again, m.Registered)
    other = c.register("w", incarnation="bbbb")
    (refused,) = c.to(other, m.Refused)
    assert refused.code == "name" and "in use by a live worker" in refused.reason
    assert c.closed == [first, other]
    assert c.sched.workers["w"].conn == again and c.sched.workers["w"].incarnation == "aaaa"
    c.step(Closed(again, "gone"))
    restarted = c.register("w", incarnation="cccc")
    assert c.to(restarted, m.Registered) and c.sched.workers["w"].conn == restarted


def test_a_job_goes_only_to_a_worker_that_runs_it() -> None:
    """A shell job skips a --no-shell worker; a call job behind it may use that worker."""
    c = Cluster()
    strict = c.register("a-strict", slots=2, allow_shell=False, allow_call=("math",))
    shell_job = c.submit(SHELL)
    call_job = c.submit(SQRT)
    assert [a.job_id for a in c.to(strict, m.Assign)] == [call_job]
    assert c.status(shell_job)["reason"] is not None  # nobody live runs shell jobs
    normal = c.register("b-normal")
    assert [a.job_id for a in c.to(normal, m.Assign)] == [shell_job]
    assert c.status(shell_job)["reason"] is None


def test_a_job_waits_without_a_reason_while_its_only_capable_worker_is_busy() -> None:
    """Busy is not unable: the job keeps its place, says nothing, and runs when a slot frees."""
    c = Cluster()
    normal = c.register("b-normal")
    busy = c.submit(SHELL)
    waiting = c.submit(SHELL)
    strict = c.register("a-strict", allow_shell=False)
    assert [a.job_id for a in c.to(normal, m.Assign)] == [busy]
    assert c.to(strict, m.Assign) == [] and c.status(waiting)["reason"] is None
    c.step(Received(normal, m.Result(job_id=busy, attempt=1, state="succeeded", exit_code=0,
                                     result=None, stdout="", stderr="", error=None,
                                     started_at=c.now, finished_at=c.now)))
    assert [a.job_id for a in c.to(normal, m.Assign)] == [busy, waiting]


def test_a_parked_job_names_every_refusing_worker_and_can_be_cancelled() -> None:
    """The reason lists the workers and their flags; cancelling a parked job ends it."""
    c = Cluster()
    c.register("a", allow_call=("json",))
    c.register("b", allow_shell=False, allow_call=("math",))
    job = c.submit(JobSpec(kind="call", function="os:system", args=("true",)))
    reason = c.status(job)["reason"]
    assert reason.startswith("no live worker can run it: a does not allow os:system")
    assert "b does not allow os:system" in reason
    c._req += 1
    c.step(Received(CLIENT, m.Cancel(req_id=c._req, job_id=job)))
    assert c.status(job)["state"] == "cancelled" and job not in c.sched.parked
