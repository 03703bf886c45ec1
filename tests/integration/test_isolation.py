"""Python callables in child processes (`--isolation process`) and in threads: timeouts kill,
cores are used, memory is bounded, output is captured, and slots are never oversubscribed.

Every test starts its own coordinator and worker (the shape matters: slots, flags).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect
from tests.integration.test_jobs import alive

WAIT_S = 60.0
TASKS = "tests.integration.isolation_tasks"
CHILD_MARKER = b"tcpsched_callchild"  # in every call process's command line


def start(procs: ProcessGroup, slots: int = 1, extra: tuple[str, ...] = ()
          ) -> tuple[SyncClient, int]:
    """A coordinator and worker `w` with `slots`; the client and the worker's pid."""
    _, address = procs.coordinator()
    worker = procs.worker(address, "w", slots=slots, extra=list(extra))
    client = connect(address)
    wait_for_workers(client, ["w"])
    return client, worker.pid


def test_a_call_spinning_past_its_timeout_is_killed_and_its_process_replaced(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """A call that never returns is killed at its timeout: its process is gone, the slot is
    free, and the next job runs in a fresh process."""
    client, _ = start(procs)
    pid_file = tmp_path / "spinner.pid"
    with client as c:
        record = c.wait(c.submit_call(f"{TASKS}:spin", str(pid_file), timeout=1),
                        timeout=WAIT_S)
        assert record["state"] == "failed" and record["error"] == "timed out after 1s"
        spinner = int(pid_file.read_text())
        wait_until(lambda: not alive(spinner, CHILD_MARKER), WAIT_S, what="the spinner to die")
        assert [w["running"] for w in c.workers()] == [0]
        after = c.wait(c.submit_call(f"{TASKS}:pid", timeout=30), timeout=WAIT_S)
    assert after["state"] == "succeeded", after
    assert after["result"] != spinner


def test_cpu_bound_calls_on_two_slots_use_both_cores(procs: ProcessGroup) -> None:
    """Two CPU-bound calls at once take clearly less than the two one after the other.

    The two cores are shared with whatever else runs, so a round where something else took
    a core is tried again (up to three rounds); threads sharing one GIL would never pass."""
    client, _ = start(procs, slots=2)
    rounds = 8_000_000
    ratios = []
    with client as c:
        c.gather([c.submit_call(f"{TASKS}:burn", 10) for _ in range(2)], timeout=WAIT_S)
        for _ in range(3):
            serial = 0.0
            for _ in range(2):
                r = c.wait(c.submit_call(f"{TASKS}:burn", rounds), timeout=WAIT_S)
                serial += r["finished_at"] - r["started_at"]
            both = c.gather([c.submit_call(f"{TASKS}:burn", rounds) for _ in range(2)],
                            timeout=WAIT_S)
            assert {r["state"] for r in both} == {"succeeded"}
            parallel = (max(r["finished_at"] for r in both)
                        - min(r["started_at"] for r in both))
            ratios.append(parallel / serial)
            if ratios[-1] < 0.8:
                break
    assert min(ratios) < 0.8, ratios


def test_a_call_over_the_memory_limit_fails_only_its_job(procs: ProcessGroup) -> None:
    """--max-memory: a call that allocates past it fails saying so; the next job runs."""
    client, _ = start(procs, extra=("--max-memory", "256"))
    with client as c:
        first = c.wait(c.submit_call(f"{TASKS}:pid"), timeout=WAIT_S)
        hog = c.wait(c.submit_call(f"{TASKS}:hog", 1024), timeout=WAIT_S)
        after = c.wait(c.submit_call(f"{TASKS}:pid"), timeout=WAIT_S)
        small = c.wait(c.submit_call(f"{TASKS}:hog", 16), timeout=WAIT_S)
    assert hog["state"] == "failed" and "--max-memory" in hog["error"], hog
    assert "256 MiB" in hog["error"]
    assert after["state"] == "succeeded" and after["result"] != first["result"]
    assert small["state"] == "succeeded" and small["result"] == 16 * 1024 * 1024


def test_a_call_whose_process_dies_fails_only_its_job(procs: ProcessGroup) -> None:
    """A call that ends its own process fails with how it died; the next job runs."""
    client, _ = start(procs)
    with client as c:
        died = c.wait(c.submit_call("os:_exit", 3), timeout=WAIT_S)
        killed = c.wait(c.submit_call("os:kill", 0, int(signal.SIGKILL)), timeout=WAIT_S)
        after = c.wait(c.submit_call("operator:add", 1, 2), timeout=WAIT_S)
    assert died["state"] == "failed" and "died (exit code 3)" in died["error"], died
    assert killed["state"] == "failed" and "killed by SIGKILL" in killed["error"], killed
    assert after["state"] == "succeeded" and after["result"] == 3


def test_print_and_logging_in_a_call_land_in_its_output(procs: ProcessGroup) -> None:
    """print() goes to the job's stdout (or stderr), and logging to its stderr."""
    client, _ = start(procs)
    with client as c:
        record = c.wait(c.submit_call(f"{TASKS}:chatty"), timeout=WAIT_S)
        quiet = c.wait(c.submit_call(f"{TASKS}:pid"), timeout=WAIT_S)
    assert record["state"] == "succeeded" and record["result"] == 7
    assert record["stdout"] == "to stdout\n"
    assert record["stderr"] == "to stderr\nWARNING:chatty:logged 42\n"
    assert quiet["stdout"] == quiet["stderr"] == ""


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_coroutine_functions_are_awaited_in_both_modes(procs: ProcessGroup,
                                                       isolation: str) -> None:
    """An async function runs to its result: in a call process (its own loop) or on the
    worker's loop."""
    client, worker_pid = start(procs, extra=("--isolation", isolation))
    with client as c:
        record = c.wait(c.submit_call(f"{TASKS}:async_pid", 0.01), timeout=WAIT_S)
    assert record["state"] == "succeeded", record
    if isolation == "thread":
        assert record["result"] == worker_pid
    else:
        assert record["result"] != worker_pid


def test_in_thread_mode_a_timed_out_call_holds_its_slot_until_it_returns(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """Thread mode: the job fails at its timeout, but its slot stays taken (and `workers`
    shows it) until the thread returns; only then does the next job start."""
    client, _ = start(procs, extra=("--isolation", "thread"))
    gate = tmp_path / "gate"
    with client as c:
        stuck = c.wait(c.submit_call(f"{TASKS}:wait_for_file", str(gate), timeout=0.5),
                       timeout=WAIT_S)
        assert stuck["state"] == "failed" and stuck["error"] == "timed out after 0.5s"
        (row,) = c.workers()
        assert row["running"] == 1 and row["held"] == 1, row
        later = c.submit_call("operator:add", 1, 2)
        assert c.status(later)["state"] == "pending"  # a free slot would have taken it at once
        gate.touch()
        opened = gate.stat().st_mtime
        record = c.wait(later, timeout=WAIT_S)
        assert record["state"] == "succeeded" and record["started_at"] >= opened - 0.05
        wait_until(lambda: c.workers()[0]["held"] == 0, WAIT_S, what="the held slot to free")


def test_call_processes_die_with_a_killed_worker(procs: ProcessGroup) -> None:
    """kill -9 of the worker leaves no call process behind."""
    client, worker_pid = start(procs, slots=2)
    with client as c:
        pids = {r["result"] for r in c.gather(
            [c.submit_call(f"{TASKS}:async_pid", 0.2) for _ in range(2)], timeout=WAIT_S)}
    assert worker_pid not in pids and pids
    assert all(alive(p, CHILD_MARKER) for p in pids)
    procs.procs[-1].signal(signal.SIGKILL)
    wait_until(lambda: not any(alive(p, CHILD_MARKER) for p in pids), WAIT_S,
               what="the call processes to die")
