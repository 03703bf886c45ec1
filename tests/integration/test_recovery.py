"""Nothing acknowledged is lost: real coordinators killed with SIGKILL and restarted on their
data directory, and the offline `--check` run as a real command."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tcpsched.errors import TcpschedError
from tcpsched.runtime.journal_lines import list_segments
from tcpsched.testing.processes import Proc, ProcessGroup, free_port, wait_until
from tests.conftest import connect

WAIT_S = 120.0  # generous: two shared cores, other suites running beside us


def kill9(proc: Proc) -> None:
    proc.signal(signal.SIGKILL)
    proc.wait(30)


def run_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcpsched.coordinator", "--check",
                           "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_thousand_queued_jobs_survive_kill9_and_then_run(procs: ProcessGroup) -> None:
    """1,000 jobs submitted with no worker survive kill -9 of the coordinator; after a restart
    on the same data directory (a new epoch) they are all there and all run."""
    port = free_port()
    first, address = procs.coordinator(port=port, name="c1-first")
    client = connect(address)
    ids = client.map("operator:add", [(i, 1) for i in range(999)])
    ids.append(client.submit_call("operator:concat", b"\x00\xff", b"\n"))
    assert client.stats()["pending"] == 1000
    epoch = client.leader()["epoch"]
    client.close()
    kill9(first)

    _, address = procs.coordinator(port=port, name="c1-second")
    client = connect(address)
    stats = client.stats()
    assert stats["pending"] == 1000 and stats["journal_seq"] >= 1000
    assert client.leader()["epoch"] == epoch + 1
    assert {r["id"] for r in client.list(state="pending", limit=2000)} == set(ids)
    procs.worker(address, "w1", slots=8)
    records = client.gather(ids, timeout=WAIT_S)
    assert [r["state"] for r in records] == ["succeeded"] * 1000
    assert [r["result"] for r in records[:999]] == [i + 1 for i in range(999)]
    assert records[999]["result"] == b"\x00\xff\n"  # bytes survive the journal both ways
    client.close()


@pytest.mark.parametrize("fsync", ["always", "batch"])
def test_kill9_during_a_submit_burst_keeps_every_acknowledged_job(procs: ProcessGroup,
                                                                  fsync: str) -> None:
    """kill -9 while a client submits as fast as it can: every submit that was acknowledged
    is there after the restart (the reply leaves only after the record is written)."""
    port = free_port()
    first, address = procs.coordinator(port=port, name="c1-first", extra=["--fsync", fsync])
    connect(address).close()
    acknowledged: list[str] = []
    stopped = threading.Event()

    def burst() -> None:
        client = connect(address, timeout=2.0)
        try:
            while True:
                acknowledged.extend(client.map("operator:add", [(1, 2)] * 20))
        except TcpschedError:
            pass
        finally:
            stopped.set()
            client.close()

    thread = threading.Thread(target=burst, daemon=True)
    thread.start()
    wait_until(lambda: len(acknowledged) >= 2000, WAIT_S, what="2000 acknowledged submits")
    kill9(first)
    assert stopped.wait(WAIT_S)
    thread.join(WAIT_S)

    _, address = procs.coordinator(port=port, name="c1-second", extra=["--fsync", fsync])
    client = connect(address)
    present = {r["id"] for r in client.list(limit=1_000_000)}
    missing = set(acknowledged) - present
    assert not missing, f"{len(missing)} acknowledged job(s) lost"
    client.close()


def test_a_job_running_at_the_crash_stays_with_its_worker(procs: ProcessGroup,
                                                          tmp_path: Path) -> None:
    """A job running when the coordinator died is kept by its worker when it re-registers
    after the restart, and finishes once (attempt 1), not run again."""
    port = free_port()
    first, address = procs.coordinator(port=port, name="c1-first",
                                       extra=["--heartbeat-timeout", "10"])
    client = connect(address)
    procs.worker(address, "w1", slots=1)
    flag = tmp_path / "go"
    job = client.submit_shell(f"while [ ! -e {flag} ]; do sleep 0.05; done; echo done")
    wait_until(lambda: client.status(job)["state"] == "running", WAIT_S, what="job running")
    client.close()
    kill9(first)

    _, address = procs.coordinator(port=port, name="c1-second",
                                   extra=["--heartbeat-timeout", "10"])
    client = connect(address)
    wait_until(lambda: any(w["name"] == "w1" and w["state"] == "alive"
                           for w in client.workers()), WAIT_S, what="w1 registered again")
    flag.touch()
    record = client.wait(job, timeout=WAIT_S)
    assert record["state"] == "succeeded" and record["attempts"] == 1
    assert record["stdout"] == "done\n"
    client.close()


def test_a_job_that_finished_while_the_coordinator_was_down_is_not_run_again(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """A job that finishes while its coordinator is dead is reported by its worker on
    re-registration (result unacknowledged), so the restarted coordinator takes the result
    instead of running the job again."""
    port = free_port()
    first, address = procs.coordinator(port=port, name="c1-first")
    client = connect(address)
    procs.worker(address, "w1", slots=1)
    flag, runs = tmp_path / "go", tmp_path / "runs"
    job = client.submit_shell(f"echo run >> {runs}; while [ ! -e {flag} ]; do sleep 0.05; "
                              "done; echo done")
    wait_until(lambda: client.status(job)["state"] == "running", WAIT_S, what="job running")
    client.close()
    kill9(first)
    flag.touch()  # the job ends while no coordinator is there to hear of it

    _, address = procs.coordinator(port=port, name="c1-second")
    client = connect(address)
    record = client.wait(job, timeout=WAIT_S)
    assert record["state"] == "succeeded" and record["attempts"] == 1
    assert runs.read_text() == "run\n"
    client.close()


def test_sigterm_exits_0_and_check_reports_sound_then_corrupt(procs: ProcessGroup) -> None:
    """After SIGTERM (exit 0) `--check` prints what the directory holds and exits 0; after a
    byte flips in the middle of the journal it exits 1 with one error line naming file and
    line, the coordinator refuses to start the same way, and --repair starts it."""
    port = free_port()
    proc, address = procs.coordinator(port=port, name="c1-first")
    client = connect(address)
    client.map("operator:add", [(i, 1) for i in range(50)], batch_size=1)
    client.close()
    assert procs.stop(proc) == 0
    data_dir = procs.workdir / "c1"

    result = run_check(data_dir)
    assert result.returncode == 0, result.stderr
    assert "jobs: 50 (pending=50 " in result.stdout and "ok: sound" in result.stdout
    # 50 submits and the epoch record the coordinator wrote when it became the leader.
    assert "last sequence number: 51 " in result.stdout and result.stderr == ""

    (_, segment), = list_segments(data_dir)
    lines = segment.read_bytes().split(b"\n")
    lines[24] = lines[24].replace(b'"op":"submit"', b'"op":"submiT"')
    segment.write_bytes(b"\n".join(lines))
    result = run_check(data_dir)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"{segment}:25:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    refused = procs.coordinator(port=port, name="c1-refused")[0]
    assert refused.wait(60) != 0
    log = refused.log()
    assert f"{segment}:25: checksum mismatch" in log and "Traceback" not in log

    _, address = procs.coordinator(port=port, name="c1-repaired", extra=["--repair"])
    client = connect(address)
    # The journal opens with the promise line and the epoch entry: line 25 is submit 23.
    assert client.stats()["pending"] == 22
    client.close()
    assert wait_until(lambda: list(segment.parent.glob("*.cut-at-*")), 10, what="cut copy")


def test_jobs_survive_kill9_after_compactions_while_serving(procs: ProcessGroup) -> None:
    """With a tiny compaction threshold the coordinator snapshots several times while jobs
    arrive and run; after kill -9 the restarted one holds exactly the same jobs."""
    port = free_port()
    extra = ["--compact-records", "50"]
    first, address = procs.coordinator(port=port, name="c1-first", extra=extra)
    client = connect(address)
    procs.worker(address, "w1", slots=4)
    ran = client.map("operator:mul", [(i, 2) for i in range(300)], batch_size=10)
    client.gather(ran, timeout=WAIT_S)
    queued = client.map("operator:mul", [(i, 3) for i in range(200)], batch_size=10)
    wait_until(lambda: client.stats()["compactions"] >= 3, WAIT_S, what="compactions")
    assert procs.stop(procs.procs[1]) == 0  # the worker drains: then nothing changes
    wait_until(lambda: client.stats()["running"] == 0, WAIT_S, what="no job running")
    before = {r["id"]: (r["state"], r["result"]) for r in client.list(limit=10_000)}
    client.close()
    kill9(first)

    _, address = procs.coordinator(port=port, name="c1-second", extra=extra)
    client = connect(address)
    after = {r["id"]: (r["state"], r["result"]) for r in client.list(limit=10_000)}
    assert after == before and set(ran) | set(queued) <= set(after)
    client.close()
