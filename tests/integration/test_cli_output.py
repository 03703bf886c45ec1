"""`python -m tcpsched`: every byte of large outputs reaches a slow reader, global options go
anywhere, and the surface added with them (exit 5, keys, pages, --version, completion).

The output tests read the CLI's stdout through a pipe deliberately slower than the writer,
under PYTHONUNBUFFERED=1: that is how the bug showed (the text layer over a raw file dropped
whatever a partial write left over, and the CLI exited 0). Each is compared with the same
command written to a file, which no partial write can cut.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tcpsched.core.jobs import JobSpec
from tcpsched.testing.processes import ProcessGroup, wait_for_workers
from tests.conftest import connect

RUN_TIMEOUT_S = 120.0
JOBS = 1300  # a table of this many rows is over two pipe buffers
LINE = "x" * 400
BIG_OUTPUT_BYTES = 300_000


def _env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
    return {**clean, "PYTHONUNBUFFERED": "1"}


@attrs.frozen
class Cluster:
    address: str
    ids: tuple[str, ...]
    big: str  # a job whose stdout is BIG_OUTPUT_BYTES long

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tcpsched", *args, "--coordinators", self.address]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env=_env(), check=False)

    def to_file(self, tmp: Path, *args: str) -> bytes:
        """The command's stdout written to a file: the reference a pipe must match."""
        path = tmp / "reference.out"
        with path.open("wb") as out:
            done = subprocess.run(self.argv(*args), stdout=out, stderr=subprocess.PIPE,
                                  timeout=RUN_TIMEOUT_S, env=_env(), check=False)
        assert done.returncode in (0, 1), done.stderr
        return path.read_bytes()

    def slow_read(self, *args: str) -> tuple[int, bytes, bytes]:
        """Run the command with a reader that lets the pipe fill first, then reads 4 KiB at a
        time with pauses; returns the exit code, stdout and stderr."""
        proc = subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env())
        assert proc.stdout is not None and proc.stderr is not None
        chunks = []
        try:
            time.sleep(0.5)  # the slow reader: the writer meets a full pipe
            while chunk := os.read(proc.stdout.fileno(), 4096):
                chunks.append(chunk)
                time.sleep(0.001)
            err = proc.stderr.read()
            code = proc.wait(RUN_TIMEOUT_S)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        return code, b"".join(chunks), err


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
            ) -> Iterator[Cluster]:
    """One coordinator, one worker, JOBS finished jobs with some output and one big one."""
    group = ProcessGroup(tmp_path_factory.mktemp("cli-output") / "run")
    failed_before = request.session.testsfailed
    try:
        _, address = group.coordinator(extra=["--fsync", "never"])
        group.worker(address, "w1", slots=4)
        with connect(address) as client:
            wait_for_workers(client, ["w1"])
            ids = client.submit_many(JobSpec(kind="shell",
                                             command=f"echo {LINE}; echo job {i} 日本語 😀")
                                     for i in range(JOBS))
            big = client.submit_shell(f"head -c {BIG_OUTPUT_BYTES} /dev/zero | tr '\\0' y")
            client.gather([*ids, big], timeout=RUN_TIMEOUT_S)
        yield Cluster(address, tuple(ids), big)
    finally:
        group.stop_all()
        if request.session.testsfailed > failed_before:
            print(group.logs())


OUTPUTS = {
    "wait --json": ("--json", "wait", "IDS"),
    "wait table": ("wait", "IDS"),
    "list --json": ("--json", "list", "--limit", str(JOBS + 1)),
    "list table": ("list", "--limit", str(JOBS + 1)),
    "status --json": ("--json", "status", "BIG"),
    "status table": ("status", "BIG"),
    "logs": ("logs", "BIG"),
    "logs --json": ("logs", "BIG", "--json"),
}


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_large_output_reaches_a_slow_reader_whole(cluster: Cluster, tmp_path: Path,
                                                  name: str) -> None:
    """Every output path (JSON and tables, CLI and logs) arrives whole through a slow pipe."""
    args: list[str] = []
    for word in OUTPUTS[name]:
        args.extend(cluster.ids if word == "IDS" else [cluster.big] if word == "BIG" else [word])
    reference = cluster.to_file(tmp_path, *args)
    assert len(reference) > 65536 * 2 or name == "status table", len(reference)
    code, out, err = cluster.slow_read(*args)
    assert code == 0, err
    if name.endswith("table"):
        # A table's AGE column moves on between the two runs: compare rows by their ids.
        assert out.endswith(b"\n")
        assert [line.split(b" ")[0] for line in out.splitlines()] == \
            [line.split(b" ")[0] for line in reference.splitlines()]
    else:
        assert len(out) == len(reference) and out == reference
    if "--json" in args:
        json.loads(out)


def test_a_reader_that_leaves_early_gets_no_traceback(cluster: Cluster) -> None:
    """`... | head -c 10`: exit 141 (as a shell shows SIGPIPE), nothing on stderr."""
    done = subprocess.run(" ".join(cluster.argv("--json", "list", "--limit", "300"))
                          + " | head -c 10; exit ${PIPESTATUS[0]}", shell=True,
                          executable=shutil.which("bash"), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=_env(), check=False)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
    assert len(done.stdout) == 10


@pytest.mark.parametrize("position", ["before", "after"])
def test_global_options_go_before_or_after_the_command(cluster: Cluster, tmp_path: Path,
                                                       position: str) -> None:
    """--json, --coordinators and --token-file are read wherever they stand."""
    options = ["--json", "--coordinators", cluster.address]
    argv = ([*options, "status", cluster.big] if position == "before"
            else ["status", cluster.big, *options])
    done = subprocess.run([sys.executable, "-m", "tcpsched", *argv], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == cluster.big
    missing = tmp_path / "no-such-token"
    token = ([*options, "--token-file", str(missing), "stats"] if position == "before"
             else ["stats", "--token-file", str(missing), *options])
    refused = subprocess.run([sys.executable, "-m", "tcpsched", *token], capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S, env=_env(), check=False)
    assert refused.returncode == 2 and "cannot read token file" in refused.stderr


def test_version_and_exit_codes_in_help(cluster: Cluster) -> None:
    """--version prints the version; --help lists the exit codes and every flag's help."""
    version = cluster.run("--version")
    assert version.returncode == 0 and version.stdout.startswith("tcpsched ")
    shown = cluster.run("--help")
    assert shown.returncode == 0
    assert "exit codes:" in shown.stdout and "5    wait --timeout ran out" in shown.stdout
    submit = cluster.run("submit", "--help").stdout
    assert "kill the job after S seconds" in submit and "(default: 0)" in submit


def test_idempotency_keys_conflict_and_name_jobs(cluster: Cluster) -> None:
    """The same key and spec make one job; another spec under it is refused (exit 2, one
    line); status, wait and cancel take the key in place of the id."""
    first = json.loads(cluster.run("--json", "submit", "--id", "nightly-1", "--shell",
                                   "echo nightly").stdout)["id"]
    again = json.loads(cluster.run("--json", "submit", "--id", "nightly-1", "--shell",
                                   "echo nightly").stdout)["id"]
    assert again == first
    other = cluster.run("submit", "--id", "nightly-1", "--shell", "echo something else")
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "already used by job" in other.stderr and first in other.stderr
    waited = cluster.run("--json", "wait", "nightly-1", "--timeout", "60")
    assert waited.returncode == 0 and json.loads(waited.stdout)[0]["id"] == first
    status = json.loads(cluster.run("--json", "status", "nightly-1").stdout)
    assert status["id"] == first and status["key"] == "nightly-1"
    pending = json.loads(cluster.run("--json", "submit", "--id", "later-1", "--delay", "300",
                                     "--shell", "true").stdout)["id"]
    cancelled = json.loads(cluster.run("--json", "cancel", "later-1").stdout)
    assert cancelled["id"] == pending and cancelled["state"] == "cancelled"
    short = cluster.run("status", "722")
    assert short.returncode == 2 and "at least 4 characters" in short.stderr


def test_list_pages_with_a_cursor(cluster: Cluster) -> None:
    """A listing cut by --limit says which --page continues it; that page starts right after,
    and --json output stays one array of records."""
    first = cluster.run("--json", "list", "--limit", "5")
    assert first.returncode == 0
    records = json.loads(first.stdout)
    assert isinstance(records, list) and len(records) == 5
    cursor = records[-1]["id"]
    assert f"list --page {cursor}" in first.stderr
    following = json.loads(cluster.run("--json", "list", "--limit", "5", "--page",
                                       cursor).stdout)
    both = json.loads(cluster.run("--json", "list", "--limit", "10").stdout)
    assert [r["id"] for r in records + following] == [r["id"] for r in both]
    bad = cluster.run("list", "--page", "nosuchjob000")
    assert bad.returncode == 2 and "page cursor" in bad.stderr
    zero = cluster.run("list", "--limit", "0")
    assert zero.returncode == 2 and "--limit must be at least 1" in zero.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_generated(cluster: Cluster, tmp_path: Path,
                                          shell: str) -> None:
    """completion SHELL prints a script naming the commands; bash accepts its syntax."""
    done = cluster.run("completion", shell)
    assert done.returncode == 0, done.stderr
    for word in ("submit", "wait", "--priority"):
        assert word in done.stdout
    if shell == "bash" and shutil.which("bash"):
        path = tmp_path / "tcpsched.bash"
        path.write_text(done.stdout)
        checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True,
                                 timeout=RUN_TIMEOUT_S, check=False)
        assert checked.returncode == 0, checked.stderr
