"""`python -m tcpsched`: exit codes, one-line errors, --json documents, argument parsing.

Every test runs the real command in a subprocess against one coordinator and one worker
started once for this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tcpsched.cli_parser import parse_arg
from tcpsched.testing.processes import ProcessGroup, free_port, wait_for_workers
from tests.conftest import connect

RUN_TIMEOUT_S = 120.0
RECORD_FIELDS = {
    "id", "state", "kind", "args", "priority", "retries", "attempts", "timeout", "tags",
    "after", "worker", "submitted_at", "started_at", "finished_at", "exit_code", "result",
    "stdout", "stderr", "error",
}  # fmt: skip


@attrs.frozen
class Cli:
    address: str
    group: ProcessGroup

    def run(self, *args: str, address: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run `python -m tcpsched --coordinators ADDRESS ARGS...` and capture its output."""
        target = address if address is not None else self.address
        argv = [sys.executable, "-m", "tcpsched"]
        if target:
            argv += ["--coordinators", target]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
        return subprocess.run([*argv, *args], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env={**clean, **(env or {})},
                              check=False)

    def json(self, *args: str) -> Any:
        """Run a command with --json; it must exit 0 and print exactly one JSON document."""
        done = self.run("--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
        ) -> Iterator[Cli]:
    """One coordinator and worker w1 (2 slots) for the module."""
    group = ProcessGroup(tmp_path_factory.mktemp("cli") / "run")
    failed_before = request.session.testsfailed
    try:
        _, address = group.coordinator()
        group.worker(address, "w1", slots=2)
        with connect(address) as client:
            wait_for_workers(client, ["w1"])
        yield Cli(address, group)
    finally:
        group.stop_all()
        if request.session.testsfailed > failed_before:
            print(group.logs())


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in done.stderr + done.stdout


# -- exit code 0 and what is printed ---------------------------------------------------------------


def test_submit_prints_the_id_and_wait_exits_0(cli: Cli) -> None:
    """submit prints the new id alone; wait on a succeeded job exits 0 with a table."""
    done = cli.run("submit", "--shell", "echo from-cli")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id.split()) == 1
    waited = cli.run("wait", job_id, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert job_id in waited.stdout and "succeeded" in waited.stdout
    status = cli.run("status", job_id)
    assert status.returncode == 0
    assert "from-cli" in status.stdout


def test_call_arguments_are_json_where_they_parse(cli: Cli) -> None:
    """`--call mod:fn 2 '"2"' abc` passes the int 2, the string "2" and the string abc."""
    job = cli.json("submit", "--call", "builtins:str.format", "{0!r}|{1!r}|{2!r}", "2", '"2"',
                   "abc")
    (record,) = cli.json("wait", job["id"], "--timeout", "60")
    assert record["args"] == ["{0!r}|{1!r}|{2!r}", 2, "2", "abc"]
    assert record["result"] == "2|'2'|'abc'"


def test_kwargs_are_passed_as_keyword_arguments(cli: Cli) -> None:
    """--kwargs '{"base": 16}' reaches the function as base=16."""
    job = cli.json("submit", "--call", "builtins:int", "ff", "--kwargs", '{"base": 16}')
    (record,) = cli.json("wait", job["id"], "--timeout", "60")
    assert record["kwargs"] == {"base": 16}
    assert record["result"] == 255


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2), ('"2"', "2"), ("abc", "abc"), ("2.5", 2.5), ("null", None), ("true", True),
     ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ("", ""), ("1e", "1e")],
)
def test_parse_arg(text: str, value: Any) -> None:
    """A --call ARG is JSON where it parses, else the string as given."""
    assert parse_arg(text) == value


def test_same_id_twice_makes_one_job(cli: Cli) -> None:
    """submit --id KEY twice prints the same id both times."""
    key = f"cli-key-{time.time_ns()}"
    first = cli.run("submit", "--id", key, "--shell", "true")
    second = cli.run("submit", "--id", key, "--shell", "true")
    assert first.returncode == second.returncode == 0
    assert first.stdout.strip() == second.stdout.strip()
    jobs = cli.json("list", "--limit", "1000")
    assert sum(1 for r in jobs if r.get("key") == key) == 1


def test_coordinators_come_from_the_environment(cli: Cli) -> None:
    """Without --coordinators, TCPSCHED_COORDINATORS names the coordinator."""
    done = cli.run("--json", "leader", address="", env={"TCPSCHED_COORDINATORS": cli.address})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["address"] == cli.address


def test_help_exits_0(cli: Cli) -> None:
    """--help prints the commands and exits 0."""
    done = cli.run("--help")
    assert done.returncode == 0
    assert "submit" in done.stdout and "workers" in done.stdout


# -- --json: one document per command --------------------------------------------------------------


def test_every_command_prints_one_json_document(cli: Cli) -> None:
    """submit, status, wait, list, cancel, workers, stats and leader each print valid JSON."""
    submitted = cli.json("submit", "--priority", "3", "--retries", "1", "--timeout", "30",
                         "--shell", "echo json")
    assert set(submitted) == {"id"}
    job_id = submitted["id"]

    waited = cli.json("wait", job_id, "--timeout", "60")
    assert isinstance(waited, list) and len(waited) == 1
    assert RECORD_FIELDS | {"command"} <= set(waited[0])
    assert waited[0]["priority"] == 3 and waited[0]["retries"] == 1
    assert waited[0]["timeout"] == 30 and waited[0]["stdout"] == "json\n"

    status = cli.json("status", job_id)
    assert status["id"] == job_id and status["state"] == "succeeded"

    listed = cli.json("list", "--state", "succeeded", "--limit", "5")
    assert isinstance(listed, list) and 1 <= len(listed) <= 5
    assert all(r["state"] == "succeeded" for r in listed)

    pending = cli.json("submit", "--delay", "300", "--shell", "true")
    cancelled = cli.json("cancel", pending["id"])
    assert cancelled["id"] == pending["id"] and cancelled["state"] == "cancelled"

    workers = cli.json("workers")
    assert [w["name"] for w in workers] == ["w1"]
    assert set(workers[0]) >= {"name", "address", "slots", "running", "tags", "state",
                               "last_heartbeat"}
    assert workers[0]["state"] == "alive" and workers[0]["slots"] == 2

    stats = cli.json("stats")
    assert set(stats) >= {"pending", "running", "succeeded", "failed", "cancelled",
                          "workers_alive", "leader", "epoch"}
    assert stats["workers_alive"] == 1 and stats["cancelled"] >= 1

    leader = cli.json("leader")
    assert set(leader) >= {"id", "address", "epoch"}
    assert leader["address"] == cli.address


@pytest.mark.parametrize("command", [["workers"], ["stats"], ["leader"], ["list"]])
def test_human_output_of_read_commands(cli: Cli, command: list[str]) -> None:
    """Without --json each read command prints text, not JSON, and exits 0."""
    done = cli.run(*command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert not done.stdout.lstrip().startswith(("{", "["))


# -- exit code 1 -----------------------------------------------------------------------------------


def test_wait_on_a_failed_job_exits_1(cli: Cli) -> None:
    """wait exits 1 when a job failed, prints the records, and says why on one line."""
    good = cli.json("submit", "--shell", "true")["id"]
    bad = cli.json("submit", "--shell", "exit 4")["id"]
    done = cli.run("--json", "wait", good, bad, "--timeout", "60")
    assert_one_line_error(done, 1)
    records = json.loads(done.stdout)
    assert [r["state"] for r in records] == ["succeeded", "failed"]
    assert records[1]["exit_code"] == 4
    assert "1 of 2" in done.stderr


def test_wait_that_times_out_exits_5(cli: Cli) -> None:
    """wait --timeout on a job still pending exits 5 (not 1, a failed job) with a timeout
    line, and still prints the records it has."""
    job_id = cli.json("submit", "--delay", "300", "--shell", "true")["id"]
    done = cli.run("wait", job_id, "--timeout", "0.2")
    assert_one_line_error(done, 5)
    assert job_id in done.stdout
    assert "timed out" in done.stderr
    assert cli.run("cancel", job_id).returncode == 0


def test_wait_on_a_cancelled_job_exits_1(cli: Cli) -> None:
    """A cancelled job did not succeed, so waiting on it exits 1."""
    job_id = cli.json("submit", "--delay", "300", "--shell", "true")["id"]
    cli.json("cancel", job_id)
    assert_one_line_error(cli.run("wait", job_id), 1)


# -- exit code 2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["--bogus-flag", "stats"],
        ["submit"],
        ["submit", "--shell", "true", "--call", "operator:add"],
        ["submit", "--shell", "true", "--priority", "high"],
        ["submit", "--shell", "true", "--timeout", "-1"],
        ["submit", "--shell", "true", "--delay", "soon"],
        ["submit", "--shell", "true", "--kwargs", "{}"],
        ["submit", "--shell", "   "],
        ["submit", "--call", "not-a-function"],
        ["submit", "--call", "operator:add", "--kwargs", "{bad json"],
        ["submit", "--call", "operator:add", "--kwargs", "[1, 2]"],
        ["submit", "--priority", "99999999", "--shell", "true"],
        ["list", "--state", "bogus"],
        ["list", "--limit", "-3"],
        ["status", "nosuchjob"],
        ["status", "0000"],
        ["wait", "nosuchjob"],
        ["cancel", "nosuchjob"],
    ],
    ids=lambda args: " ".join(args) or "(nothing)",
)
def test_usage_errors_exit_2_with_one_line(cli: Cli, args: list[str]) -> None:
    """Bad flags, bad --kwargs JSON and unknown jobs exit 2 with one line and no traceback."""
    done = cli.run(*args)
    assert_one_line_error(done, 2)
    assert done.stdout == ""


# -- exit code 3 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["stats"], ["submit", "--shell", "true"], ["wait", "abcd"]])
def test_no_coordinator_reachable_exits_3(cli: Cli, args: list[str]) -> None:
    """Pointed at a port nobody listens on, every command exits 3 with one line."""
    address = f"127.0.0.1:{free_port()}"
    done = cli.run("--connect-timeout", "0.5", *args, address=address)
    assert_one_line_error(done, 3)
    assert address in done.stderr


def test_bad_coordinator_address_exits_2(cli: Cli) -> None:
    """An address that is not HOST:PORT is a usage error, not an unreachable cluster."""
    assert_one_line_error(cli.run("stats", address="nonsense"), 2)


# -- exit code 4 -----------------------------------------------------------------------------------


def test_wrong_token_exits_4(procs: ProcessGroup, tmp_path: Path) -> None:
    """A coordinator with a token refuses a CLI with another token: exit 4, one line."""
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("correct horse battery staple\n")
    wrong.write_text("incorrect\n")
    _, address = procs.coordinator(extra=["--token-file", str(right)])
    cli = Cli(address, procs)
    ok = cli.run("--token-file", str(right), "--connect-timeout", "15", "leader")
    assert ok.returncode == 0, ok.stderr
    assert_one_line_error(cli.run("--token-file", str(wrong), "leader"), 4)
