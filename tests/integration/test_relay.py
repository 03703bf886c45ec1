"""A relay on the path after a good handshake: every frame is authenticated, so it is cut.

Each test pins one promise of item 11 of issue 9: a small TCP relay in the test process passes
a worker's token handshake through untouched and then injects a forged `Assign` (the issue's
attack), or replays, drops, reorders or alters one sealed unit; the side that receives it
closes the connection with a logged reason, the injected command never runs (an effects file
stays absent), and the worker reconnects and serves again. Without a token there is nothing to
key a MAC with and frames travel as they are; with TLS the channel itself authenticates them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from tcpsched.config import parse_address
from tcpsched.core import messages as m
from tcpsched.core.channel import HEADER, TAG_BYTES
from tcpsched.core.codec import encode
from tcpsched.testing.processes import Proc, ProcessGroup, wait_for_workers, wait_until
from tests.conftest import connect

HANDSHAKE_FRAMES = 2  # each way, with a token: Hello + Auth up, Challenge + Welcome down
Tamper = Callable[[str, int, bytes], list[bytes]]  # (direction, unit index, unit) -> to send


class Relay:
    """Listens on a free loopback port and relays every connection to `target`. On the first
    connection only, `tamper` decides what goes on for each sealed unit after the handshake
    (later connections pass untouched, so a worker that was cut gets back in)."""

    def __init__(self, target: str, tamper: Tamper) -> None:
        self.target = parse_address(target)
        self.tamper = tamper
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.welcome_epoch: int | None = None
        self.connections = 0
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Relay:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _shut(self.listener)  # wakes the accept (a close alone would not, on Linux)
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                _shut(sock)
        for thread in self._threads:
            thread.join(10)
        for sock in self._sockets:
            sock.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            try:
                up = socket.create_connection(self.target)
            except OSError:
                down.close()  # the coordinator is not there: neither are we
                continue
            with self._lock:
                self._sockets += [down, up]
                first = self.connections == 0
                self.connections += 1
            self._spawn(self._pump, "up", down, up, first)
            self._spawn(self._pump, "down", up, down, first)

    def _pump(self, direction: str, source: socket.socket, sink: socket.socket,
              tampered: bool) -> None:
        """Relay one direction: handshake frames as they are, then sealed units one by one
        through `tamper` (first connection only)."""
        buffer = b""
        frames = units = 0
        try:
            while data := source.recv(65536):
                buffer += data
                while True:
                    if len(buffer) < HEADER.size:
                        break
                    (length,) = HEADER.unpack_from(buffer)
                    sealed = frames >= HANDSHAKE_FRAMES
                    end = HEADER.size + length + (TAG_BYTES if sealed else 0)
                    if len(buffer) < end:
                        break
                    piece, buffer = buffer[:end], buffer[end:]
                    if not sealed:
                        frames += 1
                        self._observe(direction, piece)
                        sink.sendall(piece)
                        continue
                    out = self.tamper(direction, units, piece) if tampered else [piece]
                    units += 1
                    for chunk in out:
                        sink.sendall(chunk)
        except OSError:
            pass
        except BaseException as exc:  # a bug in the relay: reported by the test
            self.errors.append(exc)
        finally:
            _shut(source)
            _shut(sink)

    def _observe(self, direction: str, frame: bytes) -> None:
        body = msgpack.unpackb(frame[HEADER.size:], raw=False)
        if direction == "down" and body.get("t") == "welcome":
            self.welcome_epoch = body["epoch"]  # in clear text: what the attacker used


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("relay-test-token\n")
    return path


def run_through_relay(procs: ProcessGroup, token_file: Path, tamper: Tamper,
                      ) -> tuple[Proc, str, Relay]:
    """A token coordinator, and a worker dialing it through a tampering relay."""
    coordinator, address = procs.coordinator(extra=["--token-file", str(token_file),
                                                    "--heartbeat-interval", "0.2"])
    connect(address, token=token_file.read_bytes().strip()).close()  # up and listening
    relay = Relay(address, tamper)
    return coordinator, address, relay


def test_a_forged_assign_after_the_handshake_is_cut_and_never_runs(
        procs: ProcessGroup, token_file: Path, tmp_path: Path) -> None:
    """The relay injects Assign{shell: "id > f"} with the epoch it saw, right after the
    worker's Registered: the worker refuses the unit (bad MAC), logs why, never runs it,
    reconnects and runs real jobs."""
    effects = tmp_path / "pwned"
    relay_box: list[Relay] = []

    def inject(direction: str, index: int, unit: bytes) -> list[bytes]:
        if direction != "down" or index != 0:
            return [unit]
        epoch = relay_box[0].welcome_epoch
        assert epoch is not None
        forged = encode(m.Assign(job_id="0123456789ab", attempt=1, epoch=epoch, kind="shell",
                                 command=f"id > {effects}", function=None, args=(),
                                 kwargs={}, timeout=None))
        # Shaped like a sealed unit, with the best tag an attacker without the key has.
        return [unit, forged + b"\x00" * TAG_BYTES]

    coordinator, address, relay = run_through_relay(procs, token_file, inject)
    relay_box.append(relay)
    token = token_file.read_bytes().strip()
    with relay:
        worker = procs.worker(relay.address, "w1", extra=["--token-file", str(token_file)])
        wait_until(lambda: "failed authentication" in worker.log(), 30,
                   what="the worker to refuse the forged unit")
        with connect(address, token=token) as client:
            wait_until(lambda: relay.connections >= 2, 30, what="the worker to reconnect")
            wait_for_workers(client, ["w1"], timeout=30)
            job_id = client.submit_shell("echo real")
            assert client.wait(job_id, timeout=30)["stdout"] == "real\n"
            assert client.stats()["submitted"] == 1
        assert relay.errors == []
    assert not effects.exists()
    assert "bad MAC" in worker.log()
    assert "0123456789ab" not in worker.log()  # never taken as an assignment
    assert "stale result" not in coordinator.log()


def _replay(direction: str, index: int, unit: bytes) -> list[bytes]:
    return [unit, unit] if (direction, index) == ("up", 1) else [unit]


def _drop(direction: str, index: int, unit: bytes) -> list[bytes]:
    return [] if (direction, index) == ("up", 1) else [unit]


def _alter(direction: str, index: int, unit: bytes) -> list[bytes]:
    if (direction, index) != ("up", 1):
        return [unit]
    changed = bytearray(unit)
    changed[HEADER.size + 1] ^= 0x01  # one bit of the payload
    return [bytes(changed)]


class _Reorder:
    """Hold up-unit 1 back and send it after unit 2."""

    def __init__(self) -> None:
        self.held: bytes | None = None

    def __call__(self, direction: str, index: int, unit: bytes) -> list[bytes]:
        if (direction, index) == ("up", 1):
            self.held = unit
            return []
        if (direction, index) == ("up", 2) and self.held is not None:
            return [unit, self.held]
        return [unit]


TAMPERS: dict[str, Callable[[], Tamper]] = {
    "replayed": lambda: _replay, "dropped": lambda: _drop, "reordered": _Reorder,
    "altered": lambda: _alter,
}


@pytest.mark.parametrize("how", TAMPERS)
def test_a_replayed_dropped_reordered_or_altered_unit_is_cut(
        procs: ProcessGroup, token_file: Path, how: str) -> None:
    """The relay tampers with the worker's second sealed write (a heartbeat): the coordinator
    closes that connection with a logged reason and counts it; the worker gets back in."""
    coordinator, address, relay = run_through_relay(procs, token_file, TAMPERS[how]())
    token = token_file.read_bytes().strip()
    with relay:
        procs.worker(relay.address, "w1", extra=["--token-file", str(token_file)])
        wait_until(lambda: "failed authentication" in coordinator.log(), 30,
                   what="the coordinator to refuse the tampered unit")
        with connect(address, token=token) as client:
            wait_until(lambda: relay.connections >= 2, 30, what="the worker to reconnect")
            wait_for_workers(client, ["w1"], timeout=30)
            assert client.stats()["protocol_errors"] >= 1
        assert relay.errors == []
    assert "closing 127.0.0.1" in coordinator.log() and "bad MAC" in coordinator.log()
