"""Routing by tags: a job runs only on a worker with every one of its tags, and one that no
live worker can run stays pending with the reason (the scheduler driven with events)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.dispatch import FreeWorkers
from tcpsched.core.events import Connected, Received
from tcpsched.core.jobs import JobSpec
from tcpsched.core.workers import WorkerEntry
from tests.unit.test_scheduler import Harness

TAGS = ("gpu", "ssd", "big", "eu")


class TagHarness(Harness):
    def connect_tagged(self, name: str, tags: tuple[str, ...], slots: int = 1) -> int:
        conn = self._next_conn
        self._next_conn += 1
        self.conns[name] = conn
        self.step(Connected(conn, "worker", name))
        self.step(Received(conn, m.Register(name=name, slots=slots, tags=tags)))
        return conn

    def explain(self, job_id: str) -> dict[str, Any]:
        self._req += 1
        self.step(Received(1000, m.Explain(req_id=self._req, job_id=job_id)))
        (reply,) = [msg for c, msg in self.sent if c == 1000 and isinstance(msg, m.Reply)
                    and msg.req_id == self._req]
        return reply.value


tag_sets = st.lists(st.sampled_from(TAGS), max_size=3, unique=True).map(tuple)


@settings(max_examples=60, deadline=None)
@given(workers=st.lists(tag_sets, min_size=1, max_size=5),
       jobs=st.lists(tag_sets, min_size=1, max_size=12),
       policy=st.sampled_from(["round-robin", "random", "least-loaded"]))
def test_jobs_are_placed_only_on_workers_with_all_their_tags(
        workers: list[tuple[str, ...]], jobs: list[tuple[str, ...]], policy: str) -> None:
    """Whatever the workers' tags, the jobs' tags and the policy, every assignment goes to a
    worker holding all the job's tags, and a job that some live worker can run is never
    parked as unplaceable."""
    h = TagHarness(policy=policy)
    worker_tags = {}
    for i, tags in enumerate(workers):
        h.connect_tagged(f"w{i}", tags, slots=2)
        worker_tags[f"w{i}"] = set(tags)
    ids = {h.submit("true", tags=tags): set(tags) for tags in jobs}
    for _round in range(len(jobs) + 1):
        for name, have in worker_tags.items():
            for assign in h.assigns(name):
                assert ids[assign.job_id] <= have
                if h.sched.table.jobs[assign.job_id].state.value == "running":
                    h.result(name, assign.job_id, assign.attempt)
    for job_id, wanted in ids.items():
        runnable = any(wanted <= have for have in worker_tags.values())
        state = h.sched.table.jobs[job_id].state.value
        if runnable:
            assert state == "succeeded"
        else:
            assert state == "pending"
            assert "no live worker has tags" in h.sched.parked[job_id]


def test_a_tagged_job_waits_for_a_worker_with_its_tags_and_explain_says_why() -> None:
    """A gpu job with only a cpu worker alive stays pending, parked with the reason; status
    and explain both say it; a gpu worker registering gets it."""
    h = TagHarness()
    h.connect_tagged("cpu1", ("cpu",))
    job_id = h.submit("train", tags=("gpu",))
    assert h.sched.table.jobs[job_id].state.value == "pending"
    assert h.sched.parked[job_id] == "no live worker has tags gpu; it waits for one that has"
    explained = h.explain(job_id)
    assert explained["state"] == "pending"
    assert any("no live worker has tags gpu" in r for r in explained["reasons"])
    h.connect_tagged("gpu1", ("gpu", "ssd"))
    (assign,) = h.assigns("gpu1")
    assert assign.job_id == job_id
    assert not h.assigns("cpu1")
    assert job_id not in h.sched.parked


def test_free_workers_index_by_tag_set_follows_changes() -> None:
    """The tag index holds exactly the free workers, grouped by tag set, after adds,
    replacements (a worker that registers again with other tags) and removals."""
    free = FreeWorkers()

    def entry(name: str, tags: tuple[str, ...]) -> WorkerEntry:
        return WorkerEntry(name=name, conn=1, slots=1, tags=tags, address="", registered_at=0)

    free.set("a", entry("a", ("gpu",)))
    free.set("b", entry("b", ("gpu", "ssd")))
    free.set("c", entry("c", ()))
    assert free.tagged(("gpu",)) == ["a", "b"]
    assert free.tagged(("ssd", "gpu")) == ["b"]
    assert free.tagged(()) == ["a", "b", "c"]
    free.set("a", entry("a", ("ssd",)))
    assert free.tagged(("gpu",)) == ["b"]
    assert free.tagged(("ssd",)) == ["a", "b"]
    free.set("b", None)
    assert free.tagged(("gpu",)) == []
    assert set(free.by_tags) == {frozenset({"ssd"}), frozenset()}
    spec = JobSpec(kind="shell", command="x", tags=("ssd",))
    assert free.capable(spec) == ["a"]


def test_a_tagged_job_looks_at_tag_sets_not_at_workers() -> None:
    """With 2,000 untagged free workers and one gpu worker, the index holds two groups and a
    gpu job's candidates are that one worker (found without visiting the others)."""
    free = FreeWorkers()
    for i in range(2000):
        free.set(f"cpu{i:04d}", WorkerEntry(name=f"cpu{i:04d}", conn=1, slots=1, tags=(),
                                            address="", registered_at=0))
    free.set("gpu", WorkerEntry(name="gpu", conn=1, slots=1, tags=("gpu",), address="",
                                registered_at=0))
    assert len(free.by_tags) == 2
    assert free.capable(JobSpec(kind="shell", command="x", tags=("gpu",))) == ["gpu"]
    assert len(free.capable(JobSpec(kind="shell", command="x"))) == 2001
