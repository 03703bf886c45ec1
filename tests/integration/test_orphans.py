"""A shell job leaves nothing running: not in its process group, and not outside it either
(`setsid`, a double fork), when it ends, and when its worker is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 60.0


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def read_pids(path: Path, count: int) -> list[int] | None:
    try:
        pids = [int(p) for p in path.read_text().split()]
    except (OSError, ValueError):
        return None
    return pids if len(pids) >= count else None


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """Where jobs write the pids of what they start; whatever is left is killed at the end."""
    path = tmp_path / "pids"
    try:
        yield path
    finally:
        for pid in read_pids(path, 0) or []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# Three ways out of the job's process group: setsid in the background; a subshell that starts
# it and exits at once (double fork, so it is re-parented); a nested shell under setsid.
ESCAPES = ("setsid sleep 305 & echo $! >> {f}; "
           "(setsid sleep 306 & echo $! >> {f}); "
           "setsid sh -c 'sleep 307 & echo $! >> {f}; wait' & "
           "until [ $(wc -l < {f}) -ge 3 ]; do sleep 0.01; done; echo done")


def test_processes_that_leave_the_jobs_group_die_with_the_job(procs: ProcessGroup,
                                                              pid_file: Path) -> None:
    """A job that ends leaves no process behind, even ones in a session of their own."""
    _, address = procs.coordinator()
    procs.worker(address, "w1")
    with connect(address) as client:
        wait_for_workers(client, ["w1"])
        record = client.wait(client.submit_shell(ESCAPES.format(f=pid_file)), timeout=WAIT_S)
        assert record["state"] == "succeeded" and record["stdout"] == "done\n"
        pids = read_pids(pid_file, 3)
        assert pids is not None
        wait_until(lambda: not any(running(p) for p in pids), WAIT_S,
                   what="the escaped processes gone")
        # And the worker goes on running jobs.
        assert client.wait(client.submit_shell("true"), timeout=WAIT_S)["state"] == "succeeded"


def test_escaped_processes_die_with_a_killed_worker(procs: ProcessGroup, pid_file: Path
                                                    ) -> None:
    """kill -9 of the worker: its reaper kills the job's group and what escaped it."""
    _, address = procs.coordinator()
    worker = procs.worker(address, "w1")
    with connect(address) as client:
        wait_for_workers(client, ["w1"])
        client.submit_shell(f"setsid sleep 308 & echo $! >> {pid_file}; echo $$ >> {pid_file}; "
                            "sleep 300")
        pids = wait_until(lambda: read_pids(pid_file, 2), WAIT_S, what="the job's pids")
        assert all(running(p) for p in pids)
        worker.signal(signal.SIGKILL)
        wait_until(lambda: not any(running(p) for p in pids), WAIT_S,
                   what="the job's processes gone after its worker died")
