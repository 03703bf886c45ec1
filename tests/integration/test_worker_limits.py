"""What a worker agrees to run and send, against real processes on 127.0.0.1.

`--allow-call` cannot be walked out of the allowed module; a result the coordinator would
refuse fails its attempt instead of wedging the worker; a second worker under a live worker's
name is refused (exit 2, one line) while the same process reconnecting is not; jobs go only
to workers that run their kind, and a job nobody can run stays pending and says why.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 60.0  # generous: two shared cores, other suites running beside us
EXIT_S = 30.0
TASKS = "tests.integration.allowed_tasks"
# Long enough that no worker turns suspect during a test: a refusal or an acceptance of a
# second registration can then only come from the name rule, never from a missed beat.
SLOW_BEATS = ["--heartbeat-interval", "5", "--heartbeat-timeout", "60"]


def test_allow_call_does_not_leave_the_allowed_module(procs: ProcessGroup, tmp_path: Path
                                                      ) -> None:
    """With `--no-shell --allow-call MODULE`, MODULE:os.system and MODULE:system (imported
    from os) never run a command, and MODULE:double still runs."""
    _, address = procs.coordinator()
    procs.worker(address, "strict", extra=["--no-shell", "--allow-call", f"{TASKS}:"])
    marker = tmp_path / "escaped"
    with connect(address) as client:
        wait_for_workers(client, ["strict"])
        assert client.wait(client.submit_call(f"{TASKS}:double", 21), timeout=WAIT_S)[
            "result"] == 42
        imported = client.wait(client.submit_call(f"{TASKS}:system", f"touch {marker}"),
                               timeout=WAIT_S)
        assert imported["state"] == "failed"
        assert "defined in posix" in imported["error"], imported["error"]
        walked = client.submit_call(f"{TASKS}:os.system", f"touch {marker}")
        dunder = client.submit_call(f"{TASKS}:__builtins__", f"touch {marker}")
        for job_id in (walked, dunder):
            record = wait_until(lambda j=job_id: (r := client.status(j))["reason"] and r,
                                WAIT_S, what="a reason")
            assert record["state"] == "pending"
            assert "does not allow" in record["reason"], record["reason"]
        # Still served: a legitimate job after the refused ones runs.
        assert client.wait(client.submit_call(f"{TASKS}:double", 2), timeout=WAIT_S)[
            "result"] == 4
    assert not marker.exists()


def test_oversized_result_fails_its_attempt_and_the_worker_keeps_serving(
        procs: ProcessGroup) -> None:
    """A result with more array items than the coordinator accepts fails its attempt with a
    clear error; the worker stays registered and runs the next job."""
    _, address = procs.coordinator()
    worker = procs.worker(address, "only", slots=1)
    with connect(address) as client:
        wait_for_workers(client, ["only"])
        big = client.submit_call("builtins:str.split", " ".join(["a"] * 250_000))
        record = client.wait(big, timeout=WAIT_S)
        assert record["state"] == "failed"
        assert "result cannot be sent" in record["error"]
        assert "250000 items" in record["error"] and "--max-array-items" in record["error"]
        after = client.wait(client.submit_call("math:sqrt", 16), timeout=WAIT_S)
        assert after["state"] == "succeeded" and after["worker"] == "only"
        assert after["result"] == 4.0
    assert worker.log().count("registered with") == 1  # never cut off and back


def test_second_worker_with_a_live_name_is_refused(procs: ProcessGroup) -> None:
    """A second process under the name of a live worker exits 2 with one error line; the
    first keeps its name and runs jobs."""
    _, address = procs.coordinator(extra=SLOW_BEATS)
    first = procs.worker(address, "same")
    with connect(address) as client:
        wait_for_workers(client, ["same"])
        second = procs.start("same-2", "tcpsched.worker",
                             ["--coordinators", address, "--name", "same"])
        assert second.wait(EXIT_S) == 2
        errors = [line for line in second.log().splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "is in use by a live worker" in errors[0], second.log()
        assert "Traceback" not in second.log()
        assert first.alive()
        assert [w["name"] for w in client.workers()] == ["same"]
        assert client.wait(client.submit_shell("true"), timeout=WAIT_S)["state"] == "succeeded"
    assert first.log().count("registered with") == 1


class CuttableRelay:
    """A TCP relay to one address; `cut_clients` closes the sides facing the dialers and
    leaves the sides facing the server open, as a connection lost on one side only is."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()  # the dialer sees a closed connection and tries again
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def cut_clients(self) -> None:
        with self.lock:
            for client, _upstream in self.pairs:
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                client.close()

    def close(self) -> None:
        self.stopped = True
        self.listener.close()
        with self.lock:
            for client, upstream in self.pairs:
                client.close()
                upstream.close()


@pytest.fixture
def relay_to(procs: ProcessGroup) -> Iterator[list[CuttableRelay]]:
    relays: list[CuttableRelay] = []
    try:
        yield relays
    finally:
        for relay in relays:
            relay.close()


def test_same_worker_reconnecting_keeps_its_name(procs: ProcessGroup,
                                                 relay_to: list[CuttableRelay]) -> None:
    """A worker whose connection dies on its side only reconnects while the coordinator still
    holds the old connection as alive: it proves it is the same process and is taken back."""
    _, address = procs.coordinator(extra=SLOW_BEATS)
    relay = CuttableRelay(address)
    relay_to.append(relay)
    with connect(address) as client:
        worker = procs.worker(relay.address, "flaky")
        wait_for_workers(client, ["flaky"])
        relay.cut_clients()
        wait_until(lambda: worker.log().count("registered with") == 2, WAIT_S,
                   what="the worker to register again")
        assert worker.alive()
        assert "refused" not in worker.log()
        (row,) = client.workers()
        assert row["name"] == "flaky" and row["state"] == "alive"
        assert client.wait(client.submit_shell("true"), timeout=WAIT_S)["worker"] == "flaky"


def test_jobs_go_only_to_workers_that_run_them(procs: ProcessGroup) -> None:
    """Shell jobs skip a --no-shell worker for one that runs them, without failing or using a
    retry; with no such worker left a shell job stays pending with a reason, and runs once
    one registers again."""
    _, address = procs.coordinator()
    procs.worker(address, "w1", slots=2)
    w2 = procs.worker(address, "w2", slots=2, extra=["--no-shell", "--allow-call", "math"])
    with connect(address) as client:
        wait_for_workers(client, ["w1", "w2"])
        ids = [client.submit_shell("true", retries=0) for _ in range(10)]
        records = client.gather(ids, timeout=WAIT_S)
        assert {(r["state"], r["worker"], r["attempts"]) for r in records} == {
            ("succeeded", "w1", 1)}
        assert client.wait(client.submit_call("math:sqrt", 9), timeout=WAIT_S)["result"] == 3.0
        procs.stop(procs.procs[1])  # w1 drains and leaves
        wait_until(lambda: [w["name"] for w in client.workers() if w["state"] == "alive"]
                   == ["w2"], WAIT_S, what="w1 gone")
        stuck = client.submit_shell("echo ran")
        record = wait_until(lambda: (r := client.status(stuck))["reason"] and r, WAIT_S,
                            what="a reason")
        assert record["state"] == "pending" and record["attempts"] == 0
        assert "no live worker can run it" in record["reason"]
        assert "w2 does not run shell jobs" in record["reason"]
        procs.worker(address, "w3", slots=1)
        done = client.wait(stuck, timeout=WAIT_S)
        assert (done["state"], done["worker"], done["stdout"]) == ("succeeded", "w3", "ran\n")
        assert client.status(stuck)["reason"] is None
    assert w2.alive()
