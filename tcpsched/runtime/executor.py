"""Runs one attempt of a job: a shell command in its own process group, or a Python callable.

Theory of operation: a shell job starts in a new session (so its process group is its own),
with stdin closed and stdout/stderr read concurrently into buffers capped at
`output_bytes_max` each (the rest is counted and dropped, and the record says so). On timeout or
a kill order the whole group gets SIGTERM, then SIGKILL after `kill_grace_s`; when the shell
itself exits, whatever it left behind in its group is killed too. A process that left the group
(`setsid cmd &`) is found by the mark in its environment and killed as well, with everything
below it (see runtime/reaper.py for how, and for the one case it cannot find).

A job runs in its `cwd` (else the worker's `--workdir`, else the worker's own directory) with
its `env` laid over the worker's environment.

A callable is `module:function`. With `isolation="process"` (the default) it runs in the pool
of child processes (runtime/callpool.py): a timeout or cancel ends the child, and CPU-bound
calls use every core. With `isolation="thread"` a coroutine function is awaited on the loop
and a plain one runs in a thread, so a busy job never delays heartbeats or other jobs; a thread
cannot be killed, so on timeout or cancel the attempt ends at once but its slot stays held
(`held_slots`, reported in heartbeats) until the thread really returns, and its return value
is dropped. Threads share the worker's directory and environment, so a call job with its own
`cwd` or `env` needs process isolation.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import queue
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from tcpsched.config import ISOLATIONS
from tcpsched.core.codec import encode_value
from tcpsched.errors import LocalProtocolError
from tcpsched.runtime import capture as capturing
from tcpsched.runtime import reaper as reaping
from tcpsched.runtime.callchild import CappedBuffer, resolve_callable
from tcpsched.runtime.callpool import CallPool
from tcpsched.runtime.liveout import JobOutput
from tcpsched.runtime.outcome import KillSwitch, Outcome, stopped
from tcpsched.runtime.reaper import Reaper

__all__ = ["ISOLATIONS", "Executor", "JobThreads", "KillSwitch", "Outcome", "resolve_callable"]

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024
PIPE_SETTLE_S = 1.0  # after the shell exits, how long stragglers may hold its pipes


async def _pump(stream: asyncio.StreamReader | None, buffer: CappedBuffer,
                live: JobOutput | None, name: str) -> None:
    if stream is None:
        return
    while data := await stream.read(READ_CHUNK_BYTES):
        kept = buffer.add(data)
        if live is not None:
            live.feed(name, kept)


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


async def _first_of(work: asyncio.Future[Any], kill: KillSwitch,
                    timeout: float | None) -> str | None:
    """Wait for `work`, the kill switch or the timeout, whichever comes first: None once
    `work` is done, else why it was stopped. Callbacks on one future, where a task waiting on
    the switch's event and `asyncio.wait` cost two tasks and a set of futures per call."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    work.add_done_callback(wake)
    kill.listeners.append(wake)
    timer = loop.call_later(timeout, wake) if timeout is not None else None
    try:
        if kill.event.is_set():
            wake()
        await waiter
    finally:
        work.remove_done_callback(wake)
        with contextlib.suppress(ValueError):
            kill.listeners.remove(wake)
        if timer is not None:
            timer.cancel()
    if work.done():
        return None
    return kill.reason if kill.event.is_set() else f"timed out after {timeout:g}s"


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # cancelled: the attempt ended without it
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _captured(capture: capturing.JobCapture, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """A thread call with its prints and logs routed to its own job (runtime/capture.py)."""
    token = capturing.CURRENT.set(capture)
    try:
        return fn(*args, **kwargs)
    finally:
        capturing.CURRENT.reset(token)


def _cwd_problem(cwd: str | None) -> str | None:
    if cwd is None or os.path.isdir(cwd):
        return None
    return f"cwd {cwd} does not exist on this worker (or is not a directory)"


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Executor:
    def __init__(self, slots: int, output_bytes_max: int, kill_grace_s: float,
                 reaper: Reaper | None = None, *, subreaper: bool = False,
                 isolation: str = "process", memory_mib: int | None = None,
                 workdir: str | None = None) -> None:
        """`subreaper`: this process is a child subreaper (`reaper.become_subreaper`), so a
        job's escaped processes become our children: only our descendants need searching, and
        the re-parented ones that end must be reaped here. Otherwise all of /proc is searched.

        `isolation` is "process" or "thread" (see the module docstring); `memory_mib` limits
        each call process; `workdir` is where jobs run unless they name a cwd. Thread calls
        run inside this process, so in thread mode the process itself moves to `workdir`."""
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
        self.output_bytes_max = output_bytes_max
        self.kill_grace_s = kill_grace_s
        self.isolation = isolation
        self.workdir = None if workdir is None else os.path.abspath(workdir)
        self._threads = JobThreads()
        self._reaper = reaper
        self._subreaper = subreaper
        self._shells: set[int] = set()  # our job shells not yet waited for: never reaped here
        self._spawning = 0  # shells being started, whose pids are not known yet
        self._held = 0  # thread mode: slots held by timed-out calls whose thread still runs
        self.on_held_change: Callable[[], None] | None = None  # the worker tells the leader
        self._pool: CallPool | None = None
        if isolation == "process":
            self._pool = CallPool(slots, output_bytes_max=output_bytes_max,
                                  kill_grace_s=kill_grace_s, memory_mib=memory_mib,
                                  workdir=self.workdir, reaper=reaper,
                                  on_retired=self._kill_escaped)
        elif self.workdir is not None:
            os.chdir(self.workdir)
            sys.path.insert(0, self.workdir)  # as a call process has it: see callchild.py
        if isolation == "thread":
            capturing.install()  # print() and logging of each call to its own job

    @property
    def held_slots(self) -> int:
        """Slots a finished attempt still holds: a timed-out thread call that has not
        returned (thread mode only). They count as busy, so slots are never oversubscribed."""
        return self._held

    @property
    def pool(self) -> CallPool | None:
        return self._pool

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._threads.shutdown()
        if self._reaper is not None:
            self._reaper.close()

    def _job_cwd(self, cwd: str | None) -> str | None:
        return cwd if cwd is not None else self.workdir

    async def run_shell(self, command: str, timeout: float | None, kill: KillSwitch, *,
                        env: dict[str, str] | None = None, cwd: str | None = None,
                        live: JobOutput | None = None) -> Outcome:
        """`live` gets the output as it comes (runtime/liveout.py)."""
        started = time.time()
        where = self._job_cwd(cwd)
        problem = _cwd_problem(where)
        if problem is not None:
            return Outcome("failed", error=problem, started_at=started, finished_at=time.time())
        mark = secrets.token_hex(8)
        self._spawning += 1
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, cwd=where,
                env={**os.environ, **(env or {}), reaping.MARK_ENV: mark},
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
            return await self._supervise(proc, pgid, timeout, kill, started, live=live)
        finally:
            if proc.returncode is not None:
                self._shells.discard(proc.pid)
            self._kill_escaped(mark)
            if self._reaper is not None:
                self._reaper.untrack(pgid)

    def _not_ours(self) -> set[int]:
        """Children whose exit status someone is waiting for: never reaped as orphans."""
        skip = set(self._shells)
        if self._reaper is not None:
            skip.add(self._reaper.pid)
        if self._pool is not None:
            skip |= self._pool.pids()
        return skip

    def _kill_escaped(self, mark: str) -> None:
        """Kill what the job left outside its process group (found by its mark)."""
        skip = self._not_ours()
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
        if self._spawning or (self._pool is not None and self._pool.spawning):
            return  # a shell whose pid we do not know yet may have ended: not ours to reap
        with contextlib.suppress(OSError):
            reaping.reap_zombie_children(self._not_ours())

    async def _supervise(self, proc: asyncio.subprocess.Process, pgid: int,
                         timeout: float | None, kill: KillSwitch, started: float, *,
                         live: JobOutput | None = None) -> Outcome:
        out, err = CappedBuffer(self.output_bytes_max), CappedBuffer(self.output_bytes_max)
        pumps = [asyncio.ensure_future(_pump(proc.stdout, out, live, "stdout")),
                 asyncio.ensure_future(_pump(proc.stderr, err, live, "stderr"))]
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
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        live: JobOutput | None = None,
    ) -> Outcome:
        """Run `function`; with `defined_in` (a worker's `--allow-call MODULE` entry that
        allows it), only a top-level callable defined in that module or below it is run.
        What it prints or logs is its output, and goes to `live` as it comes."""
        if self._pool is not None:
            request: dict[str, Any] = {"function": function, "args": list(args), "kwargs": kwargs,
                       "defined_in": defined_in, "cwd": cwd, "env": env or {}}
            if live is not None:
                request["live"] = True
            return await self._pool.run(request, timeout, kill, live=live)
        return await self._run_in_thread(function, args, kwargs, timeout, kill,
                                         defined_in=defined_in, env=env, cwd=cwd, live=live)

    async def _run_in_thread(self, function: str, args: tuple[Any, ...],
                             kwargs: dict[str, Any], timeout: float | None, kill: KillSwitch,
                             *, defined_in: str | None, env: dict[str, str] | None,
                             cwd: str | None, live: JobOutput | None = None) -> Outcome:
        started = time.time()
        if env or cwd is not None:
            return Outcome("failed", error="a call job with its own cwd or env needs a worker "
                           "with --isolation process: threads share the worker's directory and "
                           "environment", started_at=started, finished_at=time.time())
        try:
            fn = resolve_callable(function, defined_in)
        except ImportError as exc:
            return Outcome("failed", error=str(exc), started_at=started, finished_at=time.time())
        is_coroutine = inspect.iscoroutinefunction(fn)
        capture = capturing.JobCapture(self.output_bytes_max, live)
        if is_coroutine:
            context = contextvars.copy_context()
            context.run(capturing.CURRENT.set, capture)
            work: asyncio.Future[Any] = asyncio.get_running_loop().create_task(
                fn(*args, **kwargs), context=context)
        else:
            work = self._threads.submit(functools.partial(_captured, capture, fn, args, kwargs))
        reason = await _first_of(work, kill, timeout)
        if reason is not None:
            if is_coroutine:
                work.cancel()
            else:
                log.warning("%s: %s; its thread cannot be killed: its slot stays taken until "
                            "it returns", function, reason)
            self._hold(work, function)
            return stopped(reason, started, time.time(), stdout=capture.text("stdout"),
                           stderr=capture.text("stderr"))
        finished = time.time()
        raised = work.exception()
        if raised is not None:
            capture.write("stderr", "".join(traceback.format_exception(raised)))
            return Outcome("failed", error=f"{type(raised).__name__}: {raised}",
                           stdout=capture.text("stdout"), stderr=capture.text("stderr"),
                           started_at=started, finished_at=finished)
        output: dict[str, Any] = dict(stdout=capture.text("stdout"),
                                      stderr=capture.text("stderr"))
        value = work.result()
        try:
            encode_value(value)
        except LocalProtocolError as err:
            return Outcome("failed", error=f"result cannot be sent: {err}", started_at=started,
                           finished_at=finished, **output)
        return Outcome("succeeded", result=value, started_at=started, finished_at=finished,
                       **output)

    def _hold(self, work: asyncio.Future[Any], function: str) -> None:
        """Keep the slot of a stopped call taken until its work has really ended."""
        if work.done():
            return
        self._held += 1
        if self.on_held_change is not None:
            self.on_held_change()

        def release(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: its outcome was reported already
            self._held -= 1
            log.info("%s: the stopped call has returned; its slot is free", function)
            if self.on_held_change is not None:
                self.on_held_change()

        work.add_done_callback(release)
