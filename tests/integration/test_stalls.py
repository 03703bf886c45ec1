"""The leader under load and under a stepped wall clock: real processes on 127.0.0.1.

A busy leader must never declare a healthy worker dead (so no job runs twice): reads of a
50,000-job table and one big submit batch are worked off a bounded amount per loop turn, and
the failure detector does not count the leader's own stalls as a worker's silence. A probe
worker (`tcpsched.testing.probe`, a process of its own) heartbeats throughout. The wall clock
of a coordinator stepped an hour either way moves no timer.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator

import pytest

from tcpsched import Client
from tcpsched.client_sync import SyncClient
from tcpsched.core.jobs import JobSpec
from tcpsched.testing.processes import Proc, ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 60.0
TABLE_JOBS = 50_000
PREFIXES = 2000
LISTS = 4


@pytest.fixture
def clients() -> Iterator[list[SyncClient]]:
    made: list[SyncClient] = []
    try:
        yield made
    finally:
        for client in made:
            client.close()


def start_probe(procs: ProcessGroup, address: str) -> Proc:
    probe = procs.start("probe", "tcpsched.testing.probe", [address])
    wait_until(lambda: "ready" in probe.log(), WAIT_S, what="probe registered")
    return probe


def probe_figures(procs: ProcessGroup, probe: Proc) -> dict[str, object]:
    procs.stop(probe)
    lines = [line for line in probe.log().splitlines() if line.startswith("{")]
    assert lines, probe.log()
    return json.loads(lines[-1])


async def fill(address: str, jobs: int, batch_size: int) -> list[str]:
    async with Client(address) as client:
        specs = (JobSpec(kind="shell", command=f"echo {i}", delay=3600.0) for i in range(jobs))
        return await client.submit_many(specs, batch_size=batch_size)


async def read_load(address: str, ids: list[str]) -> tuple[int, list[int]]:
    """One wait naming PREFIXES jobs by 8-character prefixes, with LISTS big lists at once."""
    async def one_list() -> int:
        async with Client(address, connect_timeout=WAIT_S) as client:
            return len(await client.list(limit=100_000))

    async with Client(address, connect_timeout=WAIT_S) as client:
        refs = [job_id[:8] for job_id in ids[::len(ids) // PREFIXES][:PREFIXES]]
        waited, *listed = await asyncio.gather(client.wait_records(refs, timeout=0),
                                               *(one_list() for _ in range(LISTS)))
    return len(waited), listed


def test_reads_of_a_50000_job_table_kill_no_worker(procs: ProcessGroup,
                                                   clients: list[SyncClient]) -> None:
    """A 2,000-prefix wait and concurrent 100,000-record lists over 50,000 jobs: no worker is
    declared dead, and the job running meanwhile runs once."""
    _, address = procs.coordinator(extra=["--fsync", "never", "--seed", "1"])
    procs.worker(address, "w1", slots=1)
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    ids = asyncio.run(fill(address, TABLE_JOBS, 5000))
    probe = start_probe(procs, address)
    job = client.submit_call("time:sleep", 3.0)
    wait_until(lambda: client.status(job)["state"] == "running", WAIT_S, what="job running")
    waited, listed = asyncio.run(read_load(address, ids))
    assert waited == PREFIXES and listed == [TABLE_JOBS + 1] * LISTS
    record = client.wait(job, timeout=WAIT_S)
    figures = probe_figures(procs, probe)
    assert figures["closed"] is None, figures
    assert record["state"] == "succeeded" and record["attempts"] == 1
    assert client.stats()["workers_lost"] == 0


def test_one_big_submit_batch_kills_no_worker(procs: ProcessGroup,
                                              clients: list[SyncClient]) -> None:
    """30,000 delayed jobs in one submit (about 2 s of work) while a worker runs a job with
    a 1 s heartbeat timeout: the batch is acknowledged whole, and nobody is declared dead."""
    _, address = procs.coordinator(extra=["--fsync", "never", "--seed", "1",
                                          "--heartbeat-interval", "0.2",
                                          "--heartbeat-timeout", "1.0"])
    procs.worker(address, "w1", slots=1)
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    probe = start_probe(procs, address)
    job = client.submit_call("time:sleep", 2.0)
    wait_until(lambda: client.status(job)["state"] == "running", WAIT_S, what="job running")
    ids = asyncio.run(fill(address, 30_000, 30_000))
    assert len(set(ids)) == 30_000
    record = client.wait(job, timeout=WAIT_S)
    assert probe_figures(procs, probe)["closed"] is None
    assert record["state"] == "succeeded" and record["attempts"] == 1
    stats = client.stats()
    assert stats["workers_lost"] == 0 and stats["pending"] == 30_000


def start_stepped(procs: ProcessGroup, clients: list[SyncClient], names: list[str]
                  ) -> tuple[Proc, SyncClient, dict[str, Proc]]:
    from tcpsched.testing.processes import free_port

    address = f"127.0.0.1:{free_port()}"
    coordinator = procs.start("c1", "tests.integration.clockstep", [
        "--id", "1", "--listen", address, "--data-dir", str(procs.workdir / "c1"),
        "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0", "--seed", "2"])
    workers = {name: procs.worker(address, name, slots=2) for name in names}
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, names, timeout=WAIT_S)
    return coordinator, client, workers


def step_wall_clock(coordinator: Proc, client: SyncClient, sig: int) -> None:
    """Step the coordinator's wall clock and wait until a record shows it."""
    import time

    before = client.status(client.submit_shell("true"))["submitted_at"]
    coordinator.signal(sig)
    direction = 1 if sig == signal.SIGUSR1 else -1

    def stepped() -> bool:
        now = client.status(client.submit_shell("true"))["submitted_at"]
        return direction * (now - time.time()) > 1800 and direction * (now - before) > 1800

    wait_until(stepped, WAIT_S, what="the coordinator's wall clock stepped")


def test_wall_clock_step_forward_declares_nobody_dead_and_runs_no_delay_early(
        procs: ProcessGroup, clients: list[SyncClient]) -> None:
    """+1 h on the coordinator's wall clock: both workers stay alive, the running job is not
    run again, and a job delayed by 10 minutes does not start."""
    coordinator, client, _ = start_stepped(procs, clients, ["w1", "w2"])
    running = client.submit_call("time:sleep", 1.5)
    delayed = client.submit_shell("true", delay=600.0)
    wait_until(lambda: client.status(running)["state"] == "running", WAIT_S, what="running")
    step_wall_clock(coordinator, client, signal.SIGUSR1)
    record = client.wait(running, timeout=WAIT_S)
    assert record["state"] == "succeeded" and record["attempts"] == 1
    later = client.submit_shell("true")
    assert client.wait(later, timeout=WAIT_S)["state"] == "succeeded"
    assert client.status(delayed)["state"] == "pending"
    assert client.stats()["workers_lost"] == 0
    assert {w["state"] for w in client.workers()} == {"alive"}


def test_wall_clock_step_back_still_finds_a_killed_worker_and_runs_delays_on_time(
        procs: ProcessGroup, clients: list[SyncClient]) -> None:
    """-1 h on the coordinator's wall clock: a kill -9'd worker is still declared dead after
    the timeout and its job runs elsewhere, and a 1 s delay still ends after about 1 s."""
    coordinator, client, workers = start_stepped(procs, clients, ["w1", "w2"])
    job = client.submit_call("time:sleep", 30.0, timeout=60.0)
    holder = wait_until(lambda: (r := client.status(job))["state"] == "running" and r["worker"],
                        WAIT_S, what="job running")
    step_wall_clock(coordinator, client, signal.SIGUSR2)
    delayed = client.submit_shell("true", delay=1.0)
    workers[holder].signal(signal.SIGKILL)
    wait_until(lambda: any(w["name"] == holder and w["state"] == "dead"
                           for w in client.workers()), WAIT_S, what=f"{holder} dead")
    wait_until(lambda: client.status(job)["attempts"] == 2, WAIT_S, what="job rerun")
    assert client.status(job)["worker"] != holder
    assert client.wait(delayed, timeout=WAIT_S)["state"] == "succeeded"
