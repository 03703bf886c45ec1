"""`python -m tcpsched.worker`: connects to a coordinator, runs what it is assigned.

Theory of operation: the protocol (registration, the outbox of unacknowledged results,
heartbeats, epoch fencing, redirects and failover, slots, drain) is the sans-I/O
`core/workerproto.WorkerProtocol`; the simulation drives the same class. This module is its
shell: it dials where the core says, runs the jobs the core starts in the executor (as tasks
beside the connection, so losing the coordinator never stops them), feeds the core what happens
(sessions, messages, finished jobs, signals, its timer) and carries out the effects it returns.

SIGTERM/SIGINT drains: no new jobs, running ones get `--drain-timeout` to finish, the rest are
killed and handed back (they requeue at once), results are flushed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence

from tcpsched import logsetup
from tcpsched.config import WorkerSettings, is_loopback, parse_address, worker_settings
from tcpsched.core import messages as m
from tcpsched.core import workerproto as wp
from tcpsched.core.capabilities import Capabilities, call_grant
from tcpsched.errors import AuthError, ConfigError, RemoteProtocolError, UnavailableError
from tcpsched.runtime.executor import Executor, KillSwitch
from tcpsched.runtime.handshake import dial
from tcpsched.runtime.liveout import LiveOutput
from tcpsched.runtime.reaper import Reaper, become_subreaper
from tcpsched.runtime.tls import client_context
from tcpsched.runtime.transport import Connection, limit_unacknowledged

log = logging.getLogger(__name__)

JOB_THREAD_PREFIX = "tcpsched-job"  # thread_name_prefix of the executor's job threads
SEND_FLUSH_S = 2.0  # at exit, how long the last messages (hand-backs, results) get to leave
# A session whose beats the coordinator's host has not acknowledged for this long is given up,
# and the core fails over. A leader cut off by a partition sends no FIN (its "no longer the
# leader" close never arrives), so without this bound the worker stayed on it for the whole
# partition while the majority's new leader had no workers. The coordinator's default
# --heartbeat-timeout: by then the leader has declared us dead anyway, so leaving costs nothing.
UNACKED_TIMEOUT_S = 2.0


def protocol_config(settings: WorkerSettings, incarnation: str) -> wp.WorkerConfig:
    s = settings
    return wp.WorkerConfig(
        name=s.name, slots=s.slots, prefetch=s.prefetch, coordinators=s.coordinators,
        incarnation=incarnation,
        tags=s.tags, capabilities=Capabilities(s.allow_shell, s.allow_call),
        drain_timeout_s=s.drain_timeout_s, reconnect_base_s=s.reconnect_base_s,
        reconnect_cap_s=s.reconnect_cap_s, frame_bytes_max=s.frame_bytes_max,
    )  # fmt: skip


class Worker:
    def __init__(self, settings: WorkerSettings, rng: random.Random | None = None,
                 reaper: Reaper | None = None, *, subreaper: bool = False) -> None:
        self.settings = settings
        self.executor = Executor(settings.slots, settings.output_bytes_max, settings.kill_grace_s,
                                 reaper if reaper is not None else Reaper(),
                                 subreaper=subreaper, isolation=settings.isolation,
                                 memory_mib=settings.memory_mib, workdir=settings.workdir)
        # Thread calls that outlived their timeout still hold their slots: the core counts
        # them, and tells the coordinator at once.
        self.executor.on_held_change = lambda: self.feed(
            wp.SlotsHeld(self.executor.held_slots))
        self.incarnation = secrets.token_hex(8)
        self.proto = wp.WorkerProtocol(protocol_config(settings, self.incarnation),
                                       rng or random.Random(), time.monotonic())
        self._tls = client_context(settings.tls)  # read once: the certificates do not move
        self.conn: Connection | None = None
        self._session: int | None = None
        self._session_ids = itertools.count(1)
        self._kills: dict[tuple[str, int], KillSwitch] = {}
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._link: asyncio.Task[None] | None = None  # the dial and session task
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._feeding = False
        self.exit_code = 0
        # Running attempts' output, streamed to the leader as it comes (runtime/liveout.py).
        self.live = LiveOutput(self._send_live, lambda: self.proto.limits)
        self._was_registered = False

    def _send_live(self, msg: m.Output) -> bool:
        if self.conn is None or not self.proto.is_registered:
            return False
        self.conn.send(msg)
        return True

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM/SIGINT: the core drains, then asks to exit."""
        self.feed(wp.DrainRequested())

    async def run(self) -> int:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self.feed(wp.Tick())  # the core's first deadline is now: dial
            await self._stop.wait()
            if self._timer is not None:
                self._timer.cancel()
            if self.conn is not None:
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(SEND_FLUSH_S):
                        await self.conn.drain()
            if self._link is not None:
                self._link.cancel()
            for kill in list(self._kills.values()):
                kill.pull("worker stopped")
        self.executor.shutdown()
        return self.exit_code

    # -- the core -------------------------------------------------------------------------------

    def feed(self, event: wp.Event) -> None:
        """Step the core with one event and carry out its effects, then re-arm its timer."""
        assert not self._feeding, "the core was fed while carrying out its effects"
        self._feeding = True
        try:
            effects = self.proto.step(event, time.monotonic(), time.time())
            for effect in effects:
                self._carry_out(effect)
        finally:
            self._feeding = False
        if self.proto.is_registered != self._was_registered:
            self._was_registered = self.proto.is_registered
            if self._was_registered:  # a new leader has no tails: send the spools again
                self.live.resend()
        self._rearm()

    def _carry_out(self, effect: wp.Effect) -> None:
        if isinstance(effect, wp.Send):
            if self.conn is not None:
                self.conn.send(effect.msg)
        elif isinstance(effect, wp.StartJob):
            assign = effect.assign
            kill = self._kills[(assign.job_id, assign.attempt)] = KillSwitch()
            assert self._tasks is not None
            self._tasks.create_task(self._run_job(assign, kill))
        elif isinstance(effect, wp.KillJob):
            switch = self._kills.get((effect.job_id, effect.attempt))
            if switch is not None:
                switch.pull(effect.reason)
        elif isinstance(effect, wp.Dial):
            assert self._tasks is not None
            self._link = self._tasks.create_task(self._dial(effect.address))
        elif isinstance(effect, wp.CloseSession):
            conn, self.conn, self._session = self.conn, None, None
            if conn is not None:
                conn.close(effect.reason)
        elif isinstance(effect, wp.Exit):
            # The core has said why, in one line (tests and operators count on one).
            self.exit_code = effect.code
            self._stop.set()

    def _rearm(self) -> None:
        deadline = self.proto.next_deadline()
        if deadline == self._timer_deadline and self._timer is not None:
            return  # armed already (most events leave the deadline where it was)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None and not self._stop.is_set():
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self.feed(wp.Tick())

    # -- the connection -------------------------------------------------------------------------

    async def _dial(self, address: str) -> None:
        s = self.settings
        try:
            conn, _welcome = await dial(address, "worker", s.name, s.token,
                                       m.COORDINATOR_TO_WORKER,
                                       frame_bytes_max=s.frame_bytes_max,
                                       ssl_context=self._tls)
        except AuthError as exc:
            self.feed(wp.DialFailed(address, str(exc), auth_refused=True))
            return
        except UnavailableError as exc:
            self.feed(wp.DialFailed(address, str(exc)))
            return
        limit_unacknowledged(conn, UNACKED_TIMEOUT_S)
        session = next(self._session_ids)
        self.conn, self._session = conn, session
        reason = "closed by the coordinator"
        timed_out = False
        try:
            self.feed(wp.SessionStarted(session, address))
            while self._session == session and (msg := await conn.receive()) is not None:
                self.feed(wp.Received(session, msg))
        except (RemoteProtocolError, OSError) as exc:
            reason = str(exc)
            timed_out = isinstance(exc, TimeoutError)  # ETIMEDOUT: limit_unacknowledged
        finally:
            conn.close()
            if self._session == session:  # not left by the core (CloseSession)
                self.conn, self._session = None, None
                self.feed(wp.SessionClosed(session, reason, timed_out=timed_out))

    # -- jobs -----------------------------------------------------------------------------------

    async def _run_job(self, msg: m.Assign, kill: KillSwitch) -> None:
        live = self.live.open(msg.job_id, msg.attempt)
        try:
            if msg.kind == "shell":
                outcome = await self.executor.run_shell(msg.command or "", msg.timeout, kill,
                                                        env=msg.env, cwd=msg.cwd, live=live)
            else:
                function = msg.function or ""
                allow_call = self.proto.config.capabilities.allow_call
                outcome = await self.executor.run_call(
                    function, msg.args, msg.kwargs, msg.timeout, kill,
                    defined_in=call_grant(function, allow_call) or None,
                    env=msg.env, cwd=msg.cwd, live=live)
        finally:
            self._kills.pop((msg.job_id, msg.attempt), None)
            self.live.close(live)
        self.feed(wp.JobFinished(m.Result(
            job_id=msg.job_id, attempt=msg.attempt, state=outcome.state,
            exit_code=outcome.exit_code, result=outcome.result, stdout=outcome.stdout,
            stderr=outcome.stderr, error=outcome.error, started_at=outcome.started_at,
            finished_at=outcome.finished_at,
        )))  # fmt: skip


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
