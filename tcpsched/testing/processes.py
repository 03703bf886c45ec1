"""Start and stop real coordinator and worker processes on loopback.

Used by the integration tests, the benchmarks, `make cluster` and `make demo`. Every process is
a child started with `python -m`, its output in a log file; `stop_all` ends every one of them
(SIGTERM, then SIGKILL after a grace), so a failing test leaves nothing behind. Readiness is
asked of the coordinator itself (a `leader` request, then `workers`), never guessed with a sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from tcpsched.client_sync import SyncClient
from tcpsched.errors import TcpschedError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, sig)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class ProcessGroup:
    """A set of tcpsched processes started from one place, stopped together."""

    def __init__(self, workdir: Path, python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.env = {**os.environ, **(env or {})}
        # Jobs that call functions from the tests' own modules must be importable by workers.
        root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, self.env.get("PYTHONPATH", "")) if p
        )
        self.procs: list[Proc] = []

    def start(self, name: str, module: str, args: Sequence[str]) -> Proc:
        log_path = self.workdir / f"{name}.log"
        argv = (self.python, "-m", module, *args)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir, env=self.env,
                                     start_new_session=True)
        proc = Proc(name, popen, log_path, argv)
        self.procs.append(proc)
        return proc

    def coordinator(self, port: int | None = None, node_id: int = 1,
                    extra: Sequence[str] = (), name: str | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        address = f"127.0.0.1:{port}"
        args = ["--id", str(node_id), "--listen", address,
                "--data-dir", str(self.workdir / f"c{node_id}"), *extra]
        return self.start(name or f"c{node_id}", "tcpsched.coordinator", args), address

    def group(self, size: int = 3, extra: Sequence[str] = (),
              ports: Sequence[int] | None = None) -> dict[int, tuple[Proc, str]]:
        """`size` peer coordinators with ids 1..size, each told of all the others."""
        ports = list(ports) if ports is not None else [free_port() for _ in range(size)]
        addresses = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
        return {i: self.peer(i, addresses, extra) for i in addresses}

    def peer(self, node_id: int, addresses: dict[int, str], extra: Sequence[str] = (),
             name: str | None = None) -> tuple[Proc, str]:
        """Coordinator `node_id` of the group whose members listen at `addresses`."""
        peers = [arg for i, a in sorted(addresses.items()) if i != node_id
                 for arg in ("--peer", f"{i}@{a}")]
        port = int(addresses[node_id].rsplit(":", 1)[1])
        return self.coordinator(port=port, node_id=node_id, extra=[*peers, *extra], name=name)

    def worker(self, coordinators: str, name: str, slots: int = 2,
               extra: Sequence[str] = ()) -> Proc:
        args = ["--coordinators", coordinators, "--name", name, "--slots", str(slots), *extra]
        return self.start(name, "tcpsched.worker", args)

    def stop(self, proc: Proc, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace`; returns the exit code."""
        if proc.alive():
            proc.signal(signal.SIGTERM)
            try:
                return proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(5.0)
        return None

    def stop_all(self, grace: float = 3.0) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.signal(signal.SIGCONT)  # a SIGSTOPped process cannot act on SIGTERM
                proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.01))
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5.0)

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} ({p.log_path}) -----\n{p.log()[-4000:]}"
                         for p in self.procs)


def kill_job_processes(pid_file: Path) -> None:
    """Kill the process groups a run's shell jobs recorded in `pid_file` (one pid a line):
    a script's last word, so nothing it started outlives it whatever happened to workers."""
    if not pid_file.exists():
        return
    for line in pid_file.read_text().split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(line), signal.SIGKILL)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except TcpschedError as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def wait_for_workers(client: SyncClient, names: Sequence[str], timeout: float = 15.0,
                     state: str = "alive") -> list[dict]:  # type: ignore[type-arg]
    wanted = set(names)

    def ready() -> list[dict] | None:  # type: ignore[type-arg]
        workers = client.workers()
        found = {w["name"] for w in workers if w["state"] == state}
        return workers if wanted <= found else None

    return wait_until(ready, timeout, what=f"workers {sorted(wanted)} {state}")
