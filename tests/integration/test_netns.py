"""The network-namespace test hosts: reachability, cut and heal, and teardown that leaves nothing.

Every address used here is a test host's own (10.213.0.0/24 inside our namespaces) or loopback.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tcpsched.testing import netns
from tcpsched.testing.netns import Host, TestNetwork

ECHO_PORT = 7001
CONNECT_TIMEOUT_S = 0.5

ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(64))
"""

ECHO_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.sendall(b"ping")
        sys.exit(0 if s.recv(64) == b"ping" else 2)
except OSError as exc:
    sys.exit(f"connect failed: {exc!r}")
"""

ESCAPER = """
import os, sys, time
child = os.fork()
if child == 0:
    os.setsid()
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def skip_unless_available() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def network() -> Iterator[TestNetwork]:
    """Two test hosts, torn down whatever the test does."""
    skip_unless_available()
    with TestNetwork(hosts=2) as net:
        yield net


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of `process`, or AssertionError after `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output from pid {process.pid} within {timeout}s"
    return process.stdout.readline().strip()


def start_echo_server(host: Host) -> subprocess.Popen[str]:
    server = host.popen([sys.executable, "-c", ECHO_SERVER, host.address, str(ECHO_PORT)],
                        stdout=subprocess.PIPE, text=True)
    assert read_line(server, 10.0) == "ready"
    return server


def echo(client: Host, server: Host) -> subprocess.CompletedProcess[str]:
    """One TCP round trip from `client` to the echo server on `server`."""
    return client.run([sys.executable, "-c", ECHO_CLIENT, server.address, str(ECHO_PORT),
                       str(CONNECT_TIMEOUT_S)], timeout=10.0, capture_output=True, text=True)


def wait_echo_ok(client: Host, server: Host, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = echo(client, server)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"no echo within {timeout}s: {result.stderr}"
        time.sleep(0.05)


def pid_is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_two_hosts_reach_each_other_over_tcp(network: TestNetwork) -> None:
    """A TCP echo server in one host answers a client in another, at the host's own address."""
    a, b = network.hosts
    start_echo_server(a)
    result = echo(b, a)
    assert result.returncode == 0, result.stderr


def test_hosts_have_no_route_outside_their_subnet(network: TestNetwork) -> None:
    """A host's only route is the test subnet, so nothing in it can reach the outside world."""
    a, _ = network.hosts
    routes = a.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    prefixes = {line.split()[0] if line.split()[0] not in ("local", "broadcast")
                else line.split()[1] for line in routes.stdout.splitlines() if line.strip()}
    assert prefixes <= {"10.213.0.0/24", "10.213.0.1", "10.213.0.255", "127.0.0.0/8",
                        "127.0.0.1", "127.255.255.255"}, routes.stdout


def test_cut_isolates_a_host_and_heal_restores_it(network: TestNetwork) -> None:
    """After cut(a) a connection to a fails within the connect timeout; heal(a) restores it."""
    a, b = network.hosts
    start_echo_server(a)
    wait_echo_ok(b, a)

    network.cut(a)
    assert network.is_cut(a)
    started = time.monotonic()
    result = echo(b, a)
    assert result.returncode != 0
    assert "timed out" in result.stderr, "a cut drops packets silently"
    assert time.monotonic() - started < 5.0
    assert echo(a, a).returncode == 0, "a cut host still reaches itself"

    network.heal(a)
    assert not network.is_cut(a)
    wait_echo_ok(b, a)


def test_cut_between_drops_only_that_pair() -> None:
    """cut_between(a, b) stops a and b reaching each other while c still reaches both."""
    skip_unless_available()
    with TestNetwork(hosts=3) as network:
        a, b, c = network.hosts
        start_echo_server(a)
        start_echo_server(b)
        wait_echo_ok(b, a)

        network.cut_between(a, b)
        for client, server in ((b, a), (a, b)):
            result = echo(client, server)
            assert result.returncode != 0
            assert "timed out" in result.stderr, "the pair's packets are dropped silently"
        assert echo(c, a).returncode == 0
        assert echo(c, b).returncode == 0

        network.heal_between(a, b)
        wait_echo_ok(b, a)
        wait_echo_ok(a, b)


def test_teardown_removes_every_namespace() -> None:
    """After the context exits, `ip netns list` shows none of the namespaces it made."""
    skip_unless_available()
    with TestNetwork(hosts=2) as network:
        made = list(network.namespaces)
        assert len(made) == 3
        assert set(made) <= set(netns.list_namespaces())
    assert not set(made) & set(netns.list_namespaces())


def test_teardown_runs_when_the_body_raises() -> None:
    """A body that raises still leaves no namespace and no process behind."""
    skip_unless_available()
    made: list[str] = []
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test body failed"), TestNetwork(hosts=2) as network:
        made.extend(network.namespaces)
        pids.append(network.hosts[0].popen(["sleep", "60"]).pid)
        raise RuntimeError("test body failed")
    assert made
    assert not set(made) & set(netns.list_namespaces())
    assert not pid_is_running(pids[0])


def test_processes_started_in_a_host_are_gone_after_teardown() -> None:
    """Teardown kills host processes, even one that left for a session of its own."""
    skip_unless_available()
    with TestNetwork(hosts=1) as network:
        (a,) = network.hosts
        parent = a.popen([sys.executable, "-c", ESCAPER], stdout=subprocess.PIPE, text=True)
        escapee = int(read_line(parent, 10.0))
        sleeper = a.popen(["sleep", "60"])
        assert pid_is_running(parent.pid)
        assert pid_is_running(escapee)
        assert pid_is_running(sleeper.pid)
    assert parent.returncode is not None
    assert sleeper.returncode is not None
    assert not pid_is_running(escapee)


def test_cleanup_stale_removes_only_namespaces_of_dead_runs() -> None:
    """cleanup_stale() deletes our namespaces whose pid is dead, and no live run's nor others'."""
    skip_unless_available()
    with open("/proc/sys/kernel/pid_max") as pid_max:
        dead_pid = int(pid_max.read()) + 1  # no process can have this pid
    stale = f"{netns.NAME_PREFIX}{dead_pid}-abcd-h1"
    not_ours = f"other-{os.getpid()}-abcd-h1"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        subprocess.run(["ip", "netns", "add", not_ours], check=True)
        with TestNetwork(hosts=1) as network:
            # Opening the network already ran cleanup_stale(), which took the stale name.
            assert stale not in netns.list_namespaces()
            subprocess.run(["ip", "netns", "add", stale], check=True)
            assert netns.cleanup_stale() == [stale]
            listed = set(netns.list_namespaces())
            assert set(network.namespaces) <= listed
            assert not_ours in listed
    finally:
        for name in (stale, not_ours):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_available_names_the_reason_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root, available() gives a one-line reason instead of trying anything."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = netns.available.__wrapped__()
    assert reason is not None
    assert "root" in reason
    assert "\n" not in reason
