"""Routing by tags, explain, backpressure and the worker circuit breaker, with real processes.

Tags route jobs to the workers that have them (an effects file written from each worker's
own directory shows which ran where) and a job nobody live can run stays pending and says
why; `--max-pending` slows a producer of 20,000 jobs down without refusing any for good, and
every job runs exactly once; a CLI submit over the limit exits 6 with one line; a worker on
which a callable cannot be imported trips and the jobs run on the healthy worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

WAIT_S = 90.0  # generous: two shared cores, other suites running beside us
TASKS = "tests.integration.routing_tasks"
ROOT = Path(__file__).resolve().parents[2]


def run_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tcpsched", "--coordinators", address, *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_tags_route_jobs_and_explain_says_why(procs: ProcessGroup, tmp_path: Path) -> None:
    """gpu jobs run only on the gpu worker, ssd jobs only on the ssd worker, untagged ones on
    either; a job asking for tags no worker has stays pending, and `explain --json` says why
    it is pending and, for one that ran, where it went and by which policy."""
    _, address = procs.coordinator(extra=["--policy", "least-loaded"])
    effects = tmp_path / "effects"
    for name, tags in (("wgpu", "gpu,big"), ("wssd", "ssd")):
        workdir = tmp_path / name
        workdir.mkdir()
        procs.worker(address, name, extra=["--tags", tags, "--workdir", str(workdir)])
    with connect(address) as client:
        wait_for_workers(client, ["wgpu", "wssd"])
        line = f'echo "$(basename "$PWD") $TAG" >> {effects}'
        ids = [client.submit_shell(line, tags=tags, env={"TAG": ",".join(tags) or "-"})
               for tags in (["gpu"], ["ssd"], ["gpu", "big"], ["ssd"], [], ["gpu"])]
        stuck = client.submit_shell("true", tags=["gpu", "ssd"])
        records = client.gather(ids, timeout=WAIT_S)
        assert all(r["state"] == "succeeded" for r in records), records
        ran = Counter(effects.read_text().splitlines())
        untagged = [line for line in ran if line.endswith(" -")]
        assert untagged in (["wgpu -"], ["wssd -"]), ran
        assert ran == Counter({"wgpu gpu": 2, "wssd ssd": 2, "wgpu gpu,big": 1,
                               untagged[0]: 1}), ran
        record = wait_until(lambda: (r := client.status(stuck))["reason"] and r, WAIT_S,
                            what="a reason")
        assert record["state"] == "pending"
        assert record["reason"].startswith("no live worker has tags gpu,ssd")
    pending = run_cli(address, "explain", stuck, "--json")
    assert pending.returncode == 0, pending.stderr
    explained = json.loads(pending.stdout)
    assert explained["id"] == stuck and explained["state"] == "pending"
    assert any("no live worker has tags gpu,ssd" in r for r in explained["reasons"])
    placed = run_cli(address, "explain", ids[0])
    assert placed.returncode == 0, placed.stderr
    assert f"{ids[0]} succeeded" in placed.stdout
    assert "placed on wgpu by the least-loaded policy" in placed.stdout


def test_max_pending_slows_a_producer_without_losing_or_doubling_jobs(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """With --max-pending 1000, SyncClient.map of 20,000 jobs is refused many times (stats
    count the refusals) yet returns 20,000 ids, and every job runs exactly once."""
    _, address = procs.coordinator(extra=["--max-pending", "1000", "--fsync", "never"])
    for name in ("w1", "w2"):
        procs.worker(address, name, slots=8, extra=["--isolation", "thread"])
    effects = tmp_path / "effects"
    with connect(address) as client:
        wait_for_workers(client, ["w1", "w2"])
        ids = client.map(f"{TASKS}:record", [(str(effects), i) for i in range(20_000)])
        assert len(ids) == len(set(ids)) == 20_000
        stats = client.stats()
        assert stats["refused_submits"] > 0 and stats["max_pending"] == 1000
        records = client.gather(ids, timeout=WAIT_S * 3)
        assert all(r["state"] == "succeeded" for r in records)
    lines = effects.read_text().split()
    assert len(lines) == 20_000 and set(lines) == {str(i) for i in range(20_000)}


def test_cli_submit_over_the_limit_exits_6_with_one_line(procs: ProcessGroup) -> None:
    """With one pending job allowed and no worker, a second CLI submit exits 6 with one
    'queue full' line on stderr and nothing on stdout; `stats` counts the refusal."""
    _, address = procs.coordinator(extra=["--max-pending", "1"])
    with connect(address) as client:
        client.submit_shell("true")
        done = run_cli(address, "submit", "--shell", "true")
        assert done.returncode == 6, done
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: queue full"), done.stderr
        assert client.stats()["refused_submits"] == 1


def test_worker_where_a_callable_cannot_be_imported_trips(procs: ProcessGroup,
                                                          tmp_path: Path) -> None:
    """A callable importable only on one worker fails on the other until that one trips
    (`workers` shows it tripped, with the reason); then every job runs on the healthy one,
    retries included, and all succeed."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "only_here.py").write_text("def square(x):\n    return x * x\n")
    _, address = procs.coordinator(extra=["--breaker-failures", "2",
                                          "--breaker-cooldown", "600", "--retry-base", "0.05",
                                          "--retry-cap", "0.2"])
    procs.worker(address, "broken", slots=1)
    healthy = ProcessGroup(tmp_path / "healthy", env={"PYTHONPATH": str(lib)})
    try:
        healthy.worker(address, "healthy", slots=2)
        with connect(address) as client:
            wait_for_workers(client, ["broken", "healthy"])
            ids = [client.submit_call("only_here:square", i, retries=8) for i in range(12)]
            records = client.gather(ids, timeout=WAIT_S)
            assert [r["result"] for r in records] == [i * i for i in range(12)]
            assert {r["worker"] for r in records} == {"healthy"}
            row = {w["name"]: w for w in client.workers()}["broken"]
            assert row["state"] == "tripped", row
            assert "succeeded on healthy" in row["reason"], row
            after = [client.submit_call("only_here:square", i) for i in range(4)]
            later = client.gather(after, timeout=WAIT_S)
            assert all(r["state"] == "succeeded" and r["worker"] == "healthy" and
                       r["attempts"] == 1 for r in later), later
        shown = run_cli(address, "workers")
        assert "broken tripped:" in shown.stdout, shown.stdout
    finally:
        healthy.stop_all()
