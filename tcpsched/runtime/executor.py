"""Runs one attempt of a job: a shell command in its own process group, or a Python callable.

Theory of operation: a shell job starts in a new session (so its process group is its own),
with stdin closed and stdout/stderr read concurrently into buffers capped at
`output_bytes_max` each (the rest is counted and dropped, and the record says so). On timeout or
a kill order the whole group gets SIGTERM, then SIGKILL after `kill_grace_s`; when the shell
itself exits, whatever it left behind in its group is killed too. A process that left the group
(`setsid cmd &`) is found by the mark in its environment and killed as well, with everything
below it (see runtime/reaper.py for how, and for the one case it cannot find).

A callable is `module:function`. A coroutine function is awaited on the loop; a plain one runs
in a thread, so a busy job never delays heartbeats or other jobs. A thread cannot be killed: on
timeout or cancel the attempt ends at once and the thread is abandoned (logged); its return
value is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import os
import queue
import secrets
import signal
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

import attrs

from tcpsched.core.codec import encode_value
from tcpsched.errors import LocalProtocolError
from tcpsched.runtime import reaper as reaping
from tcpsched.runtime.reaper import Reaper

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024
PIPE_SETTLE_S = 1.0  # after the shell exits, how long stragglers may hold its pipes


@attrs.frozen
class Outcome:
    state: str  # "succeeded", "failed" or "cancelled"
    exit_code: int | None = None
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0


@attrs.define
class KillSwitch:
    """Set by the worker to stop a running attempt; `reason` ends up in the record."""

    event: asyncio.Event = attrs.field(factory=asyncio.Event)
    reason: str = ""

    def pull(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


class _CappedBuffer:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - self.kept
        if room > 0:
            piece = data[:room]
            self.parts.append(piece)
            self.kept += len(piece)

    def text(self) -> str:
        out = b"".join(self.parts).decode("utf-8", errors="replace")
        if self.total > self.kept:
            out += (f"\n[tcpsched: output truncated: kept the first {self.kept} of "
                    f"{self.total} bytes (cap {self.cap})]")
        return out


async def _pump(stream: asyncio.StreamReader | None, buffer: _CappedBuffer) -> None:
    if stream is None:
        return
    while data := await stream.read(READ_CHUNK_BYTES):
        buffer.add(data)


class JobThreads:
    """Runs plain callables on daemon threads, reusing idle ones, one new thread when none is.

    Not a ThreadPoolExecutor: a job past its timeout cannot be killed, so its thread is
    abandoned; in a fixed-size pool it would hold a place that later jobs queue behind (and time
    out in), and pool threads are joined at interpreter exit, so a worker told to stop would hang
    until the abandoned job returned. Here an abandoned thread is simply no longer idle.
    """

    def __init__(self, name: str = "tcpsched-job") -> None:
        self._name = name
        self._work: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes this item (or an equal one) off the queue
            else:
                self._started += 1
                threading.Thread(target=self._serve, name=f"{self._name}-{self._started}",
                                 daemon=True).start()
        self._work.put((loop, future, fn))
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            loop, future, fn = item
            try:
                outcome = (True, fn())
            except BaseException as exc:  # the job's failure, reported, never ours
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, outcome)
            del item, loop, future, fn, outcome
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let idle threads end; busy (or abandoned) ones end when their job returns."""
        with self._lock:
            for _ in range(self._started):
                self._work.put(None)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # cancelled: the attempt ended without it
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Executor:
    def __init__(self, slots: int, output_bytes_max: int, kill_grace_s: float,
                 reaper: Reaper | None = None, *, subreaper: bool = False) -> None:
        """`subreaper`: this process is a child subreaper (`reaper.become_subreaper`), so a
        job's escaped processes become our children: only our descendants need searching, and
        the re-parented ones that end must be reaped here. Otherwise all of /proc is searched."""
        self.output_bytes_max = output_bytes_max
        self.kill_grace_s = kill_grace_s
        self._threads = JobThreads()
        self._reaper = reaper
        self._subreaper = subreaper
        self._shells: set[int] = set()  # our job shells not yet waited for: never reaped here
        self._spawning = 0  # shells being started, whose pids are not known yet

    def shutdown(self) -> None:
        self._threads.shutdown()
        if self._reaper is not None:
            self._reaper.close()

    async def run_shell(self, command: str, timeout: float | None, kill: KillSwitch) -> Outcome:
        started = time.time()
        mark = secrets.token_hex(8)
        self._spawning += 1
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
                env={**os.environ, reaping.MARK_ENV: mark},
            )  # fmt: skip
        except OSError as exc:
            return Outcome("failed", error=f"cannot start shell: {exc}", started_at=started,
                           finished_at=time.time())
        finally:
            self._spawning -= 1
        pgid = proc.pid  # start_new_session makes the shell its group's leader
        self._shells.add(proc.pid)
        if self._reaper is not None:
            self._reaper.track(pgid, mark)
        try:
            return await self._supervise(proc, pgid, timeout, kill, started)
        finally:
            if proc.returncode is not None:
                self._shells.discard(proc.pid)
            self._kill_escaped(mark)
            if self._reaper is not None:
                self._reaper.untrack(pgid)

    def _kill_escaped(self, mark: str) -> None:
        """Kill what the job left outside its process group (found by its mark)."""
        skip = set(self._shells)
        if self._reaper is not None:
            skip.add(self._reaper.pid)
        try:
            candidates = (reaping.descendants(os.getpid(), skip) if self._subreaper
                          else reaping.all_pids())
            killed = reaping.kill_marked({mark.encode()}, candidates)
            if killed:
                log.info("killed %d process(es) the job left outside its group: %s",
                         len(killed), " ".join(map(str, killed[:10])))
            if self._subreaper:
                self._reap_orphans()
                if killed:  # they end in a moment; collect them then, not at the next job
                    asyncio.get_running_loop().call_later(PIPE_SETTLE_S, self._reap_orphans)
        except OSError as exc:  # no /proc: only the process group is killed
            log.debug("cannot look for escaped job processes: %s", exc)

    def _reap_orphans(self) -> None:
        if self._spawning:
            return  # a shell whose pid we do not know yet may have ended: not ours to reap
        skip = set(self._shells)
        if self._reaper is not None:
            skip.add(self._reaper.pid)
        with contextlib.suppress(OSError):
            reaping.reap_zombie_children(skip)

    async def _supervise(self, proc: asyncio.subprocess.Process, pgid: int,
                         timeout: float | None, kill: KillSwitch, started: float) -> Outcome:
        out, err = _CappedBuffer(self.output_bytes_max), _CappedBuffer(self.output_bytes_max)
        pumps = [asyncio.ensure_future(_pump(proc.stdout, out)),
                 asyncio.ensure_future(_pump(proc.stderr, err))]
        waiter = asyncio.ensure_future(proc.wait())
        killer = asyncio.ensure_future(kill.event.wait())
        stop_reason: str | None = None
        try:
            done, _ = await asyncio.wait({waiter, killer}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                stop_reason = kill.reason if killer in done else f"timed out after {timeout:g}s"
                await self._terminate(pgid, waiter)
        finally:
            killer.cancel()
            if not waiter.done():  # we are being cancelled ourselves: leave nothing behind
                _killpg(pgid, signal.SIGKILL)
        _killpg(pgid, signal.SIGKILL)  # stragglers the shell left in its group
        _, pending = await asyncio.wait(pumps, timeout=PIPE_SETTLE_S)
        for task in pending:
            task.cancel()
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        exit_code = code if code >= 0 else 128 - code
        finished = time.time()
        common: dict[str, Any] = dict(exit_code=exit_code, stdout=out.text(),
                                      stderr=err.text(), started_at=started, finished_at=finished)
        if stop_reason is not None:
            state = "cancelled" if stop_reason == "cancelled" else "failed"
            return Outcome(state, error=stop_reason, **common)
        if code == 0:
            return Outcome("succeeded", **common)
        if code < 0:
            return Outcome("failed", error=f"killed by {signal.Signals(-code).name}", **common)
        return Outcome("failed", error=f"exit code {code}", **common)

    async def _terminate(self, pgid: int, waiter: asyncio.Future[int]) -> None:
        _killpg(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.kill_grace_s)
        except TimeoutError:
            _killpg(pgid, signal.SIGKILL)
            await waiter

    async def run_call(
        self,
        function: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        kill: KillSwitch,
        *,
        defined_in: str | None = None,
    ) -> Outcome:
        """Run `function`; with `defined_in` (a worker's `--allow-call MODULE` entry that
        allows it), only a top-level callable defined in that module or below it is run."""
        started = time.time()
        try:
            fn = resolve_callable(function, defined_in)
        except ImportError as exc:
            return Outcome("failed", error=str(exc), started_at=started, finished_at=time.time())
        if inspect.iscoroutinefunction(fn):
            work: asyncio.Future[Any] = asyncio.ensure_future(fn(*args, **kwargs))
        else:
            work = self._threads.submit(functools.partial(fn, *args, **kwargs))
        killer = asyncio.ensure_future(kill.event.wait())
        try:
            done, _ = await asyncio.wait({work, killer}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            killer.cancel()
        if work not in done:
            reason = kill.reason if killer in done else f"timed out after {timeout:g}s"
            work.cancel()
            if not inspect.iscoroutinefunction(fn):
                log.warning("%s: %s; its thread cannot be killed and is abandoned",
                            function, reason)
            state = "cancelled" if reason == "cancelled" else "failed"
            return Outcome(state, error=reason, started_at=started, finished_at=time.time())
        finished = time.time()
        raised = work.exception()
        if raised is not None:
            tb = "".join(traceback.format_exception(raised))
            return Outcome("failed", error=f"{type(raised).__name__}: {raised}",
                           stderr=tb[-self.output_bytes_max:], started_at=started,
                           finished_at=finished)
        value = work.result()
        try:
            encode_value(value)
        except LocalProtocolError as err:
            return Outcome("failed", error=f"result cannot be sent: {err}", started_at=started,
                           finished_at=finished)
        return Outcome("succeeded", result=value, started_at=started, finished_at=finished)


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
