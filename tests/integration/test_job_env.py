"""A job's environment: `--env` and `--cwd` reach shell and call jobs, the worker's
`--workdir` is the default directory and where callables are imported from, and bad values
are one-line usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcpsched.testing.processes import ProcessGroup, wait_for_workers
from tests.conftest import connect

WAIT_S = 60.0


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_env_and_cwd_reach_shell_jobs(procs: ProcessGroup, tmp_path: Path,
                                      isolation: str) -> None:
    """A shell job sees its variables over the worker's, and runs in its cwd."""
    _, address = procs.coordinator()
    procs.worker(address, "w", extra=["--isolation", isolation])
    with connect(address) as c:
        wait_for_workers(c, ["w"])
        job = c.submit_shell('echo "$GREETING $PATH_SEEN"; pwd', cwd=str(tmp_path),
                             env={"GREETING": "hello there", "PATH_SEEN": "x"})
        record = c.wait(job, timeout=WAIT_S)
        plain = c.wait(c.submit_shell('echo "[$GREETING]"'), timeout=WAIT_S)
    assert record["state"] == "succeeded", record
    assert record["stdout"] == f"hello there x\n{tmp_path}\n"
    assert record["env"] == {"GREETING": "hello there", "PATH_SEEN": "x"}
    assert record["cwd"] == str(tmp_path)
    assert plain["stdout"] == "[]\n" and plain["env"] == {} and plain["cwd"] is None


def test_env_and_cwd_reach_call_jobs_and_do_not_leak_into_the_next(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """A call sees its variables and cwd; the next call on the same process sees neither."""
    _, address = procs.coordinator()
    procs.worker(address, "w", slots=1)
    with connect(address) as c:
        wait_for_workers(c, ["w"])
        env = c.wait(c.submit_call("os:getenv", "TCPSCHED_TEST_VAR",
                                   env={"TCPSCHED_TEST_VAR": "42"}), timeout=WAIT_S)
        cwd = c.wait(c.submit_call("os:getcwd", cwd=str(tmp_path)), timeout=WAIT_S)
        after = c.gather([c.submit_call("os:getenv", "TCPSCHED_TEST_VAR"),
                          c.submit_call("os:getcwd")], timeout=WAIT_S)
        missing = c.wait(c.submit_call("os:getcwd", cwd=str(tmp_path / "nope")),
                         timeout=WAIT_S)
        missing_shell = c.wait(c.submit_shell("true", cwd=str(tmp_path / "nope")),
                               timeout=WAIT_S)
    assert env["result"] == "42" and cwd["result"] == str(tmp_path)
    assert after[0]["result"] is None
    assert after[1]["result"] == str(procs.workdir)  # the worker's own directory
    for record in (missing, missing_shell):
        assert record["state"] == "failed" and str(tmp_path / "nope") in record["error"]
        assert "No such file" in record["error"] or "does not exist" in record["error"]


def test_a_call_with_env_on_a_thread_worker_fails_saying_why(procs: ProcessGroup) -> None:
    """Threads share the worker's environment: such a job fails naming --isolation."""
    _, address = procs.coordinator()
    procs.worker(address, "w", extra=["--isolation", "thread"])
    with connect(address) as c:
        wait_for_workers(c, ["w"])
        record = c.wait(c.submit_call("os:getenv", "X", env={"X": "1"}), timeout=WAIT_S)
    assert record["state"] == "failed" and "--isolation process" in record["error"]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_workdir_is_the_default_cwd_and_on_the_import_path(procs: ProcessGroup,
                                                           tmp_path: Path,
                                                           isolation: str) -> None:
    """--workdir: shell and call jobs run there, and modules in it can be called."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "workdir_tasks_mod.py").write_text("def answer():\n    return 42\n")
    _, address = procs.coordinator()
    procs.worker(address, "w", extra=["--workdir", str(workdir), "--isolation", isolation])
    with connect(address) as c:
        wait_for_workers(c, ["w"])
        shell, call, imported = c.gather([
            c.submit_shell("pwd"), c.submit_call("os:getcwd"),
            c.submit_call("workdir_tasks_mod:answer")], timeout=WAIT_S)
    assert shell["stdout"] == f"{workdir}\n"
    assert call["result"] == str(workdir)
    assert imported["state"] == "succeeded" and imported["result"] == 42, imported


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=60, env=clean, check=False)


@pytest.mark.parametrize(("flags", "message"), [
    (["--env", "NOEQUALS"], "--env 'NOEQUALS' must look like NAME=VALUE"),
    (["--env", "1BAD=x"], "env name '1BAD'"),
    (["--env", "=x"], "must look like NAME=VALUE"),
    (["--env", "BAD-NAME=x"], "env name 'BAD-NAME'"),
    (["--cwd", ""], "cwd must be a path"),
])
def test_bad_env_or_cwd_is_a_one_line_usage_error(flags: list[str], message: str) -> None:
    """submit refuses a bad --env or --cwd with exit 2 and one line, before connecting."""
    done = _run("-m", "tcpsched", "--coordinators", "127.0.0.1:1", "submit", *flags,
                "--shell", "true")
    assert done.returncode == 2, done
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_cli_submit_env_and_cwd_reach_the_job(procs: ProcessGroup, tmp_path: Path) -> None:
    """`submit --env K=V --env ... --cwd DIR` through the one-shot CLI."""
    _, address = procs.coordinator()
    procs.worker(address, "w")
    with connect(address) as c:
        wait_for_workers(c, ["w"])
        done = _run("-m", "tcpsched", "--coordinators", address, "submit", "--env", "A=1",
                    "--env", "B=two words", "--cwd", str(tmp_path), "--shell",
                    'echo "$A/$B"; pwd')
        assert done.returncode == 0, done.stderr
        record = c.wait(done.stdout.strip(), timeout=WAIT_S)
    assert record["stdout"] == f"1/two words\n{tmp_path}\n"
    assert record["env"] == {"A": "1", "B": "two words"} and record["cwd"] == str(tmp_path)


@pytest.mark.parametrize(("flags", "message"), [
    (["--workdir", "/nonexistent/tcpsched"], "--workdir /nonexistent/tcpsched: no such "
                                             "directory"),
    (["--max-memory", "10"], "--max-memory"),
    (["--max-memory", "128", "--isolation", "thread"], "needs --isolation process"),
    (["--isolation", "fork"], "--isolation"),
])
def test_bad_worker_flags_are_refused_at_start(flags: list[str], message: str) -> None:
    """The worker refuses a missing --workdir or a bad --max-memory/--isolation at once."""
    done = _run("-m", "tcpsched.worker", "--coordinators", "127.0.0.1:1", *flags)
    assert done.returncode == 2, done
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
