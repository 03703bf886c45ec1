"""Hostile text and odd values against real processes: job output, commands and names arrive
escaped in every text view (CLI, console, logs) while --json keeps them exact; non-finite
results are standard JSON; bad names, addresses and jobs get one clear line.

One coordinator and worker w1 serve the whole module.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import msgpack
import pytest
from prompt_toolkit.data_structures import Size
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from tcpsched.client import Client
from tcpsched.console import Console, Outcome
from tcpsched.core import messages as m
from tcpsched.core.codec import HEADER
from tcpsched.errors import RequestError
from tcpsched.runtime.handshake import dial
from tcpsched.testing.processes import Proc, ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

TIMEOUT_S = 60.0
# Sets the title, writes the clipboard (OSC 52), clears the screen, then hides the rest of the
# line, passes raw text through prompt_toolkit (\001...\002) and moves to the line start.
OUTPUT = "ok\x1b]0;OWNED\x07\x1b]52;c;aGk=\x07\x1b[2J\x1b[8mhidden\x01\x1b]0;RAW\x07\x02\rFAKE"
PRINTF = ("printf 'ok\\033]0;OWNED\\007\\033]52;c;aGk=\\007\\033[2J\\033[8mhidden"
          "\\001\\033]0;RAW\\007\\002\\rFAKE'")
COMMAND = ": \x1b[8m hidden; " + PRINTF  # the command itself holds a raw ESC


@attrs.frozen
class Cluster:
    group: ProcessGroup
    coordinator: Proc
    address: str

    def run(self, *args: str | bytes, env: dict[str, str] | None = None,
            address: bool = True) -> subprocess.CompletedProcess[bytes]:
        """`python -m tcpsched [--coordinators ADDRESS] ARGS...`, output as bytes."""
        argv: list[str | bytes] = [sys.executable, "-m", "tcpsched"]
        if address:
            argv += ["--coordinators", self.address]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
        return subprocess.run([*argv, *args], capture_output=True, timeout=TIMEOUT_S * 2,
                              env={**clean, **(env or {})}, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
            ) -> Iterator[Cluster]:
    """One coordinator and worker w1 for the module."""
    group = ProcessGroup(tmp_path_factory.mktemp("display") / "run")
    failed_before = request.session.testsfailed
    try:
        coordinator, address = group.coordinator()
        group.worker(address, "w1", slots=2)
        with connect(address, TIMEOUT_S) as client:
            wait_for_workers(client, ["w1"], TIMEOUT_S)
        yield Cluster(group, coordinator, address)
    finally:
        group.stop_all()
        if request.session.testsfailed > failed_before:
            print(group.logs())


@pytest.fixture(scope="module")
def hostile_job(cluster: Cluster) -> str:
    """A finished job whose command holds an ESC and whose stdout is OUTPUT."""
    with connect(cluster.address, TIMEOUT_S) as client:
        job_id = client.submit_shell(COMMAND)
        record = client.wait(job_id, TIMEOUT_S)
    assert record["state"] == "succeeded" and record["stdout"] == OUTPUT, record
    return job_id


def assert_inert(out: bytes) -> None:
    """No ESC, BEL, CR, \\001 or \\002 reached the terminal; they show as visible escapes."""
    for raw in (b"\x1b", b"\x07", b"\r", b"\x01", b"\x02"):
        assert raw not in out, out
    assert b"\\x1b]0;OWNED\\x07" in out or b"\\x1b[8m" in out, out


def assert_one_line_error(done: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = done.stderr.decode()
    assert done.returncode == code, (done.returncode, done.stdout, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "never retrieved" not in err, err
    return err


# -- the CLI's text views, and --json --------------------------------------------------------------


@pytest.mark.parametrize("view", [["status"], ["wait"], ["cancel"]])
def test_one_job_views_escape_output_and_command(cluster: Cluster, hostile_job: str,
                                                 view: list[str]) -> None:
    """status, wait and cancel show the job's stdout and command with escapes visible."""
    done = cluster.run(*view, hostile_job)
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout + done.stderr)


def test_list_escapes_commands(cluster: Cluster, hostile_job: str) -> None:
    """list shows a command holding ESC[8m visibly instead of hiding the rest of the line."""
    done = cluster.run("list", "--state", "succeeded", "--limit", "100")
    assert done.returncode == 0, done.stderr
    assert hostile_job.encode() in done.stdout and b": \\x1b[8m hidden;" in done.stdout
    assert_inert(done.stdout)


def test_json_keeps_the_exact_text(cluster: Cluster, hostile_job: str) -> None:
    """--json status and list carry the exact output and command (as JSON escapes)."""
    record = json.loads(cluster.run("--json", "status", hostile_job).stdout)
    assert record["stdout"] == OUTPUT and record["command"] == COMMAND
    listed = json.loads(cluster.run("--json", "list", "--state", "succeeded").stdout)
    assert any(r["id"] == hostile_job and r["stdout"] == OUTPUT for r in listed)


def _strict_json(text: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_results_are_standard_json(cluster: Cluster) -> None:
    """builtins:float nan|inf, operator:neg Infinity, math:sqrt NaN: "NaN", "Infinity" and
    "-Infinity" in --json output, which a strict parser reads; the text views print them."""
    expected = {("builtins:float", "nan"): "NaN", ("builtins:float", "inf"): "Infinity",
                ("operator:neg", "Infinity"): "-Infinity"}
    ids = {}
    for function, arg in expected:
        ids[arg] = _strict_json(cluster.run("--json", "submit", "--call", function,
                                            arg).stdout)["id"]
    sqrt = _strict_json(cluster.run("--json", "submit", "--call", "math:sqrt", "NaN").stdout)
    records = _strict_json(cluster.run("--json", "wait", *ids.values(), sqrt["id"],
                                       "--timeout", "60").stdout)
    assert [r["result"] for r in records] == [*expected.values(), "NaN"]
    assert records[-1]["args"] == ["NaN"]
    _strict_json(cluster.run("--json", "list", "--limit", "1000").stdout)
    table = cluster.run("wait", *ids.values())
    assert table.returncode == 0 and b"Infinity" in table.stdout


# -- one clear line --------------------------------------------------------------------------------


def test_ambiguous_prefix_lists_candidates(cluster: Cluster) -> None:
    """A prefix two jobs share is "ambiguous" and the error names them, exit 2."""
    with connect(cluster.address, TIMEOUT_S) as client:
        from tcpsched.core.jobs import JobSpec

        ids = client.submit_many([JobSpec(kind="shell", command="true", delay=3600)] * 2000)
    prefixes = [i[:4] for i in ids]
    prefix = next(p for p in prefixes if prefixes.count(p) > 1)
    err = assert_one_line_error(cluster.run("status", prefix), 2)
    assert "ambiguous" in err
    assert all(i in err for i in ids if i.startswith(prefix)), err


def test_oversized_args_are_refused_before_sending(cluster: Cluster) -> None:
    """Args of 250,000 items: "too large" at once, and the coordinator never sees the job."""
    with connect(cluster.address, TIMEOUT_S) as client:
        before = client.stats()
        with pytest.raises(RequestError, match="job too large to send"):
            client.submit_call("builtins:len", [0] * 250_000)
        after = client.stats()
    assert after["protocol_errors"] == before["protocol_errors"]
    assert after["pending"] + after["running"] + after["succeeded"] + after["failed"] == (
        before["pending"] + before["running"] + before["succeeded"] + before["failed"])


@pytest.mark.parametrize("value", ["a;b", "http://127.0.0.1:7001", "a;b:7001"])
def test_bad_coordinators_variable_is_exit_2_naming_it(cluster: Cluster, value: str) -> None:
    """$TCPSCHED_COORDINATORS='a;b' or a URL: exit 2, one line naming the variable."""
    done = cluster.run("stats", env={"TCPSCHED_COORDINATORS": value}, address=False)
    assert "$TCPSCHED_COORDINATORS" in assert_one_line_error(done, 2)


def test_non_utf8_command_is_one_clean_line(cluster: Cluster) -> None:
    """A shell command with a byte that is not UTF-8: one line, no stray asyncio warning."""
    done = cluster.run("submit", "--shell", b"echo \xff")
    assert "not valid UTF-8" in assert_one_line_error(done, 2)


# -- names: validated, and escaped in the logs -----------------------------------------------------


def test_worker_with_a_bad_name_exits_2(cluster: Cluster) -> None:
    """A worker started with a name holding an escape refuses to start, in one line."""
    proc = cluster.group.worker(cluster.address, "w\x1b[2J")
    assert proc.wait(TIMEOUT_S) == 2
    lines = proc.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --name: worker name"), lines


async def _raw_worker(address: str, name: str, register: m.Register | None) -> str:
    """Handshake as a worker named `name`, send `register` (or a frame of an unknown type)
    and return why the coordinator closed the connection."""
    conn, _ = await dial(address, "worker", name, None, m.COORDINATOR_TO_WORKER)
    try:
        if register is not None:
            conn.send(register)
        else:
            body = msgpack.packb({"t": "bogus"})
            conn.writer.write(HEADER.pack(len(body)) + body)
        async with asyncio.timeout(TIMEOUT_S):
            while await conn.receive() is not None:
                pass
    except OSError:
        pass
    finally:
        conn.close()
    return conn.close_reason


FORGED = "evil\n2030-01-01 00:00:00,000 INFO    c1 tcpsched: forged\x1b]0;t\x07"


def test_bad_registration_is_refused_and_logs_stay_one_line(cluster: Cluster) -> None:
    """A Register with a newline in its name is refused and never listed; a handshake name
    with a newline and escapes is logged on one line, escaped."""
    asyncio.run(_raw_worker(cluster.address, "x", m.Register(name=FORGED, slots=1)))
    asyncio.run(_raw_worker(cluster.address, "x", m.Register(name="ok", slots=1,
                                                               tags=("a\x1b[8m",))))
    asyncio.run(_raw_worker(cluster.address, FORGED, None))
    with connect(cluster.address, TIMEOUT_S) as client:
        assert [w["name"] for w in client.workers()] == ["w1"]

    def logged() -> list[str] | None:
        lines = cluster.coordinator.log().splitlines()
        done = [line for line in lines if "bogus" in line]
        return lines if done and sum("registration refused" in line for line in lines) >= 2 \
            else None

    lines = wait_until(logged, TIMEOUT_S, what="the coordinator's log lines")
    assert not any(line.startswith("2030-01-01") for line in lines), lines
    assert not any("\x1b" in line or "\x07" in line for line in lines), lines
    assert any("evil\\n2030-01-01" in line and "bogus" in line for line in lines), lines


# -- the console -----------------------------------------------------------------------------------


@attrs.define
class Driver:
    console: Console
    pipe: Any
    screen: io.StringIO
    outcomes: asyncio.Queue[Outcome]

    async def run(self, line: str) -> Outcome:
        self.pipe.send_text(line + "\r")
        async with asyncio.timeout(TIMEOUT_S):
            outcome = await self.outcomes.get()
        assert outcome.line == line
        return outcome


@pytest.fixture
async def console(cluster: Cluster) -> AsyncIterator[Driver]:
    """A console drawing on a real VT100 output into a buffer, driven through a pipe."""
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    screen = io.StringIO()
    output = Vt100_Output(screen, lambda: Size(rows=60, columns=200), term="xterm")
    with create_pipe_input() as pipe:
        con = Console([cluster.address], connect_timeout=TIMEOUT_S, history=InMemoryHistory(),
                      input=pipe, output=output, on_outcome=outcomes.put_nowait,
                      handle_sigint=False)
        task = asyncio.ensure_future(con.run())
        try:
            yield Driver(con, pipe, screen, outcomes)
        finally:
            if not task.done():
                pipe.send_text("quit\r")
            async with asyncio.timeout(TIMEOUT_S):
                await task


async def test_console_escapes_job_output_on_screen(console: Driver, hostile_job: str) -> None:
    """status, logs, list and wait in the console draw no title, clipboard or raw-text
    sequence from the job; the outcome shows the escapes visibly."""
    for line in (f"status {hostile_job}", f"logs {hostile_job}",
                 "list --state succeeded --limit 100", f"wait {hostile_job}"):
        outcome = await console.run(line)
        assert not outcome.is_error, outcome.text
        assert "\\x1b" in outcome.text and "\x1b" not in outcome.text
    drawn = console.screen.getvalue()
    for sequence in ("\x1b]0;OWNED", "\x1b]52;", "\x1b]0;RAW", "\x1b[2J", "\x1b[8m", "\x01"):
        assert sequence not in drawn, sequence
    assert "\\x1b]0;OWNED" in drawn
    as_json = await console.run(f"status {hostile_job} --json")
    assert json.loads(as_json.text)["stdout"] == OUTPUT


async def test_odd_replies_never_end_the_console(console: Driver) -> None:
    """A record with started_at=inf, wrong types or missing fields is shown, and the console
    goes on to the next command."""
    odd: list[Any] = [
        {"id": "abcd", "state": "running", "started_at": math.inf, "submitted_at": math.nan},
        {"state": ["x"], "stdout": {"a": 1}, "finished_at": "soon", "worker": 7},
        ["not", "a", "record"], 42, None,
    ]
    client = console.console.client
    original = Client.status

    async def fake_status(self: Client, job_id: str) -> Any:
        return odd.pop(0)

    client.status = fake_status.__get__(client)  # type: ignore[method-assign]
    try:
        for _ in range(5):
            outcome = await console.run("status abcd")
            assert "\x1b" not in outcome.text
        workers = client.workers
        client.workers = lambda: _coroutine([{"name": ["x"], "slots": "many"}, 3])  # type: ignore[method-assign,assignment]
        assert not (await console.run("workers")).is_error
        client.workers = workers  # type: ignore[method-assign]
    finally:
        client.status = original.__get__(client)  # type: ignore[method-assign]
    assert "w1" in (await console.run("workers")).text


async def _coroutine(value: Any) -> Any:
    return value
