"""Partitions between real coordinators, on test hosts in network namespaces.

Coordinators 1-3 run on hosts h1-h3 at addresses of our own (10.213.0.x, inside our namespaces
only), with a token, as every non-loopback address needs one. h4 holds the workers and a client
agent (`netns_client.py`: the test process, in the root namespace, cannot reach the hosts, so it
sends the agent requests over a pipe). A cut is a pulled cable (`TestNetwork.cut`), an asymmetric
partition a pair that cannot see each other (`cut_between`). Shell jobs append their number to
an effects file, so whether a job ran is read from disk, not from what a coordinator says.
Leadership is checked twice: each coordinator is asked who leads, and every coordinator's log
is read for its "became leader" lines, of which there may be at most one per epoch.

Each test tears the network down whatever happens (every process SIGKILLed, every namespace
deleted) and prints the processes' logs when it fails. Without root or `ip` they skip, saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tcpsched.runtime.transport import Connection, limit_unacknowledged
from tcpsched.testing import netns
from tcpsched.testing.netns import Host, TestNetwork

T = TypeVar("T")

PORT = 7001
TIMING = ["--election-timeout", "0.6", "--hold-down", "1", "--heartbeat-interval", "0.2",
          "--heartbeat-timeout", "1.5"]
COORDINATORS = 3
WAIT_S = 30.0  # generous: two shared cores, other suites running beside us
FAILOVER_BOUND_S = 5.0  # election timeout 0.6 s; the rest is slack for a loaded machine
VIEW_TIMEOUT_S = 1.0  # how long one coordinator gets to say who leads
AGENT = Path(__file__).with_name("netns_client.py")
ROOT = Path(__file__).resolve().parents[2]
BECAME_LEADER = re.compile(r"node=(\d+) epoch=(\d+) became leader")


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


class Agent:
    """A client agent running in a test host; requests go down its stdin, answers come up."""

    def __init__(self, process: subprocess.Popen[bytes], name: str) -> None:
        self.process = process
        self.name = name
        self._buffer = b""
        assert self.receive(WAIT_S).get("ready"), f"agent {name} did not start"

    def send(self, method: str, coordinators: Iterable[str], *args: Any,
             connect_timeout: float = 5.0, token: bool = True, **kwargs: Any) -> None:
        """Ask without waiting for the answer (collect it with `receive`)."""
        request = {"method": method, "coordinators": list(coordinators), "args": list(args),
                   "kwargs": kwargs, "connect_timeout": connect_timeout, "token": token}
        if method == "submit_each":
            request["commands"] = request["kwargs"].pop("commands")
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next answer, or AssertionError after `timeout` seconds (or if the agent died)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"agent {self.name} gave no answer within {timeout}s"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"agent {self.name} exited (code {self.process.poll()})"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, method: str, coordinators: Iterable[str], *args: Any,
            answer_within_s: float = WAIT_S, **kwargs: Any) -> dict[str, Any]:
        """One request and its answer, `{"ok": ..., "value" | "error": ...}`; `kwargs` go to
        the method, but for the agent's own `connect_timeout` and `token`."""
        self.send(method, coordinators, *args, **kwargs)
        return self.receive(answer_within_s)

    def value(self, method: str, coordinators: Iterable[str], *args: Any, **kwargs: Any) -> Any:
        answer = self.ask(method, coordinators, *args, **kwargs)
        assert answer["ok"], f"{method} failed: {answer}"
        return answer["value"]


class Cluster:
    """Coordinators on h1-h3, workers and a client agent on h4, files under `workdir`."""

    def __init__(self, net: TestNetwork, workdir: Path) -> None:
        self.net = net
        self.workdir = workdir
        self.token_file = workdir / "token"
        self.token_file.write_text(secrets.token_hex(16))
        self.token_file.chmod(0o600)
        self.effects = workdir / "effects"
        self.effects.touch()
        self.addresses = {i: f"{net.hosts[i - 1].address}:{PORT}"
                          for i in range(1, COORDINATORS + 1)}
        self.client_host = net.hosts[COORDINATORS]
        self.log_paths: list[Path] = []
        self.coordinators: dict[int, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._jobs = 0

    @property
    def all(self) -> list[str]:
        return list(self.addresses.values())

    def host(self, node_id: int) -> Host:
        return self.net.hosts[node_id - 1]

    def _start(self, host: Host, name: str, argv: list[str], **popen: Any
               ) -> subprocess.Popen[bytes]:
        """Start `python argv` in `host`; its output (an agent's stderr only) goes to NAME.log."""
        log_path = self.workdir / f"{name}.log"
        self.log_paths.append(log_path)
        with open(log_path, "ab") as log:
            if "stdout" not in popen:
                popen.update(stdout=log, stderr=subprocess.STDOUT)
            else:
                popen["stderr"] = log
            return host.popen([sys.executable, *argv], cwd=self.workdir, env=self.env, **popen)

    def coordinator(self, node_id: int) -> None:
        peers = [arg for i, address in self.addresses.items() if i != node_id
                 for arg in ("--peer", f"{i}@{address}")]
        self.coordinators[node_id] = self._start(self.host(node_id), f"c{node_id}", [
            "-m", "tcpsched.coordinator", "--id", str(node_id),
            "--listen", self.addresses[node_id], "--token-file", str(self.token_file),
            "--data-dir", str(self.workdir / f"c{node_id}"), *peers, *TIMING])

    def worker(self, host: Host, name: str, slots: int = 2) -> None:
        self._start(host, name, [
            "-m", "tcpsched.worker", "--coordinators", ",".join(self.all),
            "--token-file", str(self.token_file), "--name", name, "--slots", str(slots)])

    def agent(self, host: Host, name: str) -> Agent:
        process = self._start(host, name, [str(AGENT), str(self.token_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        return Agent(process, name)

    def start(self, workers: Iterable[str] = ("w1", "w2")) -> Agent:
        """Every coordinator and the workers; returns the client agent on h4 once 3 leads and
        the workers are alive."""
        # 3 and 1 first, 2 once 3 leads: started together, 2 can win the first epoch, and
        # these tests are about partitions, not about who wins a race at start-up.
        self.coordinator(3)
        self.coordinator(1)
        client = self.agent(self.client_host, "client-h4")
        self.wait_leader(client, COORDINATORS, WAIT_S)
        self.coordinator(2)
        wait_until(lambda: "became follower of 3" in self.log("c2"), WAIT_S, "2 to follow 3")
        names = list(workers)
        for name in names:
            self.worker(self.client_host, name)
        self.wait_workers(client, names)
        return client

    def wait_workers(self, client: Agent, names: list[str]) -> None:
        def alive() -> bool:
            answer = client.ask("workers", self.all)
            return answer["ok"] and {w["name"] for w in answer["value"]
                                     if w["state"] == "alive"} >= set(names)

        wait_until(alive, WAIT_S, f"workers {names} alive")

    # -- asking who leads -------------------------------------------------------------------------

    def view(self, client: Agent, node_id: int) -> dict[str, Any] | None:
        """Who coordinator `node_id` says leads (a follower sends the question on to the leader
        it names); None if it cannot say within VIEW_TIMEOUT_S."""
        answer = client.ask("leader", [self.addresses[node_id]],
                            connect_timeout=VIEW_TIMEOUT_S)
        return answer["value"] if answer["ok"] else None

    def views(self, client: Agent) -> dict[int, dict[str, Any] | None]:
        return {node_id: self.view(client, node_id) for node_id in self.addresses}

    def wait_leader(self, client: Agent, node_id: int, timeout: float) -> dict[str, Any]:
        """Wait until the group (asked as a client asks it) names `node_id` as its leader."""
        def leads() -> dict[str, Any] | None:
            answer = client.ask("leader", self.all, connect_timeout=VIEW_TIMEOUT_S)
            return answer["value"] if answer["ok"] and answer["value"]["id"] == node_id else None

        return wait_until(leads, timeout, f"coordinator {node_id} to lead")

    def wait_one_leader(self, client: Agent, node_id: int, timeout: float) -> dict[str, Any]:
        """Wait until every coordinator names `node_id` as the leader, at one epoch."""
        def agreed() -> dict[str, Any] | None:
            views = list(self.views(client).values())
            if all(v is not None and (v["id"], v["epoch"]) == (node_id, views[0]["epoch"])
                   for v in views):
                return views[0]
            return None

        return wait_until(agreed, timeout, f"every coordinator to name {node_id} the leader")

    # -- jobs and invariants ----------------------------------------------------------------------

    def submit(self, client: Agent, count: int, command: str = "echo {n} >> {effects}"
               ) -> dict[str, int]:
        """Submit `count` jobs that append their number to the effects file (`command`, with
        {n} and {effects} filled in); every one must be acknowledged. Returns id -> number."""
        numbers = list(range(self._jobs, self._jobs + count))
        self._jobs += count
        answers = client.value("submit_each", self.all, commands=[
            command.format(n=n, effects=self.effects) for n in numbers])
        failed = [a for a in answers if not a["ok"]]
        assert not failed, f"submits not acknowledged: {failed}"
        return {a["value"]: n for a, n in zip(answers, numbers, strict=True)}

    def check_acknowledged(self, client: Agent, acknowledged: dict[str, int],
                           within_s: float = WAIT_S) -> None:
        """Every acknowledged job is there and succeeded within `within_s`, and the effects
        file shows it ran."""
        answer = client.ask("gather", self.all, list(acknowledged), timeout=within_s,
                            connect_timeout=10.0, answer_within_s=within_s + WAIT_S)
        assert answer["ok"], f"acknowledged jobs not all finished: {answer}"
        records = answer["value"]
        assert [r["id"] for r in records] == list(acknowledged)
        assert [r["state"] for r in records] == ["succeeded"] * len(records), records
        runs = Counter(int(word) for word in self.effects.read_text().split())
        missing = [n for n in acknowledged.values() if runs[n] < 1]
        assert not missing, f"acknowledged jobs that never ran: {missing}"

    def leaders_by_epoch(self) -> dict[int, set[int]]:
        """Every "became leader" line of every coordinator's log, grouped by epoch."""
        leaders: dict[int, set[int]] = defaultdict(set)
        for node_id in self.addresses:
            text = (self.workdir / f"c{node_id}.log").read_text(errors="replace")
            for match in BECAME_LEADER.finditer(text):
                leaders[int(match.group(2))].add(int(match.group(1)))
        return dict(leaders)

    def check_one_leader_per_epoch(self) -> dict[int, set[int]]:
        leaders = self.leaders_by_epoch()
        doubled = {epoch: ids for epoch, ids in leaders.items() if len(ids) > 1}
        assert not doubled, f"two leaders in one epoch: {doubled}"
        return leaders

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"----- {path.name} -----\n{path.read_text(errors='replace')[-6000:]}"
                         for path in self.log_paths if path.exists())


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Five test hosts (coordinators on h1-h3, workers and clients on h4, h5 spare), torn down
    whatever the test does; the logs are printed when it fails."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with TestNetwork(hosts=COORDINATORS + 2) as net:
        made = Cluster(net, tmp_path)
        try:
            yield made
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is None or report.failed:
                print(made.logs())


def test_isolated_leader_is_replaced_and_nothing_acknowledged_is_lost(cluster: Cluster) -> None:
    """Cut leader 3 off: 2 leads, the majority keeps acknowledging, the cut leader acknowledges
    nothing; healed, one leader holds every acknowledged job and the cut leader's tail is gone."""
    client = cluster.start()
    refused = client.ask("leader", cluster.all, token=False, connect_timeout=2.0)
    assert refused["error"] == "AuthError", f"a client without the token got in: {refused}"
    isolated_client = cluster.agent(cluster.host(3), "client-h3")
    before = cluster.submit(client, 5)
    first = client.value("leader", cluster.all)
    assert first["id"] == 3

    cluster.net.cut(cluster.host(3))
    cut_at = time.monotonic()
    # At once, while 3 may still believe it leads: its client (on its own host) still reaches it.
    isolated_command = f"echo isolated >> {cluster.effects}"
    isolated_client.send("submit_each", [cluster.addresses[3]], connect_timeout=2.0,
                         commands=[isolated_command])
    second = cluster.wait_leader(client, 2, FAILOVER_BOUND_S)
    failover_s = time.monotonic() - cut_at
    assert second["epoch"] > first["epoch"]
    during = cluster.submit(client, 10)

    answer = isolated_client.receive(WAIT_S)
    assert not (answer["ok"] and answer["value"][0]["ok"]), f"the cut leader acknowledged: {answer}"
    wait_until(lambda: "lost its majority; stepping down" in cluster.log("c3"), WAIT_S,
               "the cut leader to step down")
    late = isolated_client.ask("submit_each", [cluster.addresses[3]], connect_timeout=1.0,
                               commands=[isolated_command])
    assert not (late["ok"] and late["value"][0]["ok"]), f"the stepped-down 3 acknowledged: {late}"
    # Serving is running jobs too: the workers, on the majority's side, leave the cut leader.
    cluster.check_acknowledged(client, during, within_s=15.0)

    cluster.net.heal(cluster.host(3))
    # The highest id, caught up, takes over again after its hold-down: one leader for all.
    final = cluster.wait_one_leader(client, 3, WAIT_S)
    assert final["epoch"] > second["epoch"]
    cluster.check_acknowledged(client, {**before, **during})
    listed = client.value("list", cluster.all, limit=1000)
    assert len(listed) == len(before) + len(during)
    assert isolated_command not in {r.get("command") for r in listed}
    assert "isolated" not in cluster.effects.read_text().split()
    cluster.check_one_leader_per_epoch()
    print(f"failover after the cut: {failover_s:.2f}s")


def test_asymmetric_partition_keeps_one_leader_per_epoch(cluster: Cluster) -> None:
    """3 and 2 cannot see each other, both see 1: one leader per epoch, epochs never go back,
    submits keep being acknowledged; healed, nothing acknowledged is lost, even with 3 killed."""
    client = cluster.start()
    acknowledged = cluster.submit(client, 5)
    cluster.net.cut_between(cluster.host(2), cluster.host(3))
    # Watch for several election timeouts: 2 hears no leader and looks for one, the whole time.
    seen: dict[int, list[int]] = defaultdict(list)  # coordinator -> epochs it named, in order
    leader_of: dict[int, set[int]] = defaultdict(set)  # epoch -> leaders named for it
    watch_until = time.monotonic() + 4.0
    rounds = 0
    while time.monotonic() < watch_until:
        rounds += 1
        acknowledged.update(cluster.submit(client, 2))
        for node_id, view in cluster.views(client).items():
            if view is not None:
                seen[node_id].append(view["epoch"])
                leader_of[view["epoch"]].add(view["id"])
    assert rounds >= 3, "too few rounds to watch the partition"
    assert all(len(ids) == 1 for ids in leader_of.values()), dict(leader_of)
    for node_id, epochs in seen.items():
        assert epochs == sorted(epochs), f"coordinator {node_id} named epochs {epochs}"
    assert set(seen) == set(cluster.addresses), f"a coordinator never answered: {dict(seen)}"

    cluster.net.heal_between(cluster.host(2), cluster.host(3))
    cluster.wait_one_leader(client, 3, WAIT_S)
    cluster.check_acknowledged(client, acknowledged)
    # 2 missed the whole partition's replication. Once it follows 3 again, kill 3: the new
    # leader (2, pulling what it lacks from 1) must hold every acknowledged job.
    wait_until(lambda: cluster.log("c2").count("became follower of 3") >= 2, WAIT_S,
               "2 to follow 3 again")
    os.killpg(cluster.coordinators[3].pid, signal.SIGKILL)
    cluster.wait_leader(client, 2, FAILOVER_BOUND_S)
    acknowledged.update(cluster.submit(client, 2))
    cluster.check_acknowledged(client, acknowledged)
    cluster.check_one_leader_per_epoch()


async def test_a_connection_can_bound_how_long_sent_data_goes_unacknowledged() -> None:
    """limit_unacknowledged sets TCP_USER_TIMEOUT (the worker's way to notice a leader behind a
    partition, which sends no FIN), where the platform has it."""
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux only")
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Connection(reader, writer)
    try:
        assert limit_unacknowledged(conn, 2.0)
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2000
    finally:
        conn.close()
        await conn.wait_closed()
        for other in accepted:
            other.close()
            await other.wait_closed()
        server.close()
        await server.wait_closed()


def test_a_worker_cut_off_loses_its_job_and_its_late_result_is_refused(cluster: Cluster) -> None:
    """A worker cut off from every coordinator: its job is reassigned after the heartbeat
    timeout and runs elsewhere; healed, the worker's result for the old attempt is refused, and
    the effects file shows the job ran (at least once)."""
    client = cluster.start(workers=())
    lonely = cluster.net.hosts[COORDINATORS + 1]
    cluster.worker(lonely, "w5", slots=1)
    cluster.wait_workers(client, ["w5"])
    (job_id,) = cluster.submit(client, 1, command="sleep 3; echo {n} >> {effects}")

    def running_on_w5() -> bool:
        record = client.value("status", cluster.all, job_id)
        return record["state"] == "running" and record["worker"] == "w5"

    wait_until(running_on_w5, WAIT_S, "the job to run on w5")
    cluster.worker(cluster.client_host, "w1", slots=1)
    cluster.wait_workers(client, ["w1"])
    cluster.net.cut(lonely)
    (record,) = client.value("gather", cluster.all, [job_id], timeout=WAIT_S,
                             answer_within_s=2 * WAIT_S)
    assert (record["state"], record["worker"], record["attempts"]) == ("succeeded", "w1", 2)

    cluster.net.heal(lonely)
    wait_until(lambda: "stale result ignored" in cluster.log("c3"), WAIT_S,
               "w5's late result to reach the leader and be refused")
    after = client.value("status", cluster.all, job_id)
    assert (after["state"], after["worker"], after["attempts"]) == ("succeeded", "w1", 2)
    runs = cluster.effects.read_text().split()
    assert 1 <= runs.count("0") <= 2, runs
