"""Prefetch with real processes (`--prefetch N`): workers hold jobs beyond their slots, and
every job still runs exactly once, also when its worker dies or the job is cancelled while it
waits there. Effects files count real runs."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.core.jobs import JobSpec
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 30.0  # generous: two shared cores, other suites running beside us
FAST_HEARTBEATS = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0"]
RECORD = "tests.integration.prefetch_tasks:record"


@pytest.fixture
def client(procs: ProcessGroup) -> Iterator[SyncClient]:
    """A coordinator with fast heartbeats, and a client of it (closed at teardown)."""
    _, address = procs.coordinator(extra=[*FAST_HEARTBEATS, "--seed", "5"])
    made = connect(address)
    made.address_for_workers = address  # type: ignore[attr-defined]
    try:
        yield made
    finally:
        made.close()


def runs(effects: Path) -> list[str]:
    return effects.read_text().split() if effects.exists() else []


def call(function: str, *args: object) -> JobSpec:
    return JobSpec(kind="call", function=function, args=args)


def held_by(client: SyncClient, name: str, count: int) -> None:
    """Wait until worker `name` holds `count` jobs beyond its slots."""
    wait_until(lambda: any(w["name"] == name and w["prefetched"] == count
                           for w in client.workers()), WAIT_S,
               what=f"worker {name} holding {count} prefetched job(s)")


def test_with_prefetch_every_job_runs_exactly_once(procs: ProcessGroup, client: SyncClient,
                                                   tmp_path: Path) -> None:
    """Many short jobs through two one-slot workers with a lookahead of 3: each runs once."""
    address = client.address_for_workers  # type: ignore[attr-defined]
    for name in ("w1", "w2"):
        procs.worker(address, name, slots=1, extra=["--prefetch", "3"])
    wait_for_workers(client, ["w1", "w2"], timeout=WAIT_S)
    effects = tmp_path / "effects"
    tokens = [f"t{i}" for i in range(200)]
    ids = client.map(RECORD, [(str(effects), token) for token in tokens])
    records = client.gather(ids, timeout=WAIT_S)
    assert [r["state"] for r in records] == ["succeeded"] * len(tokens)
    assert sorted(runs(effects)) == sorted(tokens)
    assert {r["worker"] for r in records} == {"w1", "w2"}


def test_kill9_of_a_worker_holding_prefetched_jobs_runs_them_elsewhere(
        procs: ProcessGroup, client: SyncClient, tmp_path: Path) -> None:
    """kill -9 of a worker with one job running and two waiting in its lookahead: all three
    are requeued and run on the other worker; the waiting ones ran nowhere before."""
    address = client.address_for_workers  # type: ignore[attr-defined]
    w1 = procs.worker(address, "w1", slots=1, extra=["--prefetch", "2"])
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    effects = tmp_path / "effects"
    # One batch: the first job takes the slot; its result opens w1's lookahead, which takes
    # the next ones from the queue (the blocker into the slot, the other two to wait).
    _first, blocker, *waiting = client.submit_many([
        call(RECORD, str(effects), "first"), call("time:sleep", 60.0),
        call(RECORD, str(effects), "a"), call(RECORD, str(effects), "b")])
    held_by(client, "w1", 2)
    assert all(client.status(j)["started_at"] is None for j in waiting)
    procs.worker(address, "w2", slots=2, extra=["--prefetch", "2"])
    wait_for_workers(client, ["w2"], timeout=WAIT_S)
    w1.signal(signal.SIGKILL)
    records = client.gather(waiting, timeout=WAIT_S)
    assert [(r["state"], r["worker"], r["attempts"]) for r in records] == [
        ("succeeded", "w2", 2)] * 2
    assert sorted(runs(effects)) == ["a", "b", "first"]
    moved = client.status(blocker)
    assert (moved["state"], moved["worker"], moved["attempts"]) == ("running", "w2", 2)
    client.cancel(blocker)


def test_a_cancelled_prefetched_job_never_runs(procs: ProcessGroup, client: SyncClient,
                                               tmp_path: Path) -> None:
    """Cancel of a job waiting in a worker's lookahead: it is cancelled, the worker drops it
    unrun, and the jobs after it run."""
    address = client.address_for_workers  # type: ignore[attr-defined]
    procs.worker(address, "w1", slots=1, extra=["--prefetch", "2"])
    wait_for_workers(client, ["w1"], timeout=WAIT_S)
    effects = tmp_path / "effects"
    _first, blocker, doomed = client.submit_many([
        call(RECORD, str(effects), "first"), call("time:sleep", 60.0),
        call(RECORD, str(effects), "doomed")])
    held_by(client, "w1", 1)
    assert client.cancel(doomed)["state"] == "cancelled"
    assert client.cancel(blocker)["state"] == "cancelled"
    after = client.submit_call(RECORD, str(effects), "after")
    assert client.wait(after, timeout=WAIT_S)["state"] == "succeeded"
    assert client.status(doomed)["state"] == "cancelled"
    assert runs(effects) == ["first", "after"]
