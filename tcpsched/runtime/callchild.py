"""What runs inside a call child: one long-lived process per worker slot that runs Python
callables for the worker (`runtime/callpool.py` is the worker's side).

Theory of operation: the worker starts this file with `python -c` (loaded by path, so the child
does not import the tcpsched package and its client: a child is ready in the time the
interpreter and msgpack take to start) and hands it one end of a socket pair. The child says it
is ready, then serves requests one at a time: a frame (4-byte big-endian length, msgpack map)
names the callable, its arguments, the job's cwd and environment; the reply carries the result
(packed msgpack, checked here so that a value the wire cannot carry fails only its job), the
error and traceback, and what the call printed or logged. Modules stay imported between jobs;
per-job state (cwd, environment variables, sys.stdout/sys.stderr, a root logging handler) is
set for the call and put back after it.

The child dies with the worker: it asks the kernel for SIGKILL when its parent goes
(PR_SET_PDEATHSIG), and the worker's reaper kills its process group too. Timeouts and cancels
are the worker's business: it SIGTERMs the child, then SIGKILLs it, and starts a fresh one.
With a memory limit (`--max-memory`, RLIMIT_AS) an allocation past it raises MemoryError: the
child replies saying so and exits, so the next job gets a clean process.

Nothing here unpickles: requests and replies are msgpack with the codec's value rules.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import os
import signal
import struct
import sys
import threading
import time
import traceback
import types
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
EXIT_OUT_OF_MEMORY = 86  # the child ran out of memory where it could not even reply
PR_SET_PDEATHSIG = 1
LIVE_FLUSH_S = 0.05  # a call's output goes to the worker at most this often, as it comes
PACKER_KEEP_BYTES = 1 << 20  # a packer whose buffer grew past this is replaced
# Results that are never awaitable: no ABC check for them (most results are one of these).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})


# -- shared with the worker (thread mode and shell output) ---------------------------------------


class CappedBuffer:
    """Bytes kept up to `cap`; the rest is counted and dropped, and `text()` says so."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0

    def add(self, data: bytes) -> bytes:
        """Keep what fits; the piece kept (what live output may show of `data`)."""
        self.total += len(data)
        room = self.cap - self.kept
        if room > 0:
            piece = data[:room]
            self.parts.append(piece)
            self.kept += len(piece)
            return piece
        return b""

    def text(self) -> str:
        if not self.total:  # the common case: the call printed nothing
            return ""
        out = b"".join(self.parts).decode("utf-8", errors="replace")
        if self.total > self.kept:
            out += (f"\n[tcpsched: output truncated: kept the first {self.kept} of "
                    f"{self.total} bytes (cap {self.cap})]")
        return out


def resolve_callable(function: str, defined_in: str | None = None) -> Any:
    """`pkg.module:attr.path` to the object, or ImportError with a one-line reason.

    With `defined_in` the walk may not leave that module: one name after the colon, neither
    private nor a module, and an object whose `__module__` is `defined_in` or below it. So a
    name the allowed module merely imported (`os`, or `system` from os) is refused.
    """
    module_name, _, attr_path = function.partition(":")
    if defined_in is not None and ("." in attr_path or attr_path.startswith("_")):
        raise ImportError(f"{function} is not allowed: --allow-call {defined_in} allows only "
                          f"a top-level public name of the module ({module_name}:NAME)")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any error importing user code is that job's failure
        raise ImportError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    if defined_in is not None:
        if not hasattr(obj, attr_path):
            raise ImportError(f"{module_name} has no attribute {attr_path!r}")
        obj = getattr(obj, attr_path)
        if not callable(obj):
            raise ImportError(f"{function} is not callable")
        home = getattr(obj, "__module__", None)
        if isinstance(obj, types.ModuleType) or not isinstance(home, str) or not (
                home == defined_in or home.startswith(defined_in + ".")):
            where = f"defined in {home}" if isinstance(home, str) else "not defined there"
            raise ImportError(f"{function} is not allowed: it is {where}, and --allow-call "
                              f"{defined_in} allows only callables defined in {defined_in}")
        return obj
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{module_name} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ImportError(f"{function} is not callable")
    return obj


# -- the child ---------------------------------------------------------------------------------


class _LiveFrames:
    """What a call prints, sent to the worker while it runs (a request with `live`): frames
    `{"out": stream, "data": bytes}` from a daemon thread, at most one every LIVE_FLUSH_S, so
    a call that prints line by line costs no system call per line. `stop` returns once no frame
    is on its way, so every frame of a call precedes its reply."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._pending: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.active = False
        self._dirty = False  # something was added since the last stop (it may be on its way)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.active = True  # nothing waits on it: `add` reads it under the condition's lock
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="tcpsched-live", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no room for a thread (--max-memory): the reply has it all
                with self._cond:
                    self.active = False
                return
            self._thread = thread

    def add(self, stream: str, data: bytes) -> None:
        if data:
            with self._cond:
                if self.active:
                    self._pending[stream].append(data)
                    self._dirty = True
                    self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self.active = False  # from here on nothing is added
            if not self._dirty:  # nothing was added since the last stop: nothing to wait for
                return
        with self._send_lock, self._cond:
            for parts in self._pending.values():
                parts.clear()
            self._dirty = False

    def _run(self) -> None:
        last_sent = 0.0
        while True:
            with self._cond:
                while not any(self._pending.values()):
                    self._cond.wait()
            # Rate-limited, not delayed: a line after a quiet spell goes at once, and what a
            # busy call prints within the interval goes in one frame.
            delay = last_sent + LIVE_FLUSH_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            last_sent = time.monotonic()
            with self._send_lock:
                with self._cond:
                    if not self.active:
                        continue
                    taken = {k: b"".join(v) for k, v in self._pending.items() if v}
                    for parts in self._pending.values():
                        parts.clear()
                frames = b"".join(_frame({"out": k, "data": v}) for k, v in taken.items())
                with contextlib.suppress(OSError):
                    self._sock.sendall(frames)


class _CaptureStream(io.TextIOBase):
    """sys.stdout or sys.stderr for the length of one call: text into a capped buffer (a new
    one per call, set by `capture`), and what it keeps to the live frames, if any."""

    def __init__(self, name: str = "stdout") -> None:
        super().__init__()
        self._buffer = CappedBuffer(0)
        self._name = name
        self.live: _LiveFrames | None = None

    def capture(self, buffer: CappedBuffer) -> None:
        self._buffer = buffer

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        kept = self._buffer.add(text.encode("utf-8", errors="replace"))
        if self.live is not None:
            self.live.add(self._name, kept)
        return len(text)


class _NoSuchCwd(Exception):
    """The job's cwd is not a directory here: the job fails, saying so."""


@contextlib.contextmanager
def _job_environment(cwd: str | None, env: dict[str, str]) -> Any:
    """The job's cwd and variables for the call; the child's own ones back after it. A job
    with neither (the common case) costs no system call."""
    if cwd is None and not env:
        yield
        return
    home = os.getcwd()
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise _NoSuchCwd(f"cannot run in cwd {cwd}: {exc.strerror or exc}") from None
    saved = {key: os.environ.get(key) for key in env}
    try:
        os.environ.update(env)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if cwd is not None:
            os.chdir(home)


class _Child:
    def __init__(self, output_bytes_max: int, value_bytes_max: int, memory_mib: int) -> None:
        self.output_bytes_max = output_bytes_max
        self.value_bytes_max = value_bytes_max
        self.memory_mib = memory_mib
        self._loop: Any = None  # this child's asyncio loop, made for the first coroutine
        # Modules are imported once per child, so what a name resolves to is kept too (the
        # walk and the --allow-call check cost more than a no-op call itself).
        self._resolved: dict[tuple[str, str | None], Any] = {}
        self._stdout, self._stderr = _CaptureStream("stdout"), _CaptureStream("stderr")
        self.live: _LiveFrames | None = None  # set by main: the worker's socket
        self._handler = logging.StreamHandler(self._stderr)  # the root logger's, during a call
        self._handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        self._root = logging.getLogger()
        self._nowhere = CappedBuffer(0)  # the streams' buffer between calls: keeps nothing
        # Results and replies are packed by the main thread only: one packer for both
        # (msgpack.packb makes a new one per call; a failed pack leaves this one empty).
        self.packer = msgpack.Packer(use_bin_type=True)

    def _await(self, awaitable: Any) -> Any:
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        try:
            return loop.run_until_complete(awaitable)
        finally:
            # Tasks the call left behind must not run during the next job.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))

    def _call(self, request: dict[str, Any]) -> Any:
        name = (request["function"], request.get("defined_in"))
        fn = self._resolved.get(name)
        if fn is None:
            fn = self._resolved[name] = resolve_callable(*name)
        value = fn(*request.get("args", ()), **request.get("kwargs", {}))
        if type(value) not in _PLAIN and inspect.isawaitable(value):
            value = self._await(value)
        return value

    def _captured(self, request: dict[str, Any]) -> Any:
        """The call, with sys.stdout, sys.stderr and the root logger's handler ours for its
        length. The handler stays on the root logger between calls (adding and removing it
        takes the logging lock twice a call), and is put back if a call took it off; between
        calls it writes nowhere, since no call's buffer is set."""
        stdout, stderr = sys.stdout, sys.stderr
        handlers = self._root.handlers
        if self._handler not in handlers:
            self._root.addHandler(self._handler)
        sys.stdout, sys.stderr = self._stdout, self._stderr
        try:
            return self._call(request)
        finally:
            sys.stdout, sys.stderr = stdout, stderr

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """One job: the reply map. `fatal` in it means this child must not serve another."""
        out, err = CappedBuffer(self.output_bytes_max), CappedBuffer(self.output_bytes_max)
        self._stdout.capture(out)
        self._stderr.capture(err)
        live = self.live if request.get("live") else None
        self._stdout.live = self._stderr.live = live
        if live is not None:
            live.start()
        reply: dict[str, Any] = {"ok": False}
        cwd, env = request.get("cwd"), request.get("env")
        try:
            if cwd is None and not env:  # the common case: no context manager to enter
                value = self._captured(request)
            else:
                with _job_environment(cwd, env or {}):
                    value = self._captured(request)
            reply.update(self._packed(value))
        except (_NoSuchCwd, ImportError) as exc:
            reply["error"] = str(exc)
        except MemoryError as exc:
            reply.update(self._failure(exc, err))
            reply["error"] = self.out_of_memory(str(exc))
            reply["fatal"] = True
        except BaseException as exc:  # the job's failure (SystemExit included), never ours
            reply.update(self._failure(exc, err))
        if live is not None:
            live.stop()
            self._stdout.live = self._stderr.live = None
        # What a thread the call left behind logs from now on is nobody's.
        self._stdout.capture(self._nowhere)
        self._stderr.capture(self._nowhere)
        reply["stdout"] = out.text()
        reply["stderr"] = err.text()
        return reply

    def out_of_memory(self, detail: str = "") -> str:
        limit = (f"over the worker's --max-memory of {self.memory_mib} MiB" if self.memory_mib
                 else "out of memory")
        return f"the call ran {limit} (MemoryError{': ' + detail if detail else ''}); " \
               "its process was replaced"

    def _failure(self, exc: BaseException, err: CappedBuffer) -> dict[str, Any]:
        # The traceback starts where the user's code is called: the frames above are ours.
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None \
                and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        err.add(text.encode("utf-8", errors="replace"))
        return {"error": f"{type(exc).__name__}: {exc}"}

    def _packed(self, value: Any) -> dict[str, Any]:
        try:
            packed = self.packer.pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            self.packer.reset()
            return {"error": f"result cannot be sent: {exc}"}
        if len(packed) > self.value_bytes_max:
            return {"error": f"result cannot be sent: value is {len(packed)} bytes, over "
                             f"{self.value_bytes_max}"}
        return {"ok": True, "result": packed}


def _die_with_parent(parent: int) -> None:
    """SIGKILL from the kernel when the worker goes, however it goes (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before the request above took effect
        os._exit(1)


class _Requests:
    """The request frames from the worker, read with one `recv` for as many frames as have
    arrived (a small request is one system call, not one for the header and one for the
    body)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def next(self) -> bytes | None:
        """The next frame's body; None at end of file."""
        buffer, size = self._buffer, HEADER.size
        while True:
            if len(buffer) >= size:
                end = size + HEADER.unpack_from(buffer)[0]
                if len(buffer) >= end:
                    body = bytes(buffer[size:end])
                    del buffer[:end]
                    return body
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                return None
            buffer += chunk


def _frame(value: Any, packer: Any = None) -> bytes:
    body = msgpack.packb(value, use_bin_type=True) if packer is None else packer.pack(value)
    return HEADER.pack(len(body)) + body


def main(argv: list[str]) -> int:
    """argv: socket fd, worker pid, output cap (bytes), result cap (bytes), memory (MiB)."""
    import socket

    fd, parent, output_bytes_max, value_bytes_max, memory_mib = (int(a) for a in argv)
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker, which drains
    sys.path[0] = os.getcwd()  # `-c` put "" there; imports must not follow a job's chdir
    if memory_mib:
        import resource

        limit = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sock = socket.socket(fileno=fd)
    child = _Child(output_bytes_max, value_bytes_max, memory_mib)
    child.live = _LiveFrames(sock)
    sock.sendall(_frame({"ready": os.getpid()}))
    requests = _Requests(sock)
    while (body := requests.next()) is not None:
        request = msgpack.unpackb(body, raw=False, strict_map_key=True)
        try:
            reply = child.run(request)
            frame = _frame(reply, child.packer)
            if len(frame) > PACKER_KEEP_BYTES:  # its buffer grew to this: not kept for later
                child.packer = msgpack.Packer(use_bin_type=True)
        except MemoryError:
            os._exit(EXIT_OUT_OF_MEMORY)
        sock.sendall(frame)
        if reply.get("fatal"):
            break
    return 0
