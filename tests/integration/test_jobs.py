"""Real jobs on real processes: one coordinator and workers on 127.0.0.1, driven by the client.

Most tests share one coordinator with two 2-slot workers (started once for the module; every
test makes its own jobs, so they stay independent). Tests that need a particular shape (one
slot, a policy, three workers) start their own with the `procs` fixture.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.core.jobs import OUTPUT_BYTES_MAX, JobSpec
from tcpsched.errors import RequestError
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 60.0  # generous: two shared cores, other suites running beside us


@attrs.frozen
class Cluster:
    group: ProcessGroup
    address: str
    client: SyncClient
    workdir: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
            ) -> Iterator[Cluster]:
    """One coordinator, workers w1 and w2 with 2 slots each, for the whole module."""
    workdir = tmp_path_factory.mktemp("jobs")
    group = ProcessGroup(workdir / "run")
    failed_before = request.session.testsfailed
    client: SyncClient | None = None
    try:
        _, address = group.coordinator(extra=["--seed", "1"])
        group.worker(address, "w1", slots=2)
        group.worker(address, "w2", slots=2)
        client = connect(address)
        wait_for_workers(client, ["w1", "w2"])
        yield Cluster(group, address, client, workdir)
    finally:
        if client is not None:
            client.close()
        group.stop_all()
        if request.session.testsfailed > failed_before:
            print(group.logs())


def alive(pid: int, marker: bytes) -> bool:
    """True while `pid` is a live (not zombie) process whose command line holds `marker`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def read_pids(path: Path, count: int) -> list[int] | None:
    try:
        pids = [int(line) for line in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None
    return pids if len(pids) >= count else None


def pid_writing_job(pid_file: Path) -> str:
    """A shell job that records its shell's pid and two background `sleep 300`s, then waits."""
    return (f"echo $$ >> {pid_file}; sleep 300 & echo $! >> {pid_file}; "
            f"sleep 300 & echo $! >> {pid_file}; wait")


# -- outcomes -----------------------------------------------------------------------------------


def test_shell_job_succeeds_with_its_output(cluster: Cluster) -> None:
    """A shell job's stdout, stderr and exit code 0 come back in its record."""
    c = cluster.client
    job_id = c.submit_shell("echo hello; echo warning >&2")
    record = c.wait(job_id, timeout=WAIT_S)
    assert record["state"] == "succeeded"
    assert record["exit_code"] == 0
    assert record["stdout"] == "hello\n"
    assert record["stderr"] == "warning\n"
    assert record["worker"] in ("w1", "w2")
    assert record["attempts"] == 1
    assert record["submitted_at"] <= record["started_at"] <= record["finished_at"]


def test_call_job_returns_its_value(cluster: Cluster) -> None:
    """A Python job's return value is its result; args and kwargs arrive intact."""
    c = cluster.client
    add = c.submit_call("operator:add", 2, 3)
    parse = c.submit_call("builtins:int", "ff", base=16)
    nested = c.submit_call("builtins:dict", {"a": [1, 2.5, None, "x"]}, b=True)
    records = c.gather([add, parse, nested], timeout=WAIT_S)
    assert [r["state"] for r in records] == ["succeeded"] * 3
    assert [r["result"] for r in records] == [5, 255, {"a": [1, 2.5, None, "x"], "b": True}]
    assert records[0]["args"] == [2, 3] and records[1]["kwargs"] == {"base": 16}


def test_coroutine_function_is_awaited(cluster: Cluster) -> None:
    """An async function is awaited on the worker's loop and its result returned."""
    c = cluster.client
    record = c.wait(c.submit_call("asyncio:sleep", 0.05, "done"), timeout=WAIT_S)
    assert record["state"] == "succeeded"
    assert record["result"] == "done"


def test_failing_shell_job_records_exit_code_and_stderr(cluster: Cluster) -> None:
    """A non-zero exit fails the job with that exit code and its stderr."""
    c = cluster.client
    record = c.wait(c.submit_shell("echo partial; echo 'it broke' >&2; exit 3"),
                    timeout=WAIT_S)
    assert record["state"] == "failed"
    assert record["exit_code"] == 3
    assert record["stdout"] == "partial\n"
    assert record["stderr"] == "it broke\n"
    assert record["error"] == "exit code 3"


def test_raising_python_job_records_the_exception_and_traceback(cluster: Cluster) -> None:
    """An exception becomes `Type: message` in error and the traceback in stderr."""
    c = cluster.client
    record = c.wait(c.submit_call("operator:truediv", 1, 0), timeout=WAIT_S)
    assert record["state"] == "failed"
    assert record["error"].startswith("ZeroDivisionError: ")
    assert "division by zero" in record["error"]
    assert "Traceback (most recent call last)" in record["stderr"]
    assert "ZeroDivisionError" in record["stderr"]


def test_unimportable_function_fails_the_job_not_the_worker(cluster: Cluster) -> None:
    """A missing module or attribute fails that job with a one-line reason."""
    c = cluster.client
    missing_module = c.submit_call("no_such_module_tcpsched:run")
    missing_attr = c.submit_call("operator:no_such_function")
    first, second = c.gather([missing_module, missing_attr], timeout=WAIT_S)
    assert first["state"] == second["state"] == "failed"
    assert "cannot import no_such_module_tcpsched" in first["error"]
    assert "no_such_function" in second["error"]
    wait_for_workers(c, ["w1", "w2"])


def test_unsendable_result_fails_the_job(cluster: Cluster) -> None:
    """A return value msgpack cannot carry fails the job instead of breaking the protocol."""
    c = cluster.client
    record = c.wait(c.submit_call("builtins:set", [1, 2]), timeout=WAIT_S)
    assert record["state"] == "failed"
    assert "result cannot be sent" in record["error"]


def test_output_is_capped_at_one_mebibyte_with_a_note(cluster: Cluster) -> None:
    """Output past 1 MiB per stream is dropped, and the record says how much there was."""
    c = cluster.client
    command = ("head -c 1500000 /dev/zero | tr '\\0' a; "
               "head -c 1100000 /dev/zero | tr '\\0' b >&2")
    record = c.wait(c.submit_shell(command), timeout=WAIT_S)
    assert record["state"] == "succeeded"
    assert record["stdout"].startswith("a" * OUTPUT_BYTES_MAX)
    assert record["stdout"][OUTPUT_BYTES_MAX] != "a"
    assert f"kept the first {OUTPUT_BYTES_MAX} of 1500000 bytes" in record["stdout"]
    assert record["stderr"].startswith("b" * OUTPUT_BYTES_MAX)
    assert "of 1100000 bytes" in record["stderr"]
    assert len(record["stdout"]) < OUTPUT_BYTES_MAX + 200


def test_too_large_result_fails_the_job_and_the_worker_carries_on(cluster: Cluster) -> None:
    """A result too big to send fails its job with a reason; the worker stays connected.

    Sent as is, a 20 MB result would make a frame over the coordinator's 16 MiB limit: the
    worker's connection would be closed on every resend and no later result would arrive.
    """
    c = cluster.client
    lost_before = c.stats()["workers_lost"]
    record = c.wait(c.submit_call("operator:mul", "x", 20_000_000), timeout=WAIT_S)
    assert record["state"] == "failed" and record["attempts"] == 1
    assert record["error"].startswith("result cannot be sent") and "bytes" in record["error"]
    after = c.gather([c.submit_call("operator:add", i, 1) for i in range(8)], timeout=WAIT_S)
    assert [r["result"] for r in after] == list(range(1, 9))
    assert c.stats()["workers_lost"] == lost_before


def test_gather_of_records_bigger_than_a_frame_together(cluster: Cluster) -> None:
    """24 jobs of 1 MiB output each (more than one 16 MiB frame) are all gathered, and each
    job's whole output can be read with status."""
    c = cluster.client
    ids = [c.submit_shell("head -c 1048576 /dev/zero | tr '\\0' z") for _ in range(24)]
    records = c.gather(ids, timeout=WAIT_S)
    assert [r["id"] for r in records] == ids
    assert all(r["state"] == "succeeded" for r in records)
    assert all(c.status(job_id)["stdout"] == "z" * 1048576 for job_id in ids)


def test_job_too_large_to_submit_is_refused_by_the_client(procs: ProcessGroup) -> None:
    """A job whose submit would exceed the frame limit is a RequestError, not an endless retry;
    a batch that is merely large is split and goes through, and so is its gather."""
    _, address = procs.coordinator()
    procs.worker(address, "w1", slots=2)
    with connect(address) as c:
        wait_for_workers(c, ["w1"])
        with pytest.raises(RequestError, match="too large"):
            c.submit_call("builtins:len", "x" * 17_000_000)
        with pytest.raises(RequestError, match="cannot send"):
            c.submit_call("builtins:len", {1, 2})
        assert c.stats()["submitted"] == 0
        specs = [JobSpec(kind="call", function="builtins:len", args=("y" * 200_000,))
                 for _ in range(120)]  # 24 MB in one batch of 1000: split in two
        ids = c.submit_many(specs)
        assert len(set(ids)) == 120
        # Their 120 records (24 MB of args) do not fit in one reply either: gather splits.
        records = c.gather(ids, timeout=WAIT_S)
        assert [r["result"] for r in records] == [200_000] * 120


# -- timeouts and cancellation ------------------------------------------------------------------


def test_timeout_kills_the_whole_process_group(cluster: Cluster, tmp_path: Path) -> None:
    """--timeout fails the job and leaves no process of it behind, not even background ones."""
    c = cluster.client
    pid_file = tmp_path / "pids"
    job_id = c.submit_shell(pid_writing_job(pid_file), timeout=3.0)
    record = c.wait(job_id, timeout=WAIT_S)
    assert record["state"] == "failed"
    assert record["error"] == "timed out after 3s"
    pids = read_pids(pid_file, 3)
    assert pids is not None, pid_file.read_text() if pid_file.exists() else "no pid file"
    # The worker reports only after killing the group, so nothing may be left by now.
    assert [pid for pid in pids if alive(pid, b"300")] == []


def test_cancel_of_a_pending_job_means_it_never_runs(cluster: Cluster, tmp_path: Path) -> None:
    """A cancelled pending job stays cancelled and never starts, even after its delay."""
    c = cluster.client
    marker = tmp_path / "ran"
    victim = c.submit_shell(f"touch {marker}", delay=2.0)
    record = c.cancel(victim)
    assert record["state"] == "cancelled"
    # A job delayed longer than the victim: once it has run, the victim's time has passed.
    later = c.submit_shell("true", delay=2.5)
    assert c.wait(later, timeout=WAIT_S)["state"] == "succeeded"
    record = c.status(victim)
    assert record["state"] == "cancelled"
    assert record["started_at"] is None and record["attempts"] == 0
    assert not marker.exists()


def test_cancel_of_a_running_job_kills_it(cluster: Cluster, tmp_path: Path) -> None:
    """Cancelling a running shell job kills its processes and leaves it cancelled."""
    c = cluster.client
    pid_file = tmp_path / "pids"
    job_id = c.submit_shell(pid_writing_job(pid_file))
    pids = wait_until(lambda: read_pids(pid_file, 3), WAIT_S, what="the job to start")
    assert c.status(job_id)["state"] == "running"
    assert all(alive(pid, b"300") for pid in pids)
    assert c.cancel(job_id)["state"] == "cancelled"
    wait_until(lambda: not any(alive(pid, b"300") for pid in pids), WAIT_S,
               what="the cancelled job's processes to die")
    wait_until(lambda: all(w["running"] == 0 for w in c.workers()), WAIT_S,
               what="the worker to free the slot")
    assert c.status(job_id)["state"] == "cancelled"


def test_cancel_of_a_finished_job_changes_nothing(cluster: Cluster) -> None:
    """Cancelling a job that already succeeded leaves its record as it was."""
    c = cluster.client
    job_id = c.submit_shell("echo done")
    before = c.wait(job_id, timeout=WAIT_S)
    after = c.cancel(job_id)
    assert after == before


# -- submission options -------------------------------------------------------------------------


def test_same_idempotency_key_twice_makes_one_job(cluster: Cluster) -> None:
    """Submitting with the same key again returns the first job's id; no second job exists."""
    c = cluster.client
    key = f"test-key-{time.time_ns()}"
    submitted_before = c.stats()["submitted"]
    first = c.submit_shell("echo once", key=key)
    second = c.submit_shell("echo once", key=key)
    assert first == second
    c.wait(first, timeout=WAIT_S)
    third = c.submit_shell("echo once", key=key)  # also after the job finished
    assert third == first
    assert c.stats()["submitted"] == submitted_before + 1
    matching = [r for r in c.list(limit=10) if r.get("key") == key]
    assert [r["id"] for r in matching] == [first]


def test_delay_is_honoured(cluster: Cluster) -> None:
    """A job submitted with a delay starts no sooner than submitted_at + delay."""
    c = cluster.client
    record = c.wait(c.submit_shell("true", delay=1.0), timeout=WAIT_S)
    assert record["state"] == "succeeded"
    assert record["started_at"] >= record["submitted_at"] + 1.0


def test_plain_function_does_not_stop_heartbeats(cluster: Cluster) -> None:
    """A blocking Python job runs off the event loop: its worker is never declared dead.

    The job blocks for 3 s, longer than the 2 s heartbeat timeout: if it ran on the loop, the
    worker would be declared dead and the job requeued (attempts > 1).
    """
    c = cluster.client
    job_id = c.submit_call("time:sleep", 3.0)
    states: list[str] = []

    def finished() -> bool:
        states.extend(w["state"] for w in c.workers())
        return c.status(job_id)["state"] not in ("pending", "running")

    wait_until(finished, WAIT_S, interval=0.2, what="the sleeping job")
    record = c.status(job_id)
    assert record["state"] == "succeeded" and record["attempts"] == 1
    assert states and "dead" not in states
    assert c.stats()["workers_lost"] == 0


def test_a_worker_never_holds_more_jobs_than_slots(cluster: Cluster) -> None:
    """Under a burst, no worker runs more jobs at once than its slots, and none is handed back."""
    c = cluster.client
    ids = [c.submit_shell("sleep 0.2") for _ in range(16)]
    seen: list[dict[str, Any]] = []

    def done() -> bool:
        seen.extend(c.workers())
        return all(r["state"] == "succeeded" for r in c.wait_records(ids, timeout=0))

    wait_until(done, WAIT_S, interval=0.05, what="the burst to finish")
    assert all(w["running"] <= w["slots"] for w in seen)
    assert max(w["running"] for w in seen) >= 1
    records = c.gather(ids, timeout=WAIT_S)
    assert_within_slots(records, {"w1": 2, "w2": 2})
    assert c.stats()["handed_back"] == 0


def assert_within_slots(records: list[dict[str, Any]], slots: dict[str, int]) -> None:
    """Sweep the [started_at, finished_at) intervals of each worker: overlap <= its slots."""
    by_worker: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for r in records:
        by_worker[r["worker"]].append((r["started_at"], 1))
        by_worker[r["worker"]].append((r["finished_at"], -1))
    for worker, points in by_worker.items():
        busy = 0
        for _when, change in sorted(points):  # at equal times an end sorts before a start
            busy += change
            assert busy <= slots[worker], f"{worker} ran {busy} jobs at once"


# -- clusters of their own ----------------------------------------------------------------------


def test_one_busy_slot_runs_higher_priority_first_then_fifo(procs: ProcessGroup,
                                                           tmp_path: Path) -> None:
    """Jobs queued behind a busy single slot start by priority, FIFO within a priority."""
    _, address = procs.coordinator()
    procs.worker(address, "solo", slots=1)
    with connect(address) as c:
        wait_for_workers(c, ["solo"])
        gate = tmp_path / "open"
        blocker = c.submit_shell(f"while [ ! -e {gate} ]; do sleep 0.02; done")
        wait_until(lambda: c.status(blocker)["state"] == "running", WAIT_S,
                   what="the blocker to start")
        priorities = [1, 5, 3, 5, 1, 0, 3]
        queued = [c.submit(JobSpec(kind="shell", command="true", priority=p))
                  for p in priorities]
        assert all(r["state"] == "pending" for r in c.wait_records(queued, timeout=0))
        gate.touch()
        records = c.gather([blocker, *queued], timeout=WAIT_S)
    assert all(r["state"] == "succeeded" for r in records)
    started = sorted(records[1:], key=lambda r: r["started_at"])
    expected = sorted(range(len(queued)), key=lambda i: (-priorities[i], i))
    assert [r["id"] for r in started] == [queued[i] for i in expected]
    assert_within_slots(records, {"solo": 1})


@pytest.mark.parametrize("policy", ["round-robin", "random"])
def test_both_policies_spread_work_over_every_worker(procs: ProcessGroup, policy: str) -> None:
    """With three workers, each policy gives every worker a share of 60 jobs, within slots.
    Without a lookahead (`--prefetch 0`) every placement is the policy's choice; with one, a
    worker that finishes sooner is refilled sooner, so the shares follow speed, not policy.
    The jobs sleep 20 ms, so a worker's speed (a slow start, a loaded machine) cannot starve
    it: a worker gets a job only when it is free at a dispatch pass, and no-op jobs could all
    be done by the first two before the third's first results are in."""
    _, address = procs.coordinator(extra=["--policy", policy, "--seed", "7"])
    names = ["w1", "w2", "w3"]
    for name in names:
        procs.worker(address, name, slots=2, extra=["--prefetch", "0"])
    with connect(address) as c:
        wait_for_workers(c, names)
        assert c.stats()["policy"] == policy
        ids = c.map("tests.integration.policy_tasks:slow_identity", range(60))
        records = c.gather(ids, timeout=WAIT_S)
        handed_back = c.stats()["handed_back"]
    assert [r["result"] for r in records] == list(range(60))
    counts = collections.Counter(r["worker"] for r in records)
    assert set(counts) == set(names), counts
    assert min(counts.values()) >= 5, counts
    assert_within_slots(records, dict.fromkeys(names, 2))
    assert handed_back == 0


def test_a_timed_out_python_job_does_not_block_later_ones(procs: ProcessGroup) -> None:
    """A plain function past its timeout is abandoned; the next call on that slot still runs.

    The abandoned thread sleeps far longer than the next job's own timeout, so if the next job
    queued behind it (a thread pool with one thread per slot), it would time out and fail.
    """
    _, address = procs.coordinator()
    worker = procs.worker(address, "solo", slots=1)
    with connect(address) as c:
        wait_for_workers(c, ["solo"])
        stuck = c.wait(c.submit_call("time:sleep", 600, timeout=0.5), timeout=WAIT_S)
        assert stuck["state"] == "failed" and stuck["error"] == "timed out after 0.5s"
        later = c.wait(c.submit_call("operator:add", 1, 2, timeout=20), timeout=WAIT_S)
        assert later["state"] == "succeeded" and later["result"] == 3, later
    # An abandoned thread must not keep the worker from exiting when told to stop either.
    assert procs.stop(worker, grace=30.0) == 0
