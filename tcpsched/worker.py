"""`python -m tcpsched.worker`: connects to a coordinator, runs what it is assigned.

Theory of operation: one connection loop dials the coordinators in turn, with capped
exponential backoff and full jitter; each session registers (reporting the attempts still
running, so they are not started twice), resends results the coordinator has not acknowledged,
and then beats at the interval the coordinator asked for while it handles Assign and Kill.
Jobs run as tasks beside the connection, so losing the coordinator never stops them; their
results wait in `outbox` until acknowledged, across reconnects. An order from an epoch older
than one already seen is ignored (a deposed leader cannot dispatch).

Register carries a random `incarnation` (one per process, so a reconnect proves it is the
same worker; a second process under a live worker's name is refused, and exits 2) and what
this worker runs (`--no-shell`, `--allow-call`), so the coordinator sends only jobs it can run.
Every result is checked against the limits the coordinator said it enforces (`Registered`)
before it is sent: one it would refuse, which would cut the connection and be sent again on
every reconnect, becomes a failed attempt saying why. A result that was in flight on
`RESULT_SENDS_MAX` connections that all died before acknowledging it is replaced the same way.

SIGTERM/SIGINT drains: no new jobs, running ones get `--drain-timeout` to finish, the rest are
killed and handed back (they requeue at once), results are flushed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence

import attrs

from tcpsched import logsetup
from tcpsched.config import WorkerSettings, is_loopback, parse_address, worker_settings
from tcpsched.core import messages as m
from tcpsched.core.capabilities import Capabilities, call_grant
from tcpsched.core.codec import peer_refusal
from tcpsched.core.limits import WireLimits
from tcpsched.errors import AuthError, ConfigError, RemoteProtocolError, UnavailableError
from tcpsched.runtime.executor import Executor, KillSwitch, Outcome
from tcpsched.runtime.reaper import Reaper, become_subreaper
from tcpsched.runtime.tls import client_context
from tcpsched.runtime.transport import Connection, dial

log = logging.getLogger(__name__)

JOB_THREAD_PREFIX = "tcpsched-job"  # thread_name_prefix of the executor's job threads
RESULT_FLUSH_S = 5.0  # at exit, how long to wait for the coordinator to take our results
RESULT_SENDS_MAX = 3  # connections a result may be in flight on, all lost, before it is dropped
EXIT_NAME_IN_USE = 2  # a usage error: pick another --name


@attrs.define(eq=False)
class _Attempt:
    job_id: str
    attempt: int
    kill: KillSwitch
    handed_back: bool = False
    task: asyncio.Task[None] | None = None


class Worker:
    def __init__(self, settings: WorkerSettings, rng: random.Random | None = None,
                 reaper: Reaper | None = None, *, subreaper: bool = False) -> None:
        self.settings = settings
        self.executor = Executor(settings.slots, settings.output_bytes_max, settings.kill_grace_s,
                                 reaper if reaper is not None else Reaper(),
                                 subreaper=subreaper, isolation=settings.isolation,
                                 memory_mib=settings.memory_mib, workdir=settings.workdir)
        self.executor.on_held_change = self._send_heartbeat
        self.running: dict[str, _Attempt] = {}
        self.outbox: dict[tuple[str, int], m.Result] = {}
        self._sends: dict[tuple[str, int], int] = {}  # connections each result went out on
        self.incarnation = secrets.token_hex(8)
        self.capabilities = Capabilities(settings.allow_shell, settings.allow_call)
        self.limits = WireLimits(frame_bytes_max=settings.frame_bytes_max)  # until Registered
        self.conn: Connection | None = None
        self.draining = False
        self.epoch_seen = 0
        self.heartbeat_interval_s = 0.5
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self.exit_code = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            connector = tasks.create_task(self._connection_loop())
            await self._stop.wait()
            if self.exit_code == 0:
                await self._drain()
            connector.cancel()
            for attempt in list(self.running.values()):
                attempt.kill.pull("worker stopped")
        self.executor.shutdown()
        return self.exit_code

    async def _drain(self) -> None:
        s = self.settings
        self.draining = True
        log.info("worker=%s draining: %d running, up to %gs", s.name, len(self.running),
                 s.drain_timeout_s)
        if self.conn is not None:
            self.conn.send(m.Draining())
        if self.running:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.drain_timeout_s):
                    await self._idle.wait()
        for attempt in list(self.running.values()):
            attempt.handed_back = True
            attempt.kill.pull("worker draining")
            if self.conn is not None:
                self.conn.send(m.HandBack(job_id=attempt.job_id, attempt=attempt.attempt,
                                          reason="drain timeout"))
            log.info("job=%s attempt=%d handed back", attempt.job_id, attempt.attempt)
        if self.outbox and self.conn is not None:
            self._outbox_empty.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESULT_FLUSH_S):
                    await self._outbox_empty.wait()
        if self.conn is not None:
            await self.conn.drain()
        log.info("worker=%s drained: %d result(s) unsent", s.name, len(self.outbox))

    # -- connection -----------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        s = self.settings
        tls = client_context(s.tls)
        backoff = s.reconnect_base_s
        index = 0
        failures = 0
        while True:
            address = s.coordinators[index % len(s.coordinators)]
            index += 1
            try:
                conn, _welcome = await dial(address, "worker", s.name, s.token,
                                           m.COORDINATOR_TO_WORKER,
                                           frame_bytes_max=s.frame_bytes_max, ssl_context=tls)
            except AuthError as exc:
                log.error("worker=%s: %s", s.name, exc)
                self.exit_code = 4
                self._stop.set()
                return
            except UnavailableError as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("worker=%s: %s (retrying)", s.name, exc)
                await asyncio.sleep(self._rng.uniform(0, backoff))
                backoff = min(s.reconnect_cap_s, backoff * 2)
                continue
            failures = 0
            backoff = s.reconnect_base_s
            try:
                await self._session(conn, address)
            except (RemoteProtocolError, OSError) as exc:
                log.warning("worker=%s: connection to %s lost: %s", s.name, address, exc)
            finally:
                self.conn = None
                conn.close()
            index -= 1  # try the same coordinator first next time
            await asyncio.sleep(self._rng.uniform(0, backoff))

    def _running_refs(self) -> tuple[m.AttemptRef, ...]:
        return tuple(
            m.AttemptRef(job_id=a.job_id, attempt=a.attempt)
            for a in self.running.values() if not a.handed_back
        )

    def _owned_refs(self) -> tuple[m.AttemptRef, ...]:
        """What Register reports: attempts still running and finished ones whose result the
        coordinator has not acknowledged. Both are ours; leaving out the finished ones would
        make a restarted coordinator think them lost and run them again."""
        finished = tuple(m.AttemptRef(job_id=job_id, attempt=attempt)
                         for job_id, attempt in self.outbox)
        return self._running_refs() + finished

    async def _session(self, conn: Connection, address: str) -> None:
        s = self.settings
        caps = self.capabilities
        conn.send(m.Register(name=s.name, slots=s.slots, tags=s.tags,
                             running=self._owned_refs(), draining=self.draining,
                             incarnation=self.incarnation, allow_shell=caps.allow_shell,
                             allow_call=caps.allow_call))
        async with asyncio.timeout(10.0):
            reply = await conn.receive()
        if isinstance(reply, m.Refused) and reply.code == "name":
            log.error("worker=%s: %s refused to register it: %s", s.name, address, reply.reason)
            self.exit_code = EXIT_NAME_IN_USE
            self._stop.set()
            return
        if not isinstance(reply, m.Registered):
            raise RemoteProtocolError(f"expected registered, got {reply!r:.60}")
        self._observe_epoch(reply.epoch)
        self.heartbeat_interval_s = reply.heartbeat_interval
        self.limits = reply.limits
        for ref in reply.kill:
            self._kill(ref.job_id, ref.attempt, "stale attempt (coordinator moved on)")
        self.conn = conn
        for key, result in list(self.outbox.items()):
            sends = self._sends.get(key, 0)
            fresh = self._deliverable(result, sends)
            self.outbox[key] = fresh
            self._sends[key] = 1 if fresh is not result else sends + 1
            conn.send(fresh)
        log.info("worker=%s registered with %s slots=%d running=%d resent=%d", s.name,
                 address, s.slots, len(self.running), len(self.outbox))
        beats = asyncio.ensure_future(self._heartbeats(conn))
        try:
            while (msg := await conn.receive()) is not None:
                self._on_message(msg)
            log.warning("worker=%s: %s closed the connection", s.name, address)
        finally:
            beats.cancel()

    def _deliverable(self, result: m.Result, sends: int = 0) -> m.Result:
        """`result`, or a failed attempt in its place if the coordinator would refuse it (by
        the limits it gave us), or if it already went out on `RESULT_SENDS_MAX` connections
        that all died before taking it: sending it again unchanged would only repeat that."""
        why = peer_refusal(result, self.limits, m.WORKER_TO_COORDINATOR)
        if why is None and sends < RESULT_SENDS_MAX:
            return result
        if why is None:
            why = (f"the connection to the coordinator was lost {sends} times while it was "
                   "being delivered")
        error = f"result cannot be sent to the coordinator: {why}"
        log.warning("job=%s attempt=%d: %s; reporting a failed attempt instead",
                    result.job_id, result.attempt, error)
        failed = attrs.evolve(result, state="failed", result=None, error=error)
        if peer_refusal(failed, self.limits, m.WORKER_TO_COORDINATOR) is not None:
            failed = attrs.evolve(failed, stdout="", stderr="[tcpsched: output dropped with "
                                  "the result: too large to send]")
        return failed

    async def _heartbeats(self, conn: Connection) -> None:
        while not conn.closed:
            self._send_heartbeat()
            await asyncio.sleep(self.heartbeat_interval_s)

    def _send_heartbeat(self) -> None:
        """Also sent at once when the slots held by stopped thread calls change, so the
        coordinator counts them before it sees the result that ends their attempt."""
        if self.conn is not None:
            self.conn.send(m.Heartbeat(running=self._running_refs(),
                                       held=self.executor.held_slots))

    def _observe_epoch(self, epoch: int) -> bool:
        if epoch < self.epoch_seen:
            return False
        self.epoch_seen = epoch
        return True

    # -- orders ---------------------------------------------------------------------------------

    def _on_message(self, msg: object) -> None:
        if isinstance(msg, m.Assign):
            self._on_assign(msg)
        elif isinstance(msg, m.Kill):
            self._kill(msg.job_id, msg.attempt, msg.reason)
        elif isinstance(msg, m.ResultAck):
            self.outbox.pop((msg.job_id, msg.attempt), None)
            self._sends.pop((msg.job_id, msg.attempt), None)
            if not self.outbox:
                self._outbox_empty.set()

    def _kill(self, job_id: str, attempt: int, reason: str) -> None:
        current = self.running.get(job_id)
        if current is not None and current.attempt == attempt:
            log.info("job=%s attempt=%d: kill (%s)", job_id, attempt, reason)
            current.kill.pull(reason)

    def _refusal(self, msg: m.Assign) -> str | None:
        """The coordinator places jobs by our capabilities, so this is a second line of
        defence: the same rule (core/capabilities.py), checked before anything is imported."""
        refusal = self.capabilities.refusal(msg.kind, msg.function)
        return None if refusal is None else f"refused by worker {self.settings.name}: it {refusal}"

    def _on_assign(self, msg: m.Assign) -> None:
        if not self._observe_epoch(msg.epoch):
            log.warning("job=%s: assign from stale epoch %d < %d ignored", msg.job_id,
                        msg.epoch, self.epoch_seen)
            return
        current = self.running.get(msg.job_id)
        if current is not None:
            if current.attempt >= msg.attempt:
                return  # a duplicate of what we run already
            current.handed_back = True  # superseded: its result would be stale anyway
            current.kill.pull("superseded by a newer attempt")
        if self.draining or len(self.running) + self.executor.held_slots >= self.settings.slots:
            if self.conn is not None:
                self.conn.send(m.HandBack(job_id=msg.job_id, attempt=msg.attempt,
                                          reason="draining" if self.draining else "no free slot"))
            return
        attempt = _Attempt(msg.job_id, msg.attempt, KillSwitch())
        self.running[msg.job_id] = attempt
        self._idle.clear()
        assert self._tasks is not None
        attempt.task = self._tasks.create_task(self._run(attempt, msg))

    async def _run(self, attempt: _Attempt, msg: m.Assign) -> None:
        refusal = self._refusal(msg)
        if refusal is not None:
            log.warning("job=%s: %s", msg.job_id, refusal)
            now = time.time()
            outcome = Outcome("failed", error=refusal, started_at=now, finished_at=now)
        elif msg.kind == "shell":
            outcome = await self.executor.run_shell(msg.command or "", msg.timeout, attempt.kill,
                                                    env=msg.env, cwd=msg.cwd)
        else:
            function = msg.function or ""
            outcome = await self.executor.run_call(
                function, msg.args, msg.kwargs, msg.timeout, attempt.kill,
                defined_in=call_grant(function, self.capabilities.allow_call) or None,
                env=msg.env, cwd=msg.cwd)
        if self.running.get(attempt.job_id) is attempt:
            del self.running[attempt.job_id]
        if not self.running:
            self._idle.set()
        if attempt.handed_back:
            return
        result = m.Result(
            job_id=attempt.job_id, attempt=attempt.attempt, state=outcome.state,
            exit_code=outcome.exit_code, result=outcome.result, stdout=outcome.stdout,
            stderr=outcome.stderr, error=outcome.error, started_at=outcome.started_at,
            finished_at=outcome.finished_at,
        )  # fmt: skip
        result = self._deliverable(result)
        key = (attempt.job_id, attempt.attempt)
        self.outbox[key] = result
        self._outbox_empty.clear()
        if self.conn is not None:
            self._sends[key] = 1
            self.conn.send(result)


def check_protected(settings: WorkerSettings) -> None:
    """A worker runs what it is told: it takes orders from a non-loopback coordinator only
    when it can tell the real one from an impostor, by the token or by TLS."""
    if settings.token is not None or settings.tls.enabled:
        return
    for address in settings.coordinators:
        host, _port = parse_address(address)
        if not is_loopback(host):
            raise ConfigError(
                f"refusing to take jobs from {address} without a token: whoever answers there "
                "could run commands here; give --token-file (or TCPSCHED_TOKEN), or TLS "
                "(--tls-ca), or use a coordinator on 127.0.0.1"
            )


async def _main(settings: WorkerSettings) -> int:
    # Processes a job leaves behind outside its group come to us rather than to init, so the
    # executor finds them among our descendants (runtime/reaper.py).
    worker = Worker(settings, subreaper=become_subreaper())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    return await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = worker_settings(argv)
        check_protected(settings)
        client_context(settings.tls)  # unreadable certificates: one line and exit 2, now
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(settings.log_level, settings.name)
    import uvloop

    code = uvloop.run(_main(settings))
    if _abandoned_job_threads():
        # A Python job that outlived a drain or a kill cannot be stopped, and the interpreter
        # would join its thread at exit: the worker would hang on after saying it drained.
        log.warning("worker=%s exiting without waiting for abandoned job threads",
                    settings.name)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _abandoned_job_threads(grace_s: float = 0.5) -> int:
    """Job threads still running once the pool is shut down (idle ones exit within grace)."""
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread.name.startswith(JOB_THREAD_PREFIX):
            thread.join(max(deadline - time.monotonic(), 0.0))
    return sum(1 for t in threading.enumerate()
               if t.name.startswith(JOB_THREAD_PREFIX) and t.is_alive())


if __name__ == "__main__":
    sys.exit(main())
