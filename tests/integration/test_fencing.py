"""Epoch fencing with real processes on 127.0.0.1: a coordinator behind its workers' epoch is
told so, says so, and catches up, instead of leaving every job `running` forever."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, free_port, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 30.0  # generous: two shared cores, other suites running beside us
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


def test_a_fresh_coordinator_behind_its_workers_epoch_catches_up(
        procs: ProcessGroup, clients: list[SyncClient]) -> None:
    """A coordinator started on a fresh data dir (epoch 1) while its worker remembers epoch 3:
    the worker's Register says so, the coordinator warns, steps down and is elected again
    at epoch 4 (it is its own majority), and jobs run."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs.worker(address, "w1", slots=1)
    for life in range(3):  # epochs 1, 2, 3 on one data dir, the worker registered with each
        coordinator, _ = procs.coordinator(port, extra=FAST_HEARTBEATS, name=f"c1-{life}")
        client = connect(address)
        clients.append(client)
        assert client.leader()["epoch"] == life + 1
        wait_for_workers(client, ["w1"], timeout=WAIT_S)
        client.close()
        assert procs.stop(coordinator) == 0
    fresh, _ = procs.coordinator(port, name="c1-fresh", extra=[
        *FAST_HEARTBEATS, "--data-dir", str(procs.workdir / "fresh")])
    client = connect(address)
    clients.append(client)
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    job = client.submit_shell("true")
    assert client.wait(job, timeout=WAIT_S)["state"] == "succeeded"
    assert client.leader()["epoch"] == 4
    log = wait_until(lambda: "epoch=4 became leader" in (text := fresh.log()) and text, WAIT_S,
                     what="the coordinator saying it leads at epoch 4")
    assert "worker w1 has seen epoch 3, above ours 1" in log
    assert "behind its cluster" in log
