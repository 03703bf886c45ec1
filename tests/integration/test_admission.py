"""Silent sockets cannot lock anyone out: handshake slots from accept, oldest out first.

Each test pins one promise of item 15 of issue 9: a swarm of connections that never say a word
(from the same address as the real client, reopened the moment the coordinator closes them) does
not stop a real client or worker from getting in, with and without TLS; a TLS connection holds
a handshake slot from accept, so silent sockets do not pile up to the file-descriptor limit;
a refused TLS handshake is logged. TLS certificates are made here with `openssl`.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.config import TlsSettings, parse_address
from tcpsched.core import messages as m
from tcpsched.core.codec import HANDSHAKE_FRAME_BYTES_MAX, HANDSHAKE_LIMITS, FrameDecoder
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect
from tests.integration.test_security import make_certificates

SILENT = 100
RUN_TIMEOUT_S = 60.0
HANDSHAKE_SLOTS = 64  # the coordinator's default --max-unauthenticated
PER_SOURCE_SLOTS = 32  # ... and --max-unauthenticated-per-source


class SilentSwarm:
    """`count` connections that never send a byte, each reopened as soon as the coordinator
    closes it (what the issue's attacker did), on a thread of their own."""

    def __init__(self, address: str, count: int) -> None:
        self.address = parse_address(address)
        self.count = count
        self.reopened = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silent-swarm", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> SilentSwarm:
        self._thread.start()
        assert self._ready.wait(RUN_TIMEOUT_S), "the swarm did not open its sockets"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(RUN_TIMEOUT_S)

    def _open(self, selector: selectors.BaseSelector) -> None:
        sock = socket.create_connection(self.address, timeout=RUN_TIMEOUT_S)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            for _ in range(self.count):
                self._open(selector)
            self._ready.set()
            while not self._stop.is_set():
                for key, _events in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        if sock.recv(65536):
                            continue  # a Refused(busy) before the close: keep reading
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass  # reset: closed too
                    selector.unregister(sock)
                    sock.close()
                    self._open(selector)
                    self.reopened += 1
        except BaseException as exc:  # reported by the test, not lost on the thread
            self.error = exc
            self._ready.set()
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def certificates(tmp_path: Path) -> Iterator[dict[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path / "certs"
    directory.mkdir()
    yield make_certificates(directory)


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
    return subprocess.run([sys.executable, "-m", "tcpsched", "--coordinators", address,
                           "--connect-timeout", "20", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=env, check=False)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_silent_sockets_do_not_lock_out_a_client_or_a_worker(procs: ProcessGroup) -> None:
    """100 silent connections from the client's own address, reopened as they close: a CLI
    command and a new worker still get in, and the coordinator holds at most its slots."""
    coordinator, address = procs.coordinator()
    connect(address).close()  # up and listening
    with SilentSwarm(address, SILENT) as swarm:
        done = cli(address, "stats")
        assert done.returncode == 0, done.stderr
        worker = procs.worker(address, "late-worker")
        with connect(address, timeout=20) as client:
            wait_for_workers(client, ["late-worker"], timeout=30)
            job_id = client.submit_shell("echo through the swarm")
            assert client.wait(job_id, timeout=30)["stdout"] == "through the swarm\n"
            stats = client.stats()
        # Slots are per source: all 100 come from 127.0.0.1, so at most 32 of them are held.
        assert open_fds(coordinator.pid) < PER_SOURCE_SLOTS + 30
        assert swarm.error is None
    assert stats["refused_busy"] >= SILENT - PER_SOURCE_SLOTS
    assert worker.alive()
    assert "handshake slots full" in coordinator.log()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_silent_sockets_do_not_lock_out_a_tls_client(procs: ProcessGroup,
                                                     certificates: dict[str, Path]) -> None:
    """With TLS, silent sockets hold a slot from accept (not only after their TLS handshake),
    so they do not pile up; a real TLS client and worker still get in."""
    c = certificates
    certs = c["ca"].parent
    coordinator, address = procs.coordinator(extra=[
        "--tls-cert", str(c["coordinator"]), "--tls-key", str(certs / "coordinator.key")])
    tls_flags = ["--tls-ca", str(c["ca"])]
    connect(address, tls=TlsSettings(ca=str(c["ca"]))).close()  # up and listening
    with SilentSwarm(address, SILENT) as swarm:
        done = cli(address, *tls_flags, "stats")
        assert done.returncode == 0, done.stderr
        procs.worker(address, "tls-late-worker", extra=tls_flags)
        with connect(address, timeout=20, tls=TlsSettings(ca=str(c["ca"]))) as client:
            wait_for_workers(client, ["tls-late-worker"], timeout=30)
            job_id = client.submit_shell("echo tls through the swarm")
            assert client.wait(job_id, timeout=30)["stdout"] == "tls through the swarm\n"
            stats = client.stats()
        assert open_fds(coordinator.pid) < PER_SOURCE_SLOTS + 30
        assert swarm.error is None
    assert stats["refused_busy"] >= SILENT - PER_SOURCE_SLOTS


def test_refused_tls_handshakes_are_logged_and_counted(procs: ProcessGroup,
                                                       certificates: dict[str, Path]) -> None:
    """A plain-TCP hello sent to a TLS coordinator fails its TLS handshake: logged with the
    reason and counted in `stats` as tls_failures."""
    c = certificates
    certs = c["ca"].parent
    coordinator, address = procs.coordinator(extra=[
        "--tls-cert", str(c["coordinator"]), "--tls-key", str(certs / "coordinator.key")])
    connect(address, tls=TlsSettings(ca=str(c["ca"]))).close()  # up and listening
    host, port = parse_address(address)
    with socket.create_connection((host, port), timeout=RUN_TIMEOUT_S) as plain:
        from tcpsched.core.codec import encode

        plain.sendall(encode(m.Hello(version=m.PROTOCOL_VERSION, role="client", name="plain",
                                     nonce=b"n" * m.NONCE_BYTES)))
        while plain.recv(65536):
            pass  # until the coordinator closes it
    with connect(address, tls=TlsSettings(ca=str(c["ca"]))) as client:
        wait_until(lambda: client.stats()["tls_failures"] >= 1, 20, what="tls_failures")
    assert "TLS handshake failed" in coordinator.log()


def test_a_silent_tls_connection_is_closed_at_the_deadline_and_counted(
        procs: ProcessGroup, certificates: dict[str, Path]) -> None:
    """A TLS connection that never starts its TLS handshake is closed --handshake-timeout
    after accept, logged and counted as a handshake timeout like any other."""
    c = certificates
    certs = c["ca"].parent
    coordinator, address = procs.coordinator(extra=[
        "--handshake-timeout", "0.5", "--tls-cert", str(c["coordinator"]),
        "--tls-key", str(certs / "coordinator.key")])
    connect(address, tls=TlsSettings(ca=str(c["ca"]))).close()  # up and listening
    with socket.create_connection(parse_address(address), timeout=RUN_TIMEOUT_S) as silent:
        try:
            assert silent.recv(65536) == b""  # closed by the coordinator, not by us
        except ConnectionResetError:
            pass  # aborted: closed too
    with connect(address, tls=TlsSettings(ca=str(c["ca"]))) as client:
        assert client.stats()["handshake_timeouts"] >= 1
    assert "no TLS handshake within 0.5s" in coordinator.log()


def test_full_slots_close_the_oldest_with_refused_busy(procs: ProcessGroup) -> None:
    """With --max-unauthenticated 2: two silent connections, then a third: the OLDEST is
    closed and reads Refused(busy); the newcomer keeps its slot, and a client gets in."""
    _coordinator, address = procs.coordinator(
        extra=["--max-unauthenticated", "2", "--handshake-timeout", "120"])
    connect(address).close()
    host, port = parse_address(address)
    # Accepted, and so admitted, in the order they connect: the kernel's accept queue is FIFO.
    oldest = socket.create_connection((host, port), timeout=RUN_TIMEOUT_S)
    second = socket.create_connection((host, port), timeout=RUN_TIMEOUT_S)
    third = socket.create_connection((host, port), timeout=RUN_TIMEOUT_S)
    try:
        decoder = FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX, m.HANDSHAKE_TYPES, HANDSHAKE_LIMITS)
        while (refused := decoder.next_message()) is None:
            data = oldest.recv(4096)
            assert data, "closed without a refusal"
            decoder.feed(data)
        assert isinstance(refused, m.Refused) and refused.code == "busy"
        with connect(address) as client:
            assert client.stats()["refused_busy"] >= 1
    finally:
        for sock in (oldest, second, third):
            sock.close()

