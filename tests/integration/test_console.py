"""The console driven through a pipe, against a real coordinator and workers on loopback.

Lines go in through `create_pipe_input()`, the screen is a `DummyOutput()`, and the assertions
look at what each line did (the console's `Outcome`s), never at rendered bytes.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from tcpsched.console import Console, Outcome
from tcpsched.testing.processes import Proc, ProcessGroup, free_port, wait_for_workers
from tests.conftest import connect

TIMEOUT_S = 30.0


@attrs.define
class Cluster:
    procs: ProcessGroup
    address: str
    port: int
    coordinator: Proc


@pytest.fixture
def cluster(procs: ProcessGroup) -> Iterator[Cluster]:
    """A coordinator and two workers, registered."""
    port = free_port()
    coordinator, address = procs.coordinator(port=port)
    for name in ("w1", "w2"):
        procs.worker(address, name, slots=2)
    client = connect(address, TIMEOUT_S)
    try:
        wait_for_workers(client, ["w1", "w2"], TIMEOUT_S)
    finally:
        client.close()
    yield Cluster(procs, address, port, coordinator)


@attrs.define
class Driver:
    console: Console
    pipe: Any
    outcomes: asyncio.Queue[Outcome]
    task: asyncio.Task[None] | None = None

    async def run(self, line: str) -> Outcome:
        """Type a line and return what it did."""
        self.pipe.send_text(line + "\r")
        async with asyncio.timeout(TIMEOUT_S * 2):
            outcome = await self.outcomes.get()
        assert outcome.line == line
        return outcome


@pytest.fixture
async def console(cluster: Cluster) -> AsyncIterator[Driver]:
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    with create_pipe_input() as pipe:
        con = Console([cluster.address], connect_timeout=TIMEOUT_S, history=InMemoryHistory(),
                      input=pipe, output=DummyOutput(), on_outcome=outcomes.put_nowait,
                      handle_sigint=False)
        driver = Driver(con, pipe, outcomes)
        driver.task = asyncio.ensure_future(con.run())
        try:
            yield driver
        finally:
            if not driver.task.done():
                pipe.send_text("quit\r")
                async with asyncio.timeout(TIMEOUT_S):
                    await driver.task


async def poll_until_answered(console: Console) -> None:
    """Let the toolbar's poller ask until the coordinator answers (its client gives up after
    a second, which a loaded machine may need more than once)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            await console.poller.poll_once()
            if console.poller.error is None:
                return


def completions(console: Console, text: str) -> list[str]:
    return [c.text for c in console.completer.get_completions(Document(text), CompleteEvent())]


async def test_submit_status_wait_list_and_logs(console: Driver) -> None:
    """A submitted job can be followed with status, wait, list and logs, like the CLI."""
    submitted = await console.run("submit --shell 'echo hello; echo oops >&2'")
    assert not submitted.is_error
    job_id = submitted.text.strip()
    waited = await console.run(f"wait {job_id} --timeout 30")
    assert not waited.is_error and "succeeded" in waited.text
    status = await console.run(f"status {job_id}")
    assert "succeeded" in status.text and "hello" in status.text
    listed = await console.run("list --state succeeded")
    assert job_id in listed.text
    logs = await console.run(f"logs {job_id}")
    assert "hello" in logs.text and "oops" in logs.text
    as_json = await console.run(f"status {job_id} --json")
    assert f'"id": "{job_id}"' in as_json.text


async def test_cancel_and_workers(console: Driver) -> None:
    """cancel stops a delayed job before it runs; workers lists both workers as alive."""
    job_id = (await console.run("submit --delay 600 --shell 'echo never'")).text.strip()
    cancelled = await console.run(f"cancel {job_id}")
    assert not cancelled.is_error and "cancelled" in cancelled.text
    workers = await console.run("workers")
    assert "w1" in workers.text and "w2" in workers.text and "alive" in workers.text
    one = await console.run("worker w1")
    assert "w1" in one.text and not one.is_error


async def test_errors_are_one_line_and_the_console_goes_on(console: Driver) -> None:
    """Unknown commands, bad flags, unknown jobs and --help never end the console."""
    for line in ("frobnicate", "list --state bogus", "status nosuchjob", "submit",
                 "status 'unclosed", "submit --help"):
        outcome = await console.run(line)
        if line.endswith("--help"):
            assert "--shell" in outcome.text
        else:
            assert outcome.is_error, line
            assert "\n" not in outcome.text.strip(), outcome.text
    assert "frobnicate" in (await console.run("frobnicate")).text
    assert not (await console.run("stats")).is_error


async def test_help(console: Driver) -> None:
    """help lists every CLI and console command; help COMMAND shows its usage."""
    listing = (await console.run("help")).text
    for command in ("submit", "status", "wait", "list", "cancel", "workers", "stats", "leader",
                    "watch", "logs", "use", "quit"):
        assert command in listing
    assert "--priority" in (await console.run("help submit")).text


async def test_completion_of_commands_flags_states_and_job_ids(console: Driver) -> None:
    """Tab offers command names, a command's flags, job states, and recent job ids."""
    con = console.console
    assert {"status", "stats"} <= set(completions(con, "sta"))
    assert "--priority" in completions(con, "submit --pr")
    assert completions(con, "list --state f") == ["failed"]
    job_id = (await console.run("submit --shell true")).text.strip()
    assert job_id in completions(con, "status ")
    assert completions(con, f"cancel {job_id[:4]}") == [job_id]
    await poll_until_answered(con)  # the first answer also brings the worker names
    assert set(completions(con, "worker w")) == {"w1", "w2"}


async def test_toolbar_and_watch(console: Driver) -> None:
    """The toolbar shows the leader and workers; watch runs until a key is pressed."""
    con = console.console
    await poll_until_answered(con)
    toolbar = con.poller.toolbar_text(console.console.addresses[0])
    assert "leader <b>c1</b>" in toolbar and "workers 2/2" in toolbar
    console.pipe.send_text("watch workers\r")
    async with asyncio.timeout(TIMEOUT_S):
        await con.watching.wait()
    console.pipe.send_text("\r")  # any key, even Enter
    async with asyncio.timeout(TIMEOUT_S):
        outcome = await console.outcomes.get()
    assert outcome.line == "watch workers" and not outcome.is_error
    assert not (await console.run("leader")).is_error


async def test_survives_a_coordinator_restart(console: Driver, cluster: Cluster) -> None:
    """After the coordinator is killed and restarted on the same port, commands work again
    without any action from the user, and the toolbar says so while it is down."""
    assert not (await console.run("stats")).is_error
    cluster.coordinator.signal(signal.SIGKILL)
    cluster.coordinator.wait(TIMEOUT_S)
    await console.console.poller.poll_once()
    assert "unreachable" in console.console.poller.toolbar_text(cluster.address)
    cluster.procs.coordinator(port=cluster.port, name="c1-again")
    leader = await console.run("leader")
    assert not leader.is_error and f"127.0.0.1:{cluster.port}" in leader.text
    job_id = (await console.run("submit --shell 'echo back'")).text.strip()
    waited = await console.run(f"wait {job_id} --timeout 30")
    assert not waited.is_error and "succeeded" in waited.text
    await poll_until_answered(console.console)
    assert "unreachable" not in console.console.poller.toolbar_text(cluster.address)


async def test_use_switches_cluster_and_quit_ends(console: Driver, cluster: Cluster) -> None:
    """use points the console at other addresses; quit ends the loop."""
    outcome = await console.run(f"use {cluster.address}")
    assert not outcome.is_error and "leader c1" in outcome.text
    assert cluster.address in completions(console.console, "use ")
    console.pipe.send_text("quit\r")
    assert console.task is not None
    async with asyncio.timeout(TIMEOUT_S):
        await console.task


async def test_schedule_commands(console: Driver) -> None:
    """The console runs the schedule commands as the CLI does: add, list, show with the next
    fire times, pause, remove, and a one-line error for an unknown schedule."""
    added = await console.run("schedule add nightly --cron '0 3 * * *' --tz Europe/Paris "
                              "--shell true")
    assert not added.is_error and "nightly added" in added.text
    listed = await console.run("schedule list")
    assert "nightly" in listed.text and "0 3 * * * (Europe/Paris)" in listed.text
    shown = await console.run("schedule show nightly --next 2 --json")
    assert '"next_at"' in shown.text and '"name": "nightly"' in shown.text
    assert "paused" in (await console.run("schedule pause nightly")).text
    assert "removed" in (await console.run("schedule remove nightly")).text
    missing = await console.run("schedule show nightly")
    assert missing.is_error and "no schedule named 'nightly'" in missing.text


async def test_map_group_status_and_watch_group(console: Driver, tmp_path: Path) -> None:
    """map in the console prints the group; status --group and `watch group G` show its
    progress bar; the group then completes after --group."""
    con = console.console
    items = tmp_path / "items.jsonl"
    items.write_text("".join(f"{i}\n" for i in range(20)))
    mapped = await console.run(f"map --call operator:neg --items {items} --chunk-size 5 --json")
    assert not mapped.is_error, mapped.text
    group = json.loads(mapped.text)["group"]
    waited = await console.run(f"wait --group {group} --timeout 30")
    assert not waited.is_error and "succeeded" in waited.text
    status = await console.run(f"status --group {group}")
    assert "100.0%" in status.text and "4/4 done" in status.text
    assert completions(con, "list --group ") == [group]
    console.pipe.send_text(f"watch group {group}\r")
    async with asyncio.timeout(TIMEOUT_S):
        await con.watching.wait()
    console.pipe.send_text("\r")
    async with asyncio.timeout(TIMEOUT_S):
        outcome = await console.outcomes.get()
    assert outcome.line == f"watch group {group}" and not outcome.is_error
