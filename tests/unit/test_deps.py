"""Dependencies, groups and retry in the scheduler, driven with events against a simple model."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.events import Journal, Received, Tick
from tcpsched.core.groups import group_summary
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.state import JobTable
from tests.unit.test_scheduler import CLIENT, Harness


class DagHarness(Harness):
    """A Harness that keeps every journal record (to replay them as a follower would)."""

    def __init__(self, **config: Any) -> None:
        self.journal: list[dict[str, Any]] = []
        super().__init__(**config)

    def step(self, event: Any) -> list[Any]:
        effects = super().step(event)
        self.journal.extend(e.record for e in effects if isinstance(e, Journal))
        return effects

    def request(self, msg_for: Any) -> Any:
        self._req += 1
        self.step(Received(CLIENT, msg_for(self._req)))
        (reply,) = [msg for c, msg in self.sent if c == CLIENT
                    and isinstance(msg, m.Reply | m.ErrorReply) and msg.req_id == self._req]
        return reply

    def run_assigned(self, outcomes: dict[str, str], order: list[str]) -> None:
        """Report a result for every assignment not yet answered, until none is left."""
        answered: set[tuple[str, int]] = set()
        while True:
            todo = [a for a in self.assigns("w") if (a.job_id, a.attempt) not in answered]
            if not todo:
                return
            for a in todo:
                answered.add((a.job_id, a.attempt))
                order.append(a.job_id)
                self.result("w", a.job_id, a.attempt, outcomes.get(a.job_id, "succeeded"),
                            exit_code=0 if outcomes.get(a.job_id, "succeeded") == "succeeded"
                            else 1)


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[list[int]], list[bool]]:
    """Parents of job i are a subset of the jobs before it (so no cycle); which jobs fail."""
    n = draw(st.integers(1, 9))
    parents = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
               for i in range(n)]
    fails = [draw(st.booleans()) if draw(st.integers(0, 3)) == 0 else False for _ in range(n)]
    return parents, fails


def model(parents: list[list[int]], fails: list[bool]) -> list[str]:
    """Expected end state of each job: it runs iff all its parents succeeded."""
    out: list[str] = []
    for i, ps in enumerate(parents):
        if all(out[p] == "succeeded" for p in ps):
            out.append("failed" if fails[i] else "succeeded")
        else:
            out.append("cancelled")
    return out


def _submit_dag(h: DagHarness, parents: list[list[int]]) -> list[str]:
    ids: list[str] = []
    for ps in parents:
        ids.append(h.submit("true", after=tuple(ids[p] for p in ps)))
    return ids


@settings(max_examples=60, deadline=None)
@given(dag=dags())
def test_dag_ends_as_the_model_says_and_runs_parents_first(dag: Any) -> None:
    """Random DAGs (chains, diamonds, failures): each job ends as the model says, a job runs
    only after its parents succeeded, and a cancelled child names a parent that did not."""
    parents, fails = dag
    h = DagHarness()
    h.connect("w", slots=4)
    ids = _submit_dag(h, parents)
    outcomes = {ids[i]: "failed" for i, f in enumerate(fails) if f}
    order: list[str] = []
    h.run_assigned(outcomes, order)
    expected = model(parents, fails)
    assert [h.job(j)["state"] for j in ids] == expected
    position = {job_id: k for k, job_id in enumerate(order)}
    for i, ps in enumerate(parents):
        if expected[i] != "cancelled":
            assert all(position[ids[p]] < position[ids[i]] for p in ps)
        else:
            error = h.sched.table.jobs[ids[i]].error or ""
            named = error.split()[1]
            assert named in {ids[p] for p in ps}
            assert h.sched.table.jobs[named].state in (JobState.FAILED, JobState.CANCELLED)
    assert not h.sched.deps.waiting and not h.sched.deps.children


@settings(max_examples=40, deadline=None)
@given(dag=dags(), cut=st.integers(0, 20))
def test_a_new_leader_rebuilds_the_waiting_index_from_replayed_records(dag: Any, cut: int
                                                                        ) -> None:
    """A follower's table, replayed from the journal at any point, gives a new leader the
    same waiting index, and the DAG still ends as the model says under it."""
    parents, fails = dag
    h = DagHarness()
    h.connect("w", slots=1)
    ids = _submit_dag(h, parents)
    outcomes = {ids[i]: "failed" for i, f in enumerate(fails) if f}
    answered = 0
    # Answer up to `cut` assignments, one at a time (each may release or doom children).
    while answered < cut:
        open_ = [a for a in h.assigns("w") if h.job(a.job_id)["state"] == "running"]
        if not open_:
            break
        a = open_[0]
        state = outcomes.get(a.job_id, "succeeded")
        h.result("w", a.job_id, a.attempt, state, exit_code=0 if state == "succeeded" else 1)
        answered += 1
    table = JobTable()
    for record in h.journal:
        table.apply(record)
    new = Scheduler(SchedulerConfig(), random.Random(3), h.now + 1, table=table)
    assert new.deps.waiting == h.sched.deps.waiting
    assert {p: sorted(c) for p, c in new.deps.children.items()} == \
        {p: sorted(c) for p, c in h.sched.deps.children.items()}
    queued = {job_id for job_id in new.queue._live}
    assert not queued & set(new.deps.waiting)


def test_unknown_parent_is_refused_and_nothing_is_recorded() -> None:
    """A parent that does not exist is a bad_request naming it; no job is recorded."""
    h = DagHarness()
    reply = h.request(lambda r: m.Submit(req_id=r, jobs=(
        JobSpec(kind="shell", command="true", after=("nosuchjob",)),)))
    assert isinstance(reply, m.ErrorReply) and reply.kind == "bad_request"
    assert "unknown parent" in reply.message and "nosuchjob" in reply.message
    assert not h.sched.table.jobs


def test_parent_by_key_and_prefix_is_stored_as_its_id_and_the_child_says_what_it_waits_on(
        ) -> None:
    """`after` accepts a key or an id prefix; the record holds full ids; status's reason
    names the parents still to succeed."""
    h = DagHarness()
    a = h.submit("true", key="build")
    b = h.submit("true")
    child = h.submit("true", after=("build", b[:6]))
    job = h.sched.table.jobs[child]
    assert job.spec.after == (a, b)
    reply = h.request(lambda r: m.Status(req_id=r, job_ids=(child,)))
    assert reply.value[0]["reason"] == f"waiting on parents: {', '.join(sorted((a, b)))}"
    assert reply.value[0]["state"] == "pending"


def test_failure_cancels_the_subtree_transitively_in_one_step() -> None:
    """A failed parent cancels its children and theirs, each naming its own parent."""
    h = DagHarness()
    h.connect("w", slots=1)
    root = h.submit("false")
    mid = h.submit("true", after=(root,))
    leaf = h.submit("true", after=(mid,))
    (a,) = h.assigns("w")
    h.result("w", root, a.attempt, "failed", exit_code=1)
    assert h.sched.table.jobs[mid].error == f"parent {root} failed"
    assert h.sched.table.jobs[leaf].error == f"parent {mid} cancelled"
    assert h.job(leaf)["state"] == "cancelled"


def test_poison_job_fails_with_reason_and_retry_revives_it_keeping_its_attempts() -> None:
    """A job that lost 3 workers is failed "lost 3 workers"; retry requeues it under the same
    id, the attempt count goes on, and it can succeed."""
    h = DagHarness()
    job_id = h.submit("sleep 1")
    for n in range(3):
        h.connect(f"w{n}")
        h.kill(f"w{n}")
        h.advance(3.0)
    assert h.job(job_id)["state"] == "failed"
    reply = h.request(lambda r: m.Status(req_id=r, job_ids=(job_id,)))
    assert reply.value[0]["reason"] == "lost 3 workers"
    reply = h.request(lambda r: m.Retry(req_id=r, job_ids=(job_id[:6],)))
    assert isinstance(reply, m.Reply) and reply.value[0]["id"] == job_id
    h.connect("w")
    (a,) = h.assigns("w")
    assert a.attempt == 4
    h.result("w", job_id, a.attempt)
    assert h.job(job_id)["state"] == "succeeded"


def test_retry_refuses_a_succeeded_job_and_a_child_whose_parent_is_still_failed() -> None:
    """Only failed or cancelled jobs are retried, and a child only once its parent is no
    longer failed; retry --group brings parents back before their children."""
    h = DagHarness()
    h.connect("w", slots=2)
    group = "g1"
    root = h.submit("false", group=group)
    child = h.submit("true", after=(root,), group=group)
    (a,) = h.assigns("w")
    h.result("w", root, a.attempt, "failed", exit_code=1)
    reply = h.request(lambda r: m.Retry(req_id=r, job_ids=(child,)))
    assert isinstance(reply, m.ErrorReply) and "retry the parent first" in reply.message
    reply = h.request(lambda r: m.Retry(req_id=r, group=group))
    assert [r["id"] for r in reply.value] == [root, child]
    assert h.sched.deps.reason(child) == f"waiting on parents: {root}"
    (_, again) = h.assigns("w")
    h.result("w", root, again.attempt)
    (_, _, last) = h.assigns("w")
    assert last.job_id == child
    h.result("w", child, last.attempt)
    reply = h.request(lambda r: m.Retry(req_id=r, job_ids=(child,)))
    assert isinstance(reply, m.ErrorReply) and "succeeded" in reply.message


def test_group_requests_status_ids_list_and_cancel() -> None:
    """A group's ids come back in submission order; cancel ends every unfinished job."""
    h = DagHarness()
    ids = [h.submit("true", group="batch") for _ in range(5)]
    h.submit("true")  # not in the group
    reply = h.request(lambda r: m.GroupRequest(req_id=r, group="batch", action="ids"))
    assert reply.value == ids
    reply = h.request(lambda r: m.GroupRequest(req_id=r, group="batch", action="status"))
    assert reply.value["counts"]["pending"] == 5 and reply.value["progress"] == 0.0
    reply = h.request(lambda r: m.GroupRequest(req_id=r, group="batch", action="cancel"))
    assert sorted(r["id"] for r in reply.value) == sorted(ids)
    reply = h.request(lambda r: m.GroupRequest(req_id=r, group="batch", action="list",
                                               limit=2))
    assert [r["id"] for r in reply.value] == ids[::-1][:2]
    reply = h.request(lambda r: m.GroupRequest(req_id=r, group="nope", action="status"))
    assert isinstance(reply, m.ErrorReply) and reply.kind == "not_found"


def _job(i: int, state: JobState, started: float | None, finished: float | None) -> JobRecord:
    return JobRecord(id=f"j{i}", seq=i, spec=JobSpec(kind="shell", command="true"),
                     state=state, started_at=started, finished_at=finished)


def test_group_summary_math() -> None:
    """Progress is the terminal share, throughput finished jobs per second since the first
    start (to now while jobs remain), ETA what remains at that rate; all done: ETA 0."""
    jobs = [_job(0, JobState.SUCCEEDED, 100.0, 102.0), _job(1, JobState.FAILED, 101.0, 104.0),
            _job(2, JobState.RUNNING, 104.0, None), _job(3, JobState.PENDING, None, None)]
    s = group_summary("g", jobs, wall=110.0)
    assert s["counts"]["succeeded"] == 1 and s["counts"]["running"] == 1
    assert s["done"] == 2 and s["progress"] == 0.5
    assert s["throughput"] == 2 / 10.0
    assert s["eta_s"] == 2 / (2 / 10.0)
    assert s["finished_at"] is None
    done = group_summary("g", jobs[:2], wall=500.0)
    assert done["throughput"] == 2 / 4.0 and done["eta_s"] == 0.0
    assert done["finished_at"] == 104.0
    fresh = group_summary("g", [_job(0, JobState.PENDING, None, None)], wall=1.0)
    assert fresh["throughput"] is None and fresh["eta_s"] is None and fresh["progress"] == 0


def test_group_summary_of_finished_jobs_with_no_finish_time_runs_to_now() -> None:
    """A group whose finished jobs carry no finish time gets a summary (to `wall`), not a
    TypeError in the leader's step."""
    jobs = [_job(0, JobState.SUCCEEDED, 100.0, None), _job(1, JobState.RUNNING, 101.0, None)]
    s = group_summary("g", jobs, wall=110.0)
    assert s["throughput"] == 1 / 10.0 and s["eta_s"] == 10.0
    done = group_summary("g", jobs[:1], wall=104.0)
    assert done["throughput"] == 1 / 4.0 and done["eta_s"] == 0.0


def test_a_new_leader_rebuilds_groups_and_dooms_children_of_a_parent_failed_meanwhile(
        ) -> None:
    """From a replayed table, the group index is the old leader's; a pending child whose
    parent had failed (its cancel lost with a torn tail) is cancelled at the first step."""
    h = DagHarness()
    ids = [h.submit("true", group="g") for _ in range(3)]
    parent = h.submit("false")
    child = h.submit("true", after=(parent,))
    table = JobTable()
    for record in h.journal:
        table.apply(record)
    # The parent's failure is journaled, the child's cancel is not (a torn tail).
    table.apply({"op": "start", "id": parent, "attempt": 1, "worker": "w", "at": 1.0})
    table.apply({"op": "finish", "id": parent, "attempt": 1, "state": "failed", "at": 2.0})
    new = Scheduler(SchedulerConfig(), random.Random(3), h.now + 1, table=table)
    assert list(new.groups.ids["g"]) == ids
    effects = new.step(Tick(), h.now + 1)
    assert new.table.jobs[child].state is JobState.CANCELLED
    assert new.table.jobs[child].error == f"parent {parent} failed"
    assert any(isinstance(e, Journal) and e.record.get("id") == child for e in effects)
