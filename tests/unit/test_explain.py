"""`explain`: one test per reason a job is where it is (core/explain.py, pure)."""

from __future__ import annotations

from typing import Any

from tcpsched.core.explain import Placement, WorkerView, explain
from tcpsched.core.jobs import JobRecord, JobSpec, JobState

NOW = 1_700_000_000.0


def job(state: JobState = JobState.PENDING, **fields: Any) -> JobRecord:
    spec = fields.pop("spec", JobSpec(kind="shell", command="make"))
    return JobRecord(id="abc123", seq=1, spec=spec, state=state, **fields)


def alive(name: str, running: int = 0, slots: int = 2, **fields: Any) -> WorkerView:
    return WorkerView(name=name, state="alive", refusal=fields.pop("refusal", None),
                      running=running, slots=slots, **fields)


def reasons(record: JobRecord, **context: Any) -> list[str]:
    options: dict[str, Any] = {"placement": None, "parents": {}, "parked": None,
                               "workers": [alive("w1")], **context}
    return explain(record, now=NOW, **options)


def test_placed_job_says_policy_worker_and_its_load_then() -> None:
    """A job that ran names the policy, the worker and how busy it was at dispatch."""
    placement = Placement("least-loaded", "w2", 1, 4, 3, NOW - 5)
    out = reasons(job(JobState.SUCCEEDED, attempts=1, worker="w2"), placement=placement)
    assert out[0] == "succeeded on w2 after 1 attempt(s)"
    assert out[1] == ("placed on w2 by the least-loaded policy, among 3 free capable "
                      "worker(s); w2 was running 1 of 4 slot(s) then")


def test_running_job_without_recorded_placement_says_so() -> None:
    """A job placed by an earlier leader says its placement is not recorded."""
    out = reasons(job(JobState.RUNNING, attempts=2, worker="w1"))
    assert out[0] == "running attempt 2 on w1"
    assert "not recorded" in out[1]


def test_waiting_on_parents_names_them_and_their_states() -> None:
    """A child names each parent that has not succeeded, with its state."""
    out = reasons(job(spec=JobSpec(kind="shell", command="x", after=("p1", "p2", "p3"))),
                  parents={"p1": "succeeded", "p2": "running", "p3": None})
    assert out[0] == "waiting on parent(s) p2 (running), p3 (forgotten)"


def test_delayed_until_t() -> None:
    """A delayed job says until when."""
    out = reasons(job(not_before=NOW + 30))
    assert out[0].startswith("delayed until ") and "(in 30.0s)" in out[0]


def test_retrying_after_backoff_until_t() -> None:
    """A job backing off after a failure says which attempt failed and until when it waits."""
    out = reasons(job(spec=JobSpec(kind="shell", command="x", retries=3), failures=1,
                      attempts=1, error="exit 1", not_before=NOW + 2))
    assert out[0].startswith("retrying after failed attempt 1 of 4 (last: exit 1): backoff "
                             "until ")


def test_no_live_worker_has_tags() -> None:
    """A tagged job that no live worker can take says which tags are missing."""
    spec = JobSpec(kind="shell", command="x", tags=("gpu", "ssd"))
    out = reasons(job(spec=spec), workers=[alive("w1", refusal="lacks tag(s) gpu")])
    assert out == ["no live worker has tags gpu,ssd"]


def test_parked_reason_is_given() -> None:
    """A job the leader parked as unplaceable gives the leader's reason."""
    out = reasons(job(), parked="no live worker can run it: w1 does not run shell jobs")
    assert out == ["no live worker can run it: w1 does not run shell jobs"]


def test_all_capable_workers_full() -> None:
    """Every capable worker busy: says so, with their loads; incapable ones are left out."""
    out = reasons(job(), workers=[alive("w1", running=2), alive("w2", running=1, slots=1),
                                  alive("w3", refusal="lacks tag(s) gpu")])
    assert out == ["all 2 capable worker(s) are full: w1 2/2, w2 1/1"]


def test_tripped_worker_is_named_with_reason_and_until() -> None:
    """A capable worker whose circuit is open is named, with the reason and when it
    half-opens."""
    out = reasons(job(), workers=[alive("w1", breaker="open", breaker_reason="3 failed",
                                        breaker_until=NOW + 20)])
    assert out[0].startswith("worker w1 circuit open (tripped: 3 failed); half-opens at ")


def test_quarantined_poison_job() -> None:
    """A job failed after losing its workers says it was quarantined as a poison job."""
    out = reasons(job(JobState.FAILED, attempts=3, lost_workers=3, error="lost 3 workers"))
    assert out[0] == "quarantined as a poison job: lost 3 workers"


def test_no_live_worker_at_all() -> None:
    """With no worker alive, the job waits for one to register."""
    out = reasons(job(), workers=[WorkerView("w1", "dead", None, 0, 1)])
    assert out == ["no live worker: it waits for one to register"]


def test_ready_job_says_it_starts_next() -> None:
    """A job nothing holds back says it starts at the next dispatch."""
    out = reasons(job())
    assert out[0].startswith("ready: it starts at the next dispatch")


def test_pending_retry_names_where_its_last_attempt_went() -> None:
    """A job back in the queue after a failed attempt says where that attempt was placed."""
    placement = Placement("round-robin", "w1", 0, 1, 2, NOW - 1)
    out = reasons(job(attempts=1, failures=1, not_before=NOW + 1), placement=placement)
    assert out[-1].startswith("its last attempt was placed on w1 by the round-robin policy")
