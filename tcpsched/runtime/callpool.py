"""A pool of long-lived child processes that run Python callables (`--isolation process`).

Theory of operation: one child per slot, started on first need and reused across jobs, so a
module is imported once per child, not once per job; each child runs one call at a time, so
CPU-bound calls on N slots use N cores. A child is `runtime/callchild.py`, loaded by path in a
fresh interpreter (`python -c`, no fork of the worker: nothing of the worker's state, threads or
sockets leaks into user code) in a session of its own, in the worker's `--workdir`, with the job
mark in its environment. The worker and a child talk over a socket pair in frames of msgpack
(4-byte big-endian length, then a map): the child says it is ready, then gets one request and
sends one reply per job. No pickle: arguments and results follow the codec's value rules, and a
result is checked again here before it becomes an outcome.

A timeout or a cancel ends the call by ending its child: SIGTERM to the child's process group,
SIGKILL after `kill_grace_s`; processes the call started outside that group are found by the
mark (`on_retired`, the executor's sweep). A child that dies (a crash, `os._exit`, the memory
limit) fails only its job, with what killed it. Either way a fresh child is started at once in
its place, so the slot is warm again for the next job.

Children die with the worker: each asks the kernel for SIGKILL when the worker goes
(PR_SET_PDEATHSIG), and its process group is tracked by the worker's reaper process, which
kills it if the worker is killed before it could.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from typing import Any

import attrs
import msgpack

from tcpsched.core.codec import VALUE_BYTES_MAX, check_value
from tcpsched.errors import RemoteProtocolError
from tcpsched.runtime import callchild
from tcpsched.runtime import reaper as reaping
from tcpsched.runtime.liveout import JobOutput
from tcpsched.runtime.outcome import KillSwitch, Outcome, stopped
from tcpsched.runtime.reaper import Reaper

log = logging.getLogger(__name__)

CHILD_START_S = 60.0  # how long a new child may take to say it is ready (a loaded machine)
CHILD_EXIT_S = 5.0  # after SIGKILL, how long to wait for the exit status
# `python -c` loads the child by path: importing `tcpsched` would import the client too.
BOOT = ("import importlib.util as u, sys; "
        "s = u.spec_from_file_location('tcpsched_callchild', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); sys.exit(m.main(sys.argv[2:]))")


class ChildStartError(Exception):
    """A child could not be started, or did not say it was ready."""


class _BadReply(Exception):
    """A child sent something that is not a reply: it is replaced, and its job fails."""


class _ChildProtocol(asyncio.Protocol):
    """The worker's end of one child's socket: frames in, each one message, handed straight to
    the call waiting for it (`expect`), else kept in order. No reading task per call: a no-op
    call costs one write, one read wake-up and one future, so the loop wakes the waiting call
    in the same turn the reply arrives."""

    def __init__(self, reply_bytes_max: int) -> None:
        self.reply_bytes_max = reply_bytes_max
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._messages: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[Any] | None = None
        self._final: Any = None  # what every read after the end sees: None or a _BadReply
        self.closed = False
        # Where the running call's live output frames go (callchild.py sends them before
        # the reply); None: they are dropped, the reply carries the whole output anyway.
        self.live: JobOutput | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        size = callchild.HEADER.size
        if not self._buffer and len(data) > size and not self.closed:
            # The common case: the read is exactly one whole reply; no copy into the buffer.
            (length,) = callchild.HEADER.unpack_from(data)
            if len(data) == size + length and length <= self.reply_bytes_max:
                self._deliver(_message(memoryview(data)[size:]))
                return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= size and not self.closed:
            (length,) = callchild.HEADER.unpack_from(buffer)
            if not 1 <= length <= self.reply_bytes_max:
                self._deliver(_BadReply(f"a reply of {length} bytes"))
                return
            if len(buffer) < size + length:
                break
            body = bytes(buffer[size:size + length])
            del buffer[:size + length]
            self._deliver(_message(body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._deliver(None)

    def _deliver(self, message: Any) -> None:
        if self.closed:
            return
        if isinstance(message, dict) and "out" in message:
            stream, data = message.get("out"), message.get("data")
            live = self.live
            if live is not None and stream in ("stdout", "stderr") and isinstance(data, bytes):
                live.feed(stream, data)
            return
        if isinstance(message, _BadReply) or message is None:
            self.closed = True  # nothing after end of file or a bad frame is read
            self._final = message
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        elif not self.closed:
            self._messages.append(message)

    def expect(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        """A future for the next frame's map: None at end of file, a _BadReply (not raised)
        for a bad frame. One waiter at a time: the child answers requests in order."""
        future: asyncio.Future[Any] = (loop or asyncio.get_running_loop()).create_future()
        if self._messages:
            future.set_result(self._messages.popleft())
        elif self.closed:
            future.set_result(self._final)
        else:
            self._waiter = future
        return future

    async def next_message(self) -> dict[str, Any] | None:
        """The next frame's map; None at end of file; raises _BadReply for a bad frame."""
        message = await self.expect()
        if isinstance(message, _BadReply):
            raise message
        return message


def _message(body: bytes | memoryview) -> Any:
    """One frame's body as a map, or the _BadReply it is."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for bad input
        return _BadReply(f"bad msgpack: {type(exc).__name__}")
    if type(message) is not dict:
        return _BadReply(f"a {type(message).__name__}, not a map")
    return message


@attrs.frozen
class _Stop:
    """What a call's future holds when a timeout or a kill ended it before its reply."""

    reason: str


@attrs.define(eq=False)
class _Child:
    proc: asyncio.subprocess.Process
    protocol: _ChildProtocol
    mark: str
    jobs: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, request: dict[str, Any], packer: msgpack.Packer) -> None:
        if self.protocol.transport is not None and not self.protocol.closed:
            self.protocol.transport.write(_frame(request, packer))

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()


def _frame(value: Any, packer: msgpack.Packer) -> bytes:
    try:
        body = packer.pack(value)
    except BaseException:
        packer.reset()
        raise
    return callchild.HEADER.pack(len(body)) + body


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def wait_exit(proc: asyncio.subprocess.Process, timeout_s: float) -> int | None:
    """The child's exit status once it has exited, or None after `timeout_s`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            return await proc.wait()
    return proc.returncode


class CallPool:
    """Up to `size` children (one per slot); `run` runs one call in one of them."""

    def __init__(self, size: int, *, output_bytes_max: int, kill_grace_s: float,
                 memory_mib: int | None = None, workdir: str | None = None,
                 reaper: Reaper | None = None,
                 on_retired: Callable[[str], None] | None = None) -> None:
        """`on_retired(mark)` is called once a child has ended, to sweep up whatever its
        calls started outside its process group (the executor's `_kill_escaped`)."""
        self.size = size
        self.output_bytes_max = output_bytes_max
        self.kill_grace_s = kill_grace_s
        self.memory_mib = memory_mib
        self.workdir = workdir
        self._reaper = reaper
        self._on_retired = on_retired
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._warming: set[asyncio.Task[_Child]] = set()
        self._closed = False
        self.spawning = 0  # children being started, whose pids are not known yet
        self.started = 0  # children started, replacements included
        # A reply holds a result (checked against VALUE_BYTES_MAX in the child) and two
        # capped outputs, whose decoding may turn a bad byte into three.
        self._reply_bytes_max = VALUE_BYTES_MAX + 8 * output_bytes_max + 1024 * 1024
        # One packer for every request (msgpack.packb makes one per call); the loop's only.
        self._packer = msgpack.Packer(use_bin_type=True)

    def pids(self) -> set[int]:
        """Our live children, whose exit status is ours to collect (not the orphan sweep's)."""
        return {c.pid for c in (*self._idle, *self._busy) if c.proc.returncode is None}

    # -- children -------------------------------------------------------------------------------

    async def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair()
        mark = secrets.token_hex(8)
        argv = [sys.executable, "-c", BOOT, callchild.__file__, str(theirs.fileno()),
                str(os.getpid()), str(self.output_bytes_max), str(VALUE_BYTES_MAX),
                str(self.memory_mib or 0)]
        self.spawning += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd=self.workdir,
                start_new_session=True, env={**os.environ, reaping.MARK_ENV: mark},
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise ChildStartError(f"cannot start a process for the call: {exc}") from None
        finally:
            self.spawning -= 1
            theirs.close()
        self.started += 1
        if self._reaper is not None:
            self._reaper.track(proc.pid, mark)
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: _ChildProtocol(self._reply_bytes_max), sock=ours)
        except BaseException:
            _killpg(proc.pid, signal.SIGKILL)
            ours.close()
            raise
        child = _Child(proc, protocol, mark)
        try:
            async with asyncio.timeout(CHILD_START_S):
                hello = await protocol.next_message()
        except (TimeoutError, _BadReply):
            hello = None
        except BaseException:  # cancelled while it starts: it is nobody's, so it goes
            self._kill_now(child)
            raise
        if hello is None or "ready" not in hello:
            code = await self._end(child, signal.SIGKILL)
            raise ChildStartError(f"the process for the call did not start ({_exit_text(code)}"
                                  "; see the worker's log)")
        log.debug("call child pid=%d ready", proc.pid)
        return child

    async def _take(self) -> _Child:
        while self._idle:
            child = self._idle.pop()
            if child.proc.returncode is None:
                return child
            await self._retire(child)  # it died while idle (someone killed it)
        return await self._spawn()

    def _replace(self) -> None:
        """Start a fresh child for the slot one just left, so the next job finds it warm."""
        if self._closed or len(self._idle) + len(self._busy) + len(self._warming) >= self.size:
            return
        task = asyncio.ensure_future(self._spawn())
        self._warming.add(task)
        task.add_done_callback(self._warmed)

    def _warmed(self, task: asyncio.Task[_Child]) -> None:
        self._warming.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("cannot start a replacement call process: %s", exc)
            return
        child = task.result()
        if self._closed or len(self._idle) + len(self._busy) >= self.size:
            self._kill_now(child)
        else:
            self._idle.append(child)

    async def _end(self, child: _Child, sig: int | None) -> int | None:
        """End `child` (`sig` first, SIGKILL after the grace; None: it is ending by itself)
        and everything in its process group; its exit status."""
        if sig is not None:
            _killpg(child.pid, sig)
        code = await wait_exit(child.proc, self.kill_grace_s)
        if code is None:
            _killpg(child.pid, signal.SIGKILL)
            code = await wait_exit(child.proc, CHILD_EXIT_S)
        _killpg(child.pid, signal.SIGKILL)  # what its calls left in its group
        child.close()
        if self._reaper is not None:
            self._reaper.untrack(child.pid)
        if self._on_retired is not None:
            self._on_retired(child.mark)
        return code

    async def _retire(self, child: _Child, sig: int | None = None) -> int | None:
        self._busy.discard(child)
        try:
            return await self._end(child, sig)
        finally:
            self._replace()

    def _kill_now(self, child: _Child) -> None:
        """SIGKILL, without waiting: the loop collects its exit status."""
        _killpg(child.pid, signal.SIGKILL)
        child.close()
        if self._reaper is not None:
            self._reaper.untrack(child.pid)

    def close(self) -> None:
        """End every child now: idle ones hold nothing, and busy ones were killed already."""
        self._closed = True
        for task in self._warming:
            task.cancel()
        for child in (*self._idle, *self._busy):
            self._kill_now(child)
        self._idle.clear()
        self._busy.clear()

    # -- one call -------------------------------------------------------------------------------

    async def run(self, request: dict[str, Any], timeout: float | None,
                  kill: KillSwitch, *, live: JobOutput | None = None) -> Outcome:
        """Run one call: `request` has `function`, `args`, `kwargs`, `defined_in`, `cwd`,
        `env` (see callchild.py); with `live` (and `request["live"]`), what the call prints
        goes there as it comes."""
        try:
            child = await self._take()
        except ChildStartError as exc:
            now = time.time()
            return Outcome("failed", error=str(exc), started_at=now, finished_at=now)
        started = time.time()
        self._busy.add(child)
        child.jobs += 1
        settled = False
        loop = asyncio.get_running_loop()
        # One future per call: the reply, end of file, or a _Stop from the timer or the kill.
        answer = child.protocol.expect(loop)

        def pull(reason: str) -> None:
            if not answer.done():
                answer.set_result(_Stop(reason))

        kill.listeners.append(pull)
        timer = None if timeout is None else loop.call_later(
            timeout, pull, f"timed out after {timeout:g}s")
        if kill.event.is_set():
            pull(kill.reason)
        try:
            child.protocol.live = live
            child.send(request, self._packer)
            try:
                reply = await answer
            finally:
                child.protocol.live = None
                kill.listeners.remove(pull)
                if timer is not None:
                    timer.cancel()
            if isinstance(reply, _Stop):
                log.info("call %s: %s; ending its process pid=%d", request["function"],
                         reply.reason, child.pid)
                await self._retire(child, signal.SIGTERM)
                settled = True
                return stopped(reply.reason, started, time.time())
            bad = str(reply) if isinstance(reply, _BadReply) else None
            if bad is not None:
                reply = None
            if reply is None or reply.get("fatal"):
                code = await self._retire(child, None if bad is None else signal.SIGKILL)
                settled = True
                if reply is None:
                    error = (f"the call's process sent {bad}" if bad is not None
                             else self._death(code))
                    log.warning("call %s: %s", request["function"], error)
                    return Outcome("failed", error=error, started_at=started,
                                   finished_at=time.time())
            else:
                self._busy.discard(child)
                self._idle.append(child)
                settled = True
            return self._outcome(reply, started, time.time())
        finally:
            if not settled:  # we are being cancelled ourselves: leave no process behind
                self._busy.discard(child)
                self._kill_now(child)
                if self._on_retired is not None:
                    self._on_retired(child.mark)
                self._replace()

    def _death(self, code: int | None) -> str:
        if code == callchild.EXIT_OUT_OF_MEMORY:
            limit = f" over --max-memory {self.memory_mib} MiB" if self.memory_mib else ""
            return f"the call ran out of memory{limit}; its process was replaced"
        text = f"the process running the call died ({_exit_text(code)})"
        if self.memory_mib and code is not None and code < 0:
            text += f"; the worker's --max-memory is {self.memory_mib} MiB"
        return text + "; it was replaced"

    def _outcome(self, reply: dict[str, Any], started: float, finished: float) -> Outcome:
        stdout, stderr = reply.get("stdout", ""), reply.get("stderr", "")
        if type(stdout) is not str or type(stderr) is not str:
            return Outcome("failed", error="the call's process sent a malformed reply",
                           started_at=started, finished_at=finished)
        if not reply.get("ok"):
            return Outcome("failed", error=str(reply.get("error") or "the call failed"),
                           stdout=stdout, stderr=stderr, started_at=started,
                           finished_at=finished)
        packed = reply.get("result")
        try:
            if type(packed) is not bytes:
                raise RemoteProtocolError("no packed result")
            value = msgpack.unpackb(packed, raw=False, strict_map_key=False)
            check_value(value)
        except Exception as exc:  # a value the wire cannot carry: this job's failure
            return Outcome("failed", error=f"result cannot be sent: {exc}", stdout=stdout,
                           stderr=stderr, started_at=started, finished_at=finished)
        return Outcome("succeeded", None, value, stdout, stderr, None, started, finished)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"
