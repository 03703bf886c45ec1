"""Malformed input over a raw socket closes that one connection; the coordinator serves on.

Each test speaks bytes to a real coordinator: garbage, impossible lengths, valid msgpack of the
wrong shape, messages out of order, before and after the handshake. The connection must be
closed by the coordinator (we never half-close first, which would make the test pass for the
wrong reason), and afterwards a client connected all along, a brand-new client and a running
worker must all still work.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import msgpack
import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.config import parse_address
from tcpsched.core import messages as m
from tcpsched.core.codec import HEADER, VALUE_DEPTH_MAX, FrameDecoder, encode
from tcpsched.testing.processes import Proc, ProcessGroup, wait_for_workers
from tests.conftest import connect

CLOSE_WAIT_S = 30.0  # the handshake deadline is 5 s; a closed connection ends well before


@attrs.frozen
class Server:
    coordinator: Proc
    address: str
    client: SyncClient  # connected before any garbage is sent, kept all module long


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
           ) -> Iterator[Server]:
    """One coordinator and worker w1 for the module, plus a long-lived client."""
    group = ProcessGroup(tmp_path_factory.mktemp("protocol") / "run")
    failed_before = request.session.testsfailed
    client: SyncClient | None = None
    try:
        coordinator, address = group.coordinator()
        group.worker(address, "w1", slots=2)
        client = connect(address)
        wait_for_workers(client, ["w1"])
        yield Server(coordinator, address, client)
    finally:
        if client is not None:
            client.close()
        group.stop_all()
        if request.session.testsfailed > failed_before:
            print(group.logs())


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def packed(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def hello(role: str = "client", version: int = m.PROTOCOL_VERSION) -> m.Hello:
    return m.Hello(version=version, role=role, name="raw-socket", nonce=os.urandom(32))


def open_raw(address: str) -> socket.socket:
    host, port = parse_address(address)
    sock = socket.create_connection((host, port), timeout=CLOSE_WAIT_S)
    sock.settimeout(CLOSE_WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> list[Any]:
    """Read until the coordinator closes; returns the messages it sent before closing.

    Fails if the connection is still open after CLOSE_WAIT_S.
    """
    decoder = FrameDecoder(allowed=None)
    messages: list[Any] = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return messages
        except TimeoutError:
            pytest.fail(f"the coordinator kept the connection open for {CLOSE_WAIT_S}s")
        if not data:
            return messages
        decoder.feed(data)
        while (msg := decoder.next_message()) is not None:
            messages.append(msg)


def handshake(sock: socket.socket, role: str = "client") -> m.Welcome:
    sock.sendall(encode(hello(role)))
    decoder = FrameDecoder(allowed=m.HANDSHAKE_TYPES)
    while (msg := decoder.next_message()) is None:
        data = sock.recv(65536)
        assert data, "closed during the handshake"
        decoder.feed(data)
    assert isinstance(msg, m.Welcome), msg
    return msg


def assert_still_serving(server: Server) -> None:
    """The process lives, the old and a new client work, and a job runs on the worker."""
    assert server.coordinator.alive()
    assert server.client.leader()["address"] == server.address
    with connect(server.address) as fresh:
        job_id = fresh.submit_shell("echo still-here")
        record = fresh.wait(job_id, timeout=60)
        workers = fresh.workers()
    assert record["state"] == "succeeded" and record["stdout"] == "still-here\n"
    assert [(w["name"], w["state"]) for w in workers] == [("w1", "alive")]


BEFORE_HANDSHAKE = {
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "length 0xFFFFFFFF and no body": b"\xff\xff\xff\xff",
    "length over the handshake limit and no body": HEADER.pack(5000),
    "length 0": HEADER.pack(0),
    "bad msgpack": frame(b"\xc1\xc1\xc1"),
    "msgpack array": packed([1, 2, 3]),
    "msgpack map without a type": packed({"hello": "there"}),
    "unknown message type": packed({"t": "launch_missiles"}),
    "request before hello": encode(m.Workers(req_id=1)),
    "hello with wrong field types": packed({"t": "hello", "version": "1", "role": "client",
                                            "name": "x", "nonce": b"n" * 32}),
    "hello with a short nonce": packed({"t": "hello", "version": 1, "role": "client",
                                        "name": "x", "nonce": b"n"}),
    "hello with a bad role": packed({"t": "hello", "version": 1, "role": "admin",
                                     "name": "x", "nonce": b"n" * 32}),
    "hello twice as long as allowed": packed({"t": "hello", "version": 1, "role": "client",
                                              "name": "x" * 3000, "nonce": b"n" * 32}),
}


@pytest.mark.parametrize("payload", BEFORE_HANDSHAKE.values(), ids=BEFORE_HANDSHAKE.keys())
def test_malformed_input_before_the_handshake_closes_only_that_connection(
        server: Server, payload: bytes) -> None:
    """Garbage, impossible lengths or wrong shapes before Hello: closed; others unaffected."""
    with open_raw(server.address) as sock:
        sock.sendall(payload)
        read_until_closed(sock)
    assert_still_serving(server)


def test_unsupported_protocol_version_is_refused_with_a_reason(server: Server) -> None:
    """A Hello with another protocol version gets Refused (code "version"), then the close."""
    with open_raw(server.address) as sock:
        sock.sendall(encode(hello(version=99)))
        messages = read_until_closed(sock)
    assert [type(msg) for msg in messages] == [m.Refused]
    assert messages[0].code == "version"
    assert_still_serving(server)


AFTER_HANDSHAKE = {
    "garbage": b"\x00\x00\x00\x08garbage!",
    "length over 16 MiB and no body": HEADER.pack(16 * 1024 * 1024 + 1),
    "length 0": HEADER.pack(0),
    "msgpack string": packed("submit"),
    "submit of a bogus job": packed({"t": "submit", "req_id": 1, "jobs": [{"kind": "bogus"}]}),
    "submit with a string req_id": packed({"t": "submit", "req_id": "1", "jobs": []}),
    "submit with a priority out of range": packed({
        "t": "submit", "req_id": 1,
        "jobs": [{"kind": "shell", "command": "true", "priority": -(2**62)}]}),
    "cancel without a job id": packed({"t": "cancel", "req_id": 1}),
    "list with a negative limit": packed({"t": "list", "req_id": 1, "limit": -1}),
    "a worker message from a client": encode(m.Register(name="imposter", slots=1)),
    "a second hello": encode(hello()),
    "a reply sent to the coordinator": encode(m.Reply(req_id=1, value=None)),
    "a value nested too deep": packed({"t": "submit", "req_id": 1, "jobs": [
        {"kind": "call", "function": "m:f", "args": [nested(VALUE_DEPTH_MAX + 5)]}]}),
}


@pytest.mark.parametrize("payload", AFTER_HANDSHAKE.values(), ids=AFTER_HANDSHAKE.keys())
def test_malformed_input_after_the_handshake_closes_only_that_connection(
        server: Server, payload: bytes) -> None:
    """A client that shook hands and then sends nonsense is closed; no job is created."""
    before = server.client.stats()["submitted"]
    with open_raw(server.address) as sock:
        handshake(sock)
        sock.sendall(payload)
        messages = read_until_closed(sock)
    assert not any(isinstance(msg, m.Reply) for msg in messages)
    assert server.client.stats()["submitted"] == before
    assert_still_serving(server)


def test_worker_that_beats_before_registering_is_closed(server: Server) -> None:
    """A worker connection must Register first; a Heartbeat before that closes it."""
    with open_raw(server.address) as sock:
        handshake(sock, role="worker")
        sock.sendall(encode(m.Heartbeat()))
        read_until_closed(sock)
    assert_still_serving(server)


def test_connection_dropped_inside_a_frame_is_harmless(server: Server) -> None:
    """Half a frame and then end-of-stream: the coordinator drops that connection only."""
    data = encode(m.Workers(req_id=1))
    with open_raw(server.address) as sock:
        handshake(sock)
        sock.sendall(data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        read_until_closed(sock)
    assert_still_serving(server)


def test_valid_raw_request_gets_a_reply(server: Server) -> None:
    """The raw-socket helpers speak the protocol: a well-formed request is answered."""
    with open_raw(server.address) as sock:
        handshake(sock)
        sock.sendall(encode(m.Leader(req_id=42)))
        decoder = FrameDecoder(allowed=m.COORDINATOR_TO_CLIENT)
        while (msg := decoder.next_message()) is None:
            decoder.feed(sock.recv(65536))
    assert isinstance(msg, m.Reply) and msg.req_id == 42
    assert msg.value["address"] == server.address
