"""Workers fail, jobs don't: real processes on 127.0.0.1, killed and stopped with real signals.

Every test starts its own coordinator with short heartbeats (0.2 s interval, 1.0 s timeout) so
a lost worker costs about a second. Jobs that must die with their worker are Python calls
(they run in a thread of the worker process); shell jobs run in their own session and are
killed by the worker's reaper when the worker dies (`test_shell_job_dies_with_its_worker`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import Proc, ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 30.0  # generous: two shared cores, other suites running beside us
Clients = list[SyncClient]
FAST_HEARTBEATS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0"]


@pytest.fixture
def clients() -> Iterator[list[SyncClient]]:
    """Clients the test opens; all closed at teardown."""
    made: list[SyncClient] = []
    try:
        yield made
    finally:
        for client in made:
            client.close()


def start(procs: ProcessGroup, clients: Clients, names: list[str], *, slots: int = 1,
          coordinator_extra: tuple[str, ...] = (), worker_extra: tuple[str, ...] = ()
          ) -> tuple[str, SyncClient, dict[str, Proc]]:
    """A coordinator with fast heartbeats and the named workers, all registered and alive."""
    _, address = procs.coordinator(extra=[*FAST_HEARTBEATS, "--seed", "3", *coordinator_extra])
    workers = {name: procs.worker(address, name, slots=slots, extra=worker_extra)
               for name in names}
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, names, timeout=WAIT_S)
    return address, client, workers


def running_on(client: SyncClient, job_id: str) -> str:
    """Wait until the job runs, and name its worker."""
    record = wait_until(lambda: (r := client.status(job_id))["state"] == "running" and r,
                        WAIT_S, what=f"job {job_id} running")
    return str(record["worker"])


def worker_state(client: SyncClient, name: str) -> str | None:
    return next((w["state"] for w in client.workers() if w["name"] == name), None)


def wait_worker_state(client: SyncClient, name: str, state: str) -> None:
    wait_until(lambda: worker_state(client, name) == state, WAIT_S,
               what=f"worker {name} {state}")


def test_kill9_worker_mid_job_job_succeeds_on_another_worker(procs: ProcessGroup,
                                                             clients: Clients) -> None:
    """kill -9 of the worker running a job: the job runs again elsewhere and succeeds, attempt 2."""
    _, client, workers = start(procs, clients, ["w1", "w2"])
    job = client.submit_call("time:sleep", 2.0)
    holder = running_on(client, job)
    workers[holder].signal(signal.SIGKILL)
    record = client.wait(job, timeout=WAIT_S)
    assert record["state"] == "succeeded"
    assert record["attempts"] == 2
    assert record["worker"] != holder
    stats = client.stats()
    assert stats["reassigned"] == 1
    assert stats["workers_lost"] == 1
    assert worker_state(client, holder) == "dead"


def test_sigstopped_worker_is_declared_dead_and_rejoins(procs: ProcessGroup,
                                                        clients: Clients) -> None:
    """SIGSTOP past the timeout: dead, job done elsewhere; after SIGCONT its result is ignored."""
    _, client, workers = start(procs, clients, ["w1", "w2"])
    coordinator = procs.procs[0]
    job = client.submit_call("time:sleep", 1.5)
    holder = running_on(client, job)
    workers[holder].signal(signal.SIGSTOP)
    wait_worker_state(client, holder, "dead")
    record = client.wait(job, timeout=WAIT_S)
    assert (record["state"], record["attempts"]) == ("succeeded", 2)
    other = record["worker"]
    assert other != holder
    workers[holder].signal(signal.SIGCONT)
    wait_worker_state(client, holder, "alive")
    # The resumed worker reports attempt 1 (still running, or finished in its outbox): stale.
    wait_until(lambda: f"job={job} attempt=1: stale" in coordinator.log()
               or f"job={job} attempt=1 is stale" in coordinator.log(),
               WAIT_S, what="the stale attempt to be noticed")
    record = client.status(job)
    assert (record["state"], record["attempts"], record["worker"]) == ("succeeded", 2, other)
    # It serves again: the next jobs run on both workers.
    jobs = [client.submit_call("time:sleep", 0.3) for _ in range(4)]
    records = client.gather(jobs, timeout=WAIT_S)
    assert {r["state"] for r in records} == {"succeeded"}
    assert holder in {r["worker"] for r in records}


def test_job_killing_its_worker_fails_after_three_lost_workers(procs: ProcessGroup,
                                                               clients: Clients) -> None:
    """A job that kills its worker every time ends failed "lost 3 workers"; others still run.

    The job is a shell that SIGKILLs its parent, the worker: a call that exits its process
    would end only its call process (runtime/callpool.py), not the worker."""
    names = ["w1", "w2", "w3"]
    address, client, workers = start(procs, clients, names)
    poison = client.submit_shell("kill -KILL $PPID")
    others: list[str] = []
    deaths = 0

    def restart_the_dead() -> Any:
        nonlocal deaths
        for name, proc in list(workers.items()):
            if not proc.alive():
                deaths += 1
                workers[name] = procs.worker(address, name, slots=1)
        others.append(client.submit_call("time:sleep", 0.05))
        return client.status(poison)["state"] in ("failed", "succeeded")

    wait_until(restart_the_dead, 60.0, interval=0.3, what="the poison job to end")
    record = client.status(poison)
    assert record["state"] == "failed"
    assert record["error"] == "lost 3 workers"
    assert record["attempts"] == 3
    records = client.gather(others, timeout=WAIT_S)
    assert {r["state"] for r in records} == {"succeeded"}
    assert client.stats()["poisoned"] == 1


def test_failing_then_passing_job_succeeds_with_retries(procs: ProcessGroup, clients: Clients,
                                                        tmp_path: Path) -> None:
    """--retries: the first attempt fails (no marker yet), the retry succeeds."""
    _, client, _ = start(procs, clients, ["w1"], coordinator_extra=("--retry-base", "0.1"))
    marker = tmp_path / "marker"
    job = client.submit_shell(f"test -e {marker} || {{ touch {marker}; exit 3; }}", retries=2)
    record = client.wait(job, timeout=WAIT_S)
    assert (record["state"], record["attempts"]) == ("succeeded", 2)
    assert client.stats()["retried"] == 1
    hopeless = client.submit_shell("exit 4", retries=1)
    record = client.wait(hopeless, timeout=WAIT_S)
    assert (record["state"], record["attempts"], record["exit_code"]) == ("failed", 2, 4)
    assert record["error"] == "exit code 4"


def test_sigterm_drains_running_job_and_exits_zero(procs: ProcessGroup, clients: Clients) -> None:
    """SIGTERM: the worker shows draining, takes no new job, finishes its job, and exits 0."""
    _, client, workers = start(procs, clients, ["w1"])
    job = client.submit_call("time:sleep", 2.0)
    running_on(client, job)
    workers["w1"].signal(signal.SIGTERM)
    wait_worker_state(client, "w1", "draining")
    later = client.submit_call("time:sleep", 0.1)
    assert workers["w1"].wait(WAIT_S) == 0
    record = client.status(job)
    assert (record["state"], record["attempts"], record["worker"]) == ("succeeded", 1, "w1")
    assert client.status(later)["state"] == "pending"
    assert client.stats()["workers_lost"] == 0


def test_drain_timeout_hands_back_long_job_that_runs_elsewhere(procs: ProcessGroup,
                                                               clients: Clients) -> None:
    """A job longer than --drain-timeout is handed back at once and completes elsewhere."""
    _, client, workers = start(procs, clients, ["w1", "w2"],
                               worker_extra=("--drain-timeout", "0.5"))
    job = client.submit_shell("sleep 3")
    holder = running_on(client, job)
    workers[holder].signal(signal.SIGTERM)
    assert workers[holder].wait(WAIT_S) == 0
    record = client.wait(job, timeout=WAIT_S)
    assert (record["state"], record["attempts"]) == ("succeeded", 2)
    assert record["worker"] != holder
    stats = client.stats()
    assert (stats["handed_back"], stats["workers_lost"], stats["reassigned"]) == (1, 0, 0)


def test_worker_reconnects_to_restarted_coordinator(procs: ProcessGroup, clients: Clients) -> None:
    """The coordinator is killed and restarted on its port: the worker comes back by itself."""
    coordinator, address = procs.coordinator(extra=[*FAST_HEARTBEATS])
    procs.worker(address, "w1", slots=1)
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    assert client.wait(client.submit_call("time:sleep", 0.05), timeout=WAIT_S)["state"] == \
        "succeeded"
    coordinator.signal(signal.SIGKILL)
    coordinator.wait(WAIT_S)
    procs.start("c1-again", "tcpsched.coordinator", coordinator.argv[3:])
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    record = client.wait(client.submit_call("time:sleep", 0.05), timeout=WAIT_S)
    assert (record["state"], record["worker"]) == ("succeeded", "w1")


def test_shell_job_dies_with_its_worker(procs: ProcessGroup, clients: Clients,
                                        tmp_path: Path) -> None:
    """kill -9 of a worker also kills its shell job's whole process group (no orphan runs on)."""
    import os

    _, client, workers = start(procs, clients, ["w1"])
    pids = tmp_path / "pids"
    job_id = client.submit_shell(f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait")
    assert running_on(client, job_id) == "w1"
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, WAIT_S,
               what="job pids written")
    job_pids = [int(p) for p in pids.read_text().split()]
    workers["w1"].signal(signal.SIGKILL)

    def gone() -> bool:
        for pid in job_pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                return False
        return True

    wait_until(gone, WAIT_S, what="the job's processes gone after its worker died")
