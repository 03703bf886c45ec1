"""Live output with real processes: `logs --follow` streams a running job's output and exits
with its outcome; `print()` and logging in concurrent `--call` jobs land in their own job.

Every test starts its own coordinator and worker (the worker's isolation matters).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_for_workers
from tests.conftest import connect
from tests.integration.test_peers import start_group, wait_leader

WAIT_S = 60.0
TASKS = "tests.integration.live_tasks"


def start(procs: ProcessGroup, extra: tuple[str, ...] = ()) -> tuple[SyncClient, str]:
    _, address = procs.coordinator()
    procs.worker(address, "w", slots=2, extra=list(extra))
    client = connect(address)
    wait_for_workers(client, ["w"])
    return client, address


class Follow:
    """`python -m tcpsched logs --follow JOB` in the background, its stdout read line by
    line as it comes (by a thread, so a test never blocks on a silent pipe)."""

    def __init__(self, address: str, job_id: str) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcpsched", "--coordinators", address, "logs", "--follow",
             job_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_line(self) -> str:
        return self.lines.get(timeout=WAIT_S)

    def finish(self) -> tuple[int, str, str]:
        """Exit code, the rest of stdout, stderr."""
        code = self.proc.wait(WAIT_S)
        self._reader.join(WAIT_S)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        assert self.proc.stderr is not None
        return code, "".join(rest), self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def test_logs_follow_shows_lines_while_the_job_runs_then_exits_with_its_outcome(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """A job printing a line per 100 ms is followed: its first line is read while the job
    still runs (it writes its effects file only after the test opens its gate), and the
    command exits 0 with every line once the job has succeeded."""
    client, address = start(procs)
    gate, done = tmp_path / "gate", tmp_path / "done"
    command = (f"for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done; "
               f"while [ ! -f {gate} ]; do sleep 0.05; done; echo last; touch {done}")
    with client as c:
        job_id = c.submit_shell(command)
        follow = Follow(address, job_id)
        try:
            assert follow.next_line() == "line 1\n"
            assert not done.exists()
            assert c.status(job_id)["state"] == "running"
            gate.touch()
            code, rest, err = follow.finish()
        finally:
            follow.close()
        assert code == 0, err
        assert rest == "line 2\nline 3\nline 4\nline 5\nlast\n"
        assert c.status(job_id)["state"] == "succeeded"


def test_logs_follow_of_a_failing_job_exits_1_with_its_output(procs: ProcessGroup) -> None:
    """A failing job's output streams (stdout to stdout, stderr to stderr) and the command
    exits 1, saying the job failed."""
    client, address = start(procs)
    with client as c:
        job_id = c.submit_shell("echo oops; echo bad >&2; exit 3")
        follow = Follow(address, job_id)
        try:
            code, rest, err = follow.finish()
        finally:
            follow.close()
    assert code == 1
    assert rest == "oops\n"
    assert err.startswith("bad\n") and f"error: job {job_id} failed" in err


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_print_in_two_concurrent_call_jobs_lands_in_each_jobs_output(
        procs: ProcessGroup, tmp_path: Path, isolation: str) -> None:
    """Two `--call` jobs running at once in one worker print and log interleaved; each job's
    stdout and stderr hold only its own lines, whole and in order; following one streams only
    its own lines too."""
    client, address = start(procs, ("--isolation", isolation))
    a_runs, b_runs = str(tmp_path / "a"), str(tmp_path / "b")
    with client as c:
        a = c.submit_call(f"{TASKS}:speak", "A", a_runs, b_runs)
        b = c.submit_call(f"{TASKS}:speak", "B", b_runs, a_runs)
        follow = Follow(address, a)
        try:
            code, rest, err = follow.finish()
        finally:
            follow.close()
        records = {r["id"]: r for r in c.wait_records([a, b], timeout=WAIT_S)}
    assert code == 0, err
    assert rest == "".join(f"A {i}\n" for i in range(200))
    for job_id, tag in ((a, "A"), (b, "B")):
        record = records[job_id]
        assert record["state"] == "succeeded", record
        assert record["stdout"] == "".join(f"{tag} {i}\n" for i in range(200))
        errs = record["stderr"].splitlines()
        assert [e for e in errs if " err " in e] == [f"{tag} err {i}" for i in range(0, 200, 50)]
        assert [e for e in errs if "logged" in e] == [
            f"WARNING:speak:{tag} logged {i}" for i in range(0, 200, 50)]


def test_logs_follow_goes_on_across_a_leader_failover(procs: ProcessGroup,
                                                      tmp_path: Path) -> None:
    """The leader is killed while a followed job runs: the reader finds the new leader, goes
    on from its offsets, and exits 0 with the job's last line once it has succeeded."""
    group, addresses = start_group(procs)
    procs.worker(addresses, "w", slots=1)
    wait_leader(addresses, 3)
    gate = tmp_path / "gate"
    with SyncClient(addresses) as client:
        wait_for_workers(client, ["w"])
        job_id = client.submit_shell(
            f"echo before; while [ ! -f {gate} ]; do sleep 0.05; done; echo after")
    follow = Follow(addresses, job_id)
    try:
        assert follow.next_line() == "before\n"
        group[3][0].signal(signal.SIGKILL)
        wait_leader(addresses, 2)
        gate.touch()
        code, rest, err = follow.finish()
    finally:
        follow.close()
    assert code == 0, err
    assert rest.endswith("after\n"), rest
