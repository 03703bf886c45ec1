"""The job table as a state machine: exact JSON round trips, and snapshot + replay == live."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.events import Closed, Connected, Journal, Received, Tick
from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.core.records import (
    decode_record,
    decode_value,
    encode_record,
    encode_value,
    job_from_dict,
    job_from_row,
    job_to_dict,
    job_to_row,
)
from tcpsched.core.scheduler import Scheduler, SchedulerConfig
from tcpsched.core.state import JobTable

# Values a job may carry (what msgpack delivers: lists, str-keyed maps, bytes), including maps
# that look exactly like our own tags.
_keys = st.one_of(st.sampled_from(["$t", "$b", "$d", "a", ""]), st.text(max_size=5))
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


def json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


@given(values)
def test_user_values_survive_json_exactly(value: Any) -> None:
    """Any value with bytes or tag-like maps comes back from JSON equal, with the same types."""
    back = decode_value(json_round_trip(encode_value(value)))
    assert back == value
    assert repr(back) == repr(value)  # bytes stay bytes, 1 stays int, 1.0 stays float


def test_plain_values_are_stored_unchanged() -> None:
    """A value with no bytes and no "$t" key is stored as itself: no cost on the common path."""
    value = {"size": [1, 2.5, "x", None, True], "$b": "not a tag here"}
    assert encode_value(value) is value


def test_a_user_map_shaped_like_a_tag_is_not_mistaken_for_one() -> None:
    """{"$t": ...} from a user is escaped on the way in, not decoded as bytes on the way out."""
    value = {"$t": {"$b": "AAAA"}}
    stored = json_round_trip(encode_value(value))
    assert stored != value
    assert decode_value(stored) == value


specs = st.builds(
    JobSpec,
    kind=st.just("call"),
    function=st.sampled_from(["m:f", "pkg.mod:fn"]),
    args=st.lists(values, max_size=3).map(tuple),
    kwargs=st.dictionaries(_keys, values, max_size=3),
    priority=st.integers(-5, 5),
    retries=st.integers(0, 3),
    timeout=st.none() | st.floats(0.5, 100),
    delay=st.sampled_from([0.0, 1.5]),
    key=st.none() | st.text(min_size=1, max_size=8),
) | st.builds(JobSpec, kind=st.just("shell"), command=st.sampled_from(["true", "echo é"]))

jobs = st.builds(
    JobRecord,
    id=st.text("0123456789abcdef", min_size=12, max_size=12),
    seq=st.integers(1, 10**9),
    spec=specs,
    state=st.sampled_from(list(JobState)),
    attempts=st.integers(0, 5),
    worker=st.none() | st.just("w1"),
    submitted_at=st.floats(0, 2e9),
    started_at=st.none() | st.floats(0, 2e9),
    finished_at=st.none() | st.floats(0, 2e9),
    exit_code=st.none() | st.integers(-9, 255),
    result=values,
    stdout=st.text(max_size=5),
    stderr=st.text(max_size=5),
    error=st.none() | st.text(max_size=5),
    not_before=st.sampled_from([0.0, 12.5]),
    lost_workers=st.integers(0, 3),
    failures=st.integers(0, 3),
)


@given(jobs)
def test_job_rows_and_dicts_round_trip_through_json(job: JobRecord) -> None:
    """A job comes back equal from its snapshot row and from its submit record, via JSON."""
    assert job_from_row(json_round_trip(job_to_row(job))) == job
    record = decode_record(json_round_trip(encode_record({"op": "submit",
                                                          "job": job_to_dict(job)})))
    assert job_from_dict(record["job"]) == job


def test_apply_refuses_illegal_and_unknown_records() -> None:
    """A record the table cannot apply raises ValueError: a bug, or a corrupt journal."""
    table = JobTable()
    job = JobRecord(id="a" * 12, seq=1, spec=JobSpec(kind="shell", command="true"))
    table.apply({"op": "submit", "job": job_to_dict(job)})
    table.apply({"op": "cancel", "id": job.id, "at": 1.0})
    with pytest.raises(ValueError, match="illegal transition"):
        table.apply({"op": "start", "id": job.id, "attempt": 1, "worker": "w", "at": 2.0})
    with pytest.raises(ValueError, match="unknown job"):
        table.apply({"op": "cancel", "id": "b" * 12, "at": 1.0})
    with pytest.raises(ValueError, match="unknown record op"):
        table.apply({"op": "frobnicate"})
    with pytest.raises(ValueError, match="existing job"):
        table.apply({"op": "submit", "job": job_to_dict(job)})


# -- snapshot + replay == live, through the real scheduler ----------------------------------------

CLIENT = 1
WORKERS = ("w1", "w2", "w3")

_result = st.tuples(st.just("result"), st.integers(0, 9),
                   st.sampled_from(["succeeded", "failed", "cancelled"]), values)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(-2, 2), values, st.integers(0, 2)),
        st.tuples(st.just("register"), st.sampled_from(WORKERS), st.integers(1, 3)),
        _result, _result, _result,
        st.tuples(st.just("hand_back"), st.integers(0, 9)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("close"), st.sampled_from(WORKERS)),
        st.tuples(st.just("advance"), st.sampled_from([0.1, 0.7, 2.5])),
    ),
    min_size=5, max_size=80,
)


class Driver:
    """A scheduler fed client and worker messages; keeps every journal record it emits."""

    def __init__(self, seed: int, keep_finished: int = 1,
                 keep_output_chars: int | None = None) -> None:
        self.now = 1000.0
        config = SchedulerConfig(heartbeat_interval_s=0.5, heartbeat_timeout_s=2.0,
                                 keep_finished=keep_finished, retry_base_s=0.5,
                                 poison_workers_max=2, keep_output_chars=keep_output_chars)
        self.sched = Scheduler(config, random.Random(seed), self.now)
        self.records: list[dict[str, Any]] = []
        self.conns: dict[str, int] = {}
        self.next_conn = 10
        self.req = 0
        self.step(Connected(CLIENT, "client", "test"))

    def step(self, event: Any) -> None:
        for effect in self.sched.step(event, self.now):
            if isinstance(effect, Journal):
                self.records.append(effect.record)

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "submit":
            _, priority, payload, retries = op
            self.req += 1
            spec = JobSpec(kind="call", function="m:f", args=(payload,), priority=priority,
                           retries=retries, kwargs={"p": payload}, key=f"k{self.req % 7}")
            self.step(Received(CLIENT, m.Submit(req_id=self.req, jobs=(spec,))))
        elif kind == "register":
            _, name, slots = op
            if name in self.conns:
                return
            conn = self.conns[name] = self.next_conn
            self.next_conn += 1
            self.step(Connected(conn, "worker", name))
            running = self.sched.workers[name].running if name in self.sched.workers else {}
            refs = tuple(m.AttemptRef(job_id=j, attempt=a) for j, a in running.items())
            self.step(Received(conn, m.Register(name=name, slots=slots, running=refs)))
        elif kind in ("result", "hand_back"):
            held = sorted((name, job_id, attempt) for name in self.conns
                          for job_id, attempt in self.sched.workers[name].running.items())
            if not held:
                return
            name, job_id, attempt = held[op[1] % len(held)]
            if kind == "hand_back":
                msg: Any = m.HandBack(job_id=job_id, attempt=attempt, reason="draining")
            else:
                state, result = op[2], op[3]
                msg = m.Result(job_id=job_id, attempt=attempt, state=state,
                               exit_code=0 if state == "succeeded" else 1, result=result,
                               stdout="out", stderr="", error=None, started_at=self.now,
                               finished_at=self.now)
            self.step(Received(self.conns[name], msg))
        elif kind == "cancel":
            ids = list(self.sched.table.jobs)
            if ids:
                self.req += 1
                self.step(Received(CLIENT, m.Cancel(req_id=self.req,
                                                    job_id=ids[op[1] % len(ids)])))
        elif kind == "close":
            conn = self.conns.pop(op[1], None)
            if conn is not None:
                self.step(Closed(conn, "reset"))
        elif kind == "advance":
            # Time passes in ticks at the scheduler's cadence, as the runner gives them (a
            # longer gap would be a stall of the leader's loop, which excuses every worker);
            # connected workers keep beating, closed ones fall silent.
            end = self.now + op[1]
            while self.now < end:
                self.now = min(end, self.now + 0.1)
                for name, conn in self.conns.items():
                    entry = self.sched.workers[name]
                    refs = tuple(m.AttemptRef(job_id=j, attempt=a)
                                 for j, a in entry.running.items())
                    self.step(Received(conn, m.Heartbeat(running=refs)))
                self.step(Tick())


def snapshot_then_replay(records: list[dict[str, Any]], k: int) -> JobTable:
    """Apply the first k records, snapshot through JSON, rebuild, replay the rest."""
    before = JobTable()
    for record in records[:k]:
        before.apply(decode_record(record))
    rebuilt = JobTable.from_snapshot(json_round_trip(before.snapshot()))
    for record in records[k:]:
        rebuilt.apply(decode_record(record))
    return rebuilt


def table_state(table: JobTable) -> tuple[Any, ...]:
    return (list(table.jobs.items()), table.keys, table.counts, table.counters, table.next_seq,
            list(table.finished_order.items()), table.finished_output_chars)


@settings(max_examples=300)
@given(ops=operations, seed=st.integers(0, 2**16), cut=st.floats(0, 1))
def test_snapshot_plus_replay_equals_live_state(ops: list[tuple[Any, ...]], seed: int,
                                                cut: float) -> None:
    """Snapshot at any record, through JSON, plus the later records replayed == the live table."""
    driver = Driver(seed)
    for op in ops:
        driver.run(op)
    records = [json_round_trip(encode_record(r)) for r in driver.records]
    rebuilt = snapshot_then_replay(records, int(cut * len(records)))
    assert table_state(rebuilt) == table_state(driver.sched.table)
    # And a scheduler recovering from it queues exactly the live pending jobs.
    recovered = Scheduler(driver.sched.config, random.Random(0), driver.now, table=rebuilt)
    pending = {j.id for j in rebuilt.jobs.values() if j.state is JobState.PENDING}
    assert {job_id for job_id in pending if job_id in recovered.queue} == pending
    running = {j.id: j.worker for j in rebuilt.jobs.values() if j.state is JobState.RUNNING}
    for job_id, worker in running.items():
        assert recovered.workers[worker].running[job_id] == rebuilt.jobs[job_id].attempts


@settings(max_examples=100)
@given(ops=operations, seed=st.integers(0, 2**16))
def test_output_retention_bounds_kept_output_and_replays_exactly(ops: list[tuple[Any, ...]],
                                                                 seed: int) -> None:
    """Finished jobs are forgotten oldest first once their stdout + stderr pass the output
    budget (whatever the count limit), and a replay of the journal agrees exactly."""
    driver = Driver(seed, keep_finished=10_000, keep_output_chars=12)  # 4 jobs' "out"
    for op in ops:
        driver.run(op)
        table = driver.sched.table
        assert table.finished_output_chars == sum(table.output_chars(j)
                                                  for j in table.finished_order)
        assert table.finished_output_chars <= 12
    replayed = JobTable()
    for record in driver.records:
        replayed.apply(decode_record(json_round_trip(encode_record(record))))
    assert table_state(replayed) == table_state(driver.sched.table)


def test_output_retention_forgets_the_oldest_finished_jobs_first() -> None:
    """Past the output budget the oldest finished jobs are forgotten, the newest kept, while
    the count limit alone would have kept them all."""
    driver = Driver(1, keep_finished=10_000, keep_output_chars=12)  # 4 jobs' "out"
    driver.run(("register", "w1", 3))
    for i in range(7):
        driver.run(("submit", 0, i, 0))
    submitted = list(driver.sched.table.jobs)
    finished: list[str] = []
    for _ in range(7):
        held = sorted(driver.sched.workers["w1"].running)
        driver.run(("result", 0, "succeeded", 1))
        finished.extend(j for j in held if j not in driver.sched.workers["w1"].running)
    table = driver.sched.table
    assert len(finished) == len(submitted) == 7
    assert table.finished_output_chars <= 12
    kept = list(table.finished_order)
    assert kept == finished[-len(kept):] and 3 <= len(kept) <= 4
    assert all(job_id not in table.jobs for job_id in finished[: -len(kept)])


def test_recovered_running_job_waits_for_its_worker_then_requeues() -> None:
    """After a restart a running job stays with its worker if it re-registers with it within
    the heartbeat timeout, and goes back to pending when it does not."""
    driver = Driver(1)
    driver.run(("submit", 0, 1, 0))
    driver.run(("submit", 0, 2, 0))
    driver.run(("register", "w1", 2))
    table = JobTable.from_snapshot(json_round_trip(driver.sched.table.snapshot()))
    assert table.counts[JobState.RUNNING] == 2
    (first, second) = list(table.jobs)
    after = Driver(2)
    after.sched = Scheduler(driver.sched.config, random.Random(3), after.now, table=table)
    assert after.sched.worker_state("w1") == "suspect"
    # w1 comes back holding only the first job: it keeps it; the second was lost with it.
    after.step(Connected(50, "worker", "w1"))
    after.conns["w1"] = 50
    after.step(Received(50, m.Register(name="w1", slots=1,
                                       running=(m.AttemptRef(job_id=first, attempt=1),))))
    assert table.jobs[first].state is JobState.RUNNING
    assert table.jobs[second].state is JobState.PENDING
    assert table.jobs[second].lost_workers == 1
    # With no worker at all, the running job goes back to pending after the timeout.
    lonely = Scheduler(driver.sched.config, random.Random(4), 2000.0,
                       table=JobTable.from_snapshot(json_round_trip(
                           driver.sched.table.snapshot())))
    # Ticked at the cadence the scheduler asks for, as the runner does (a longer gap would be
    # a stall of the leader's loop, which the detector does not count as silence).
    for tick in range(1, 26):
        lonely.step(Tick(), 2000.0 + tick / 10)
        if tick == 10:
            assert lonely.table.counts[JobState.RUNNING] == 2
    assert lonely.table.counts[JobState.PENDING] == 2


@pytest.mark.parametrize("seed", range(5))
def test_long_random_histories_replay_exactly(seed: int) -> None:
    """Long seeded histories (forgets, retries, lost workers, poison) replay exactly at any cut."""
    rng = random.Random(seed)
    driver = Driver(seed)
    payloads = [None, 1, 2.5, "x", b"\x00\xff", {"$t": b"y"}, [b"z", {"$b": 1}]]
    for _ in range(3000):
        roll = rng.random()
        if roll < 0.3:
            op: tuple[Any, ...] = ("submit", rng.randint(-2, 2), rng.choice(payloads),
                                   rng.randint(0, 2))
        elif roll < 0.4:
            op = ("register", rng.choice(WORKERS), rng.randint(1, 3))
        elif roll < 0.7:
            op = ("result", rng.randint(0, 9), rng.choice(["succeeded", "failed", "cancelled"]),
                  rng.choice(payloads))
        elif roll < 0.75:
            op = ("hand_back", rng.randint(0, 9))
        elif roll < 0.8:
            op = ("cancel", rng.randint(0, 30))
        elif roll < 0.85:
            op = ("close", rng.choice(WORKERS))
        else:
            op = ("advance", rng.choice([0.1, 0.7, 2.5]))
        driver.run(op)
    ops = {r["op"] for r in driver.records}
    assert {"submit", "start", "finish", "requeue", "cancel", "forget"} <= ops
    records = [json_round_trip(encode_record(r)) for r in driver.records]
    for k in sorted({0, len(records) // 3, len(records) // 2, len(records) - 1, len(records)}):
        rebuilt = snapshot_then_replay(records, k)
        assert table_state(rebuilt) == table_state(driver.sched.table)
