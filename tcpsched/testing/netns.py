"""Test hosts in Linux network namespaces, for partition tests with real sockets.

Theory of operation: a `TestNetwork` makes one hub namespace holding a Linux bridge (`br0`) and
N host namespaces. Each host is joined to the bridge by a veth pair created inside the hub
(`vethI` stays there as a bridge port, its peer moves into the host and is renamed `eth0`), so no
interface ever appears in the root namespace and every interface name is short and local. Hosts
get addresses of our own from a private subnet (10.213.0.1, .2, ... by default) and `lo` up; they
have no default route, so nothing started in them can reach any address outside loopback and the
other hosts. `cut(host)` sets the host's bridge port down, which is a pulled cable: the host keeps
its address and its sockets, but no frame reaches or leaves it until `heal(host)`.
`cut_between(a, b)` pins, in each of the two hosts, the other's address to a MAC address no host
has (a permanent neighbour entry): their frames to each other go nowhere and are dropped as
silently as by a cut, while both still reach everyone else. That needs only `ip`, not nft,
iptables or tc classifiers, which minimal kernels lack (a blackhole route would instead fail
`connect` at once with EINVAL, which is not what a partition looks like).

Processes are started in a host with `ip netns exec` in a session of their own. Teardown SIGKILLs
each one's process group, then every process `ip netns pids` still finds in our namespaces (a
namespace with a process in it outlives `ip netns del`), and only then deletes the namespaces,
which takes their veths with them. It runs from `__exit__` whatever the body did, and from an
atexit hook as a backstop; `cleanup_stale()` removes what a killed run left behind: namespaces
named `tcpsched-<pid>-<4 hex digits>-...` whose pid is no longer alive. Names carry the
creating pid and a random suffix, so parallel runs never collide and never remove each other's
namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

NAME_PREFIX = "tcpsched-"
DEFAULT_SUBNET = "10.213.0.0/24"
HOSTS_MAX = 64
# Locally administered and unicast; no interface of ours has it, so frames sent to it are lost.
NOWHERE_MAC = "02:00:00:00:00:00"
IP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0

_OUR_NAME = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d+)-[0-9a-f]{{4}}-")

# The atexit backstop needs to find networks a test forgot to close (or could not close because
# the interpreter is exiting on an exception); this set is that registry and nothing else.
_open_networks: set[TestNetwork] = set()


class NetnsError(RuntimeError):
    """An `ip` command of the harness failed; the message carries its argv and stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                            stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {result.returncode}: "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "no output"


@functools.cache
def available() -> str | None:
    """None when namespaces, bridges and veths can be made here; else a one-line reason why not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the partition tests as root)"
    if shutil.which("ip") is None:
        return "the `ip` command is missing (Debian package: iproute2)"
    probe = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` is not permitted here: {_first_line(made.stderr)}"
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot make a Linux bridge (bridge module?): {_first_line(bridge.stderr)}"
        veth = _ip("-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb",
                   check=False)
        if veth.returncode != 0:
            return f"cannot make a veth pair (veth module?): {_first_line(veth.stderr)}"
        executed = subprocess.run(["ip", "netns", "exec", probe, "true"], capture_output=True,
                                  text=True, timeout=IP_TIMEOUT_S, check=False)
        if executed.returncode != 0:
            return f"`ip netns exec` is not permitted here: {_first_line(executed.stderr)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probing network namespaces failed: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _ip("netns", "del", probe, check=False)
    return None


def list_namespaces() -> list[str]:
    """Names of every network namespace `ip netns list` shows (ours and anyone else's)."""
    listing = _ip("netns", "list")
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_pids(namespace: str) -> None:
    """SIGKILL every process inside `namespace` and wait until none is left (or the deadline)."""
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        listing = _ip("netns", "pids", namespace, check=False)
        pids = [int(word) for word in listing.stdout.split() if word.isdigit()]
        pids = [pid for pid in pids if _pid_is_running(pid)]
        if not pids:
            return
        if time.monotonic() >= deadline:
            logger.warning("netns=%s pids=%s still alive after SIGKILL", namespace, pids)
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _pid_is_running(pid: int) -> bool:
    """True unless the pid is gone or a zombie (a zombie holds no namespace and needs no kill)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state letter follows the parenthesised command name, which may contain spaces.
            state = stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _delete_namespace(namespace: str) -> None:
    _kill_namespace_pids(namespace)
    result = _ip("netns", "del", namespace, check=False)
    if result.returncode != 0 and namespace in list_namespaces():
        raise NetnsError(f"netns={namespace} not deleted: {_first_line(result.stderr)}")


def cleanup_stale() -> list[str]:
    """Delete namespaces of ours whose creating process is dead; return the names deleted.

    Only names of the form `tcpsched-<pid>-<4 hex digits>-...` are touched, and only when the
    pid is not a live process, so a concurrent run's namespaces are safe.
    """
    if available() is not None:
        return []
    removed = []
    for namespace in list_namespaces():
        match = _OUR_NAME.match(namespace)
        if match is None or _pid_is_alive(int(match.group(1))):
            continue
        _delete_namespace(namespace)
        removed.append(namespace)
    if removed:
        logger.info("removed stale namespaces=%s", ",".join(removed))
    return removed


class Host:
    """One test host: a network namespace with `eth0` on the hub bridge and an address of ours."""

    def __init__(self, network: TestNetwork, *, index: int, name: str, namespace: str,
                 address: str, hub_port: str) -> None:
        self.network = network
        self.index = index
        self.name = name
        self.namespace = namespace
        self.address = address
        self.hub_port = hub_port
        self.processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} netns={self.namespace}>"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in this host, in a session of its own; it is SIGKILLed at teardown.

        `popen_kwargs` go to `subprocess.Popen` (stdout=, env=, text=, ...); stdin defaults to
        /dev/null. `ip netns exec` execs `argv` in place, so the Popen's pid is `argv`'s own.
        """
        if self.network.is_closed:
            raise NetnsError(f"{self.name}: the network is already torn down")
        if popen_kwargs.get("start_new_session") is False or "process_group" in popen_kwargs:
            raise ValueError("host processes always get a session of their own (teardown kills "
                             "the process group)")
        popen_kwargs["start_new_session"] = True
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        process: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(argv), **popen_kwargs)
        self.processes.append(process)
        logger.debug("host=%s pid=%d started %s", self.name, process.pid, list(argv))
        return process

    def run(self, argv: Sequence[str], timeout: float = 30.0,
            **popen_kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in this host to completion, like `subprocess.run` (killed on timeout)."""
        input_data = popen_kwargs.pop("input", None)
        check = popen_kwargs.pop("check", False)
        if popen_kwargs.pop("capture_output", False):
            popen_kwargs["stdout"] = popen_kwargs["stderr"] = subprocess.PIPE
        if input_data is not None:
            popen_kwargs["stdin"] = subprocess.PIPE
        process = self.popen(argv, **popen_kwargs)
        try:
            stdout, stderr = process.communicate(input_data, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.processes.remove(process)
        completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check:
            completed.check_returncode()
        return completed

    def kill_processes(self) -> None:
        """SIGKILL the process group of every process started here and reap them."""
        for process in self.processes:
            _kill_group(process)
        self.processes.clear()


def _kill_group(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        # The group may already be empty, or the leader gone with members left (killpg works).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    try:
        process.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        logger.warning("pid=%d survived SIGKILL for %.1fs", process.pid, KILL_WAIT_S)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class TestNetwork:
    """N test hosts on one bridge, in namespaces of their own; a context manager.

    ```python
    with TestNetwork(hosts=2) as net:
        a, b = net.hosts
        server = a.popen([sys.executable, "-c", SERVER, a.address])
        net.cut(a)        # a is isolated from every other host
        net.heal(a)
    ```
    """

    # Keep pytest from collecting this class as a test case.
    __test__ = False

    def __init__(self, hosts: int = 2, subnet: str = DEFAULT_SUBNET) -> None:
        network = ipaddress.IPv4Network(subnet)
        if not network.is_private:
            raise ValueError(f"subnet {subnet} is not private; test hosts use addresses of ours")
        if not 1 <= hosts <= min(HOSTS_MAX, network.num_addresses - 2):
            raise ValueError(f"hosts={hosts} must be between 1 and {HOSTS_MAX} and fit {subnet}")
        self.host_count = hosts
        self.subnet = network
        self.run_tag = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.owner_pid = os.getpid()
        self.hub = f"{NAME_PREFIX}{self.run_tag}-hub"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.is_closed = False
        self._undeleted: list[str] = []
        self._cut: set[str] = set()

    def __repr__(self) -> str:
        return f"<TestNetwork {self.run_tag} hosts={len(self.hosts)} closed={self.is_closed}>"

    def __enter__(self) -> TestNetwork:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Make the hub, its bridge and every host; on any failure, undo what was made."""
        reason = available()
        if reason is not None:
            raise NetnsError(f"network namespaces unavailable: {reason}")
        cleanup_stale()
        _open_networks.add(self)
        try:
            self._add_namespace(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            _ip("-n", self.hub, "link", "set", "lo", "up")
            prefix = self.subnet.prefixlen
            for index, address in zip(range(1, self.host_count + 1), self.subnet.hosts(),
                                      strict=False):
                self.hosts.append(self._add_host(index, f"{address}/{prefix}"))
        except BaseException:
            self.close()
            raise
        logger.info("network=%s hosts=%s up", self.run_tag,
                    ",".join(f"{host.name}={host.address}" for host in self.hosts))

    def _add_namespace(self, namespace: str) -> None:
        # Recorded only once made: a name that failed to be added may be someone else's.
        _ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        self._undeleted.append(namespace)

    def _add_host(self, index: int, interface: str) -> Host:
        name = f"h{index}"
        namespace = f"{NAME_PREFIX}{self.run_tag}-{name}"
        hub_port = f"veth{index}"
        self._add_namespace(namespace)
        _ip("-n", self.hub, "link", "add", hub_port, "type", "veth", "peer", "name", "eth0",
            "netns", namespace)
        _ip("-n", self.hub, "link", "set", hub_port, "master", "br0")
        _ip("-n", self.hub, "link", "set", hub_port, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", interface, "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        return Host(self, index=index, name=name, namespace=namespace,
                    address=interface.partition("/")[0], hub_port=hub_port)

    def host(self, name: str) -> Host:
        """The host called `name` ("h1", "h2", ...)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def cut(self, host: Host) -> None:
        """Isolate `host` from every other host: its bridge port goes down (a pulled cable)."""
        self._own(host)
        _ip("-n", self.hub, "link", "set", host.hub_port, "down")
        self._cut.add(host.name)
        logger.info("network=%s host=%s cut", self.run_tag, host.name)

    def heal(self, host: Host) -> None:
        """Undo `cut(host)`: its bridge port comes back up."""
        self._own(host)
        _ip("-n", self.hub, "link", "set", host.hub_port, "up")
        self._cut.discard(host.name)
        logger.info("network=%s host=%s healed", self.run_tag, host.name)

    def is_cut(self, host: Host) -> bool:
        """Whether `host` is isolated by `cut` (not counting `cut_between`)."""
        return host.name in self._cut

    def cut_between(self, a: Host, b: Host) -> None:
        """Silently drop traffic between `a` and `b` only, both ways; others still reach both."""
        self._own(a)
        self._own(b)
        if a is b:
            raise ValueError("cut_between needs two different hosts")
        for here, there in ((a, b), (b, a)):
            # A permanent entry is never overwritten by ARP, so the pair stays apart until healed.
            _ip("-n", here.namespace, "neigh", "replace", there.address, "lladdr", NOWHERE_MAC,
                "nud", "permanent", "dev", "eth0")
        logger.info("network=%s hosts=%s,%s cut between", self.run_tag, a.name, b.name)

    def heal_between(self, a: Host, b: Host) -> None:
        """Undo `cut_between(a, b)`; healing a pair that is not cut is harmless."""
        self._own(a)
        self._own(b)
        for here, there in ((a, b), (b, a)):
            # Deleting the entry lets ARP learn the real address again on the next packet.
            _ip("-n", here.namespace, "neigh", "del", there.address, "dev", "eth0", check=False)
        logger.info("network=%s hosts=%s,%s healed between", self.run_tag, a.name, b.name)

    def _own(self, host: Host) -> None:
        if host.network is not self:
            raise ValueError(f"{host!r} belongs to another network")
        if self.is_closed:
            raise NetnsError(f"network {self.run_tag} is already torn down")

    def close(self) -> None:
        """Kill every process started in a host, then delete every namespace made; idempotent.

        Every step runs even when an earlier one fails, and the first failure is raised at the
        end. An interrupted close leaves the network registered, so the atexit hook finishes it.
        """
        self.is_closed = True
        failure: Exception | None = None
        for host in self.hosts:
            try:
                host.kill_processes()
            except Exception as exc:
                failure = failure or exc
        for namespace in reversed(list(self._undeleted)):
            try:
                _delete_namespace(namespace)
                self._undeleted.remove(namespace)
            except Exception as exc:
                failure = failure or exc
        if not self._undeleted:
            _open_networks.discard(self)
        logger.info("network=%s torn down", self.run_tag)
        if failure is not None:
            raise failure


@atexit.register
def _close_open_networks() -> None:
    # A child forked from a test process inherits the registry; only the creator tears down.
    for network in list(_open_networks):
        if network.owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                network.close()
