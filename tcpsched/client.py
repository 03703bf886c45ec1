"""`Client`: the Python API, also used by the CLI and the console (`SyncClient`, its blocking
twin, is `client_sync.py`).

Theory of operation: one connection to the leader, one reader task resolving a future per
request id. Every request is safe to send twice (a submit carries an idempotency key, generated
here when the caller gives none), so when the connection drops the client reconnects, trying
each address in turn until `connect_timeout_s` runs out, and sends the request again; a job is
never created twice by a retry. `wait` and `gather` wait on the coordinator's side (no
polling); `map` sends jobs in batches, one round trip per `batch_size` jobs.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import itertools
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from tcpsched.chunks import CHUNK_FUNCTION
from tcpsched.client_backoff import Backoff
from tcpsched.client_schedules import ScheduleMethods
from tcpsched.client_specs import (
    function_name,
    make_spec,
    size_bound,
    spec_problem,
    which_job,
)
from tcpsched.client_workflows import WorkflowClient, new_group
from tcpsched.config import TlsSettings, parse_address, parse_coordinators, read_token
from tcpsched.core import messages as m
from tcpsched.core.codec import (
    FRAME_BYTES_MAX,
    UnpackLimits,
    encode,
)
from tcpsched.core.jobs import JobSpec, JobState
from tcpsched.core.session import ClientSession
from tcpsched.errors import (
    AuthError,
    JobNotFound,
    JobTimeout,
    KeyConflict,
    LikelyRefused,
    LocalProtocolError,
    NotLeaderError,
    QueueFull,
    RemoteProtocolError,
    RequestError,
    UnavailableError,
)
from tcpsched.runtime.handshake import dial
from tcpsched.runtime.tls import client_context
from tcpsched.runtime.transport import Connection

SUBMIT_BATCH = 1000
GATHER_BATCH = 5000
CONNECT_TIMEOUT_S = 10.0
RESENDS_MAX = 5  # reconnect-and-resend rounds for one request before giving up
PROBE_S = 2.0  # silence while a request waits before we ask the coordinator if it lives
UNRESPONSIVE_S = 4.0  # further silence after which its connection is given up


class _ConnectionLost(Exception):
    pass


def new_key() -> str:
    """A fresh idempotency key (128 random bits)."""
    return secrets.token_hex(16)


class Client(ScheduleMethods, WorkflowClient):
    def __init__(
        self,
        coordinators: Sequence[str] | str | None = None,
        token: bytes | str | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        name: str | None = None,
        tls: TlsSettings | ssl.SSLContext | None = None,
        queue_full_wait: float | None = None,
    ) -> None:
        """`tls`: paths (`TlsSettings(cert=, key=, ca=)`) or a ready `ssl.SSLContext`; the
        coordinator's certificate is always verified (against `ca`, else the system's CAs).
        `queue_full_wait`: seconds a submit refused because the leader's queue is full keeps
        backing off and resending (None: as long as it takes; 0: raise QueueFull at once)."""
        self.queue_full_wait_s = queue_full_wait
        if coordinators is None or isinstance(coordinators, str):
            self.addresses = parse_coordinators(coordinators)
        else:
            self.addresses = tuple(coordinators)
            for address in self.addresses:
                parse_address(address)  # a ConfigError now, not a failed name lookup later
        if isinstance(token, str):
            token = token.encode()
        self.token = token if token is not None else read_token(None)
        self.connect_timeout_s = connect_timeout
        self.frame_bytes_max = FRAME_BYTES_MAX  # the coordinators' default --max-frame
        # ...and their default --max-array-items and --max-map-items
        self.unpack_limits = UnpackLimits()
        self.ssl_context = tls if isinstance(tls, ssl.SSLContext) else (
            client_context(tls) if tls is not None else None)
        self.name = name or f"client-{socket.gethostname()}-{os.getpid()}"
        self._conn: Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._req_ids = itertools.count(1)
        self._connecting: asyncio.Lock | None = None
        self._probe_from = 0.0
        self.session = ClientSession(list(self.addresses))
        self.address: str | None = None
        self.welcome: m.Welcome | None = None
        self.queue_full_waits = 0  # submits resent after a queue_full refusal

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- connection -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the first coordinator that answers, trying each until the timeout."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return
            await self._connect_locked()

    async def _connect_locked(self) -> None:
        last_error = "no address to try"
        refused: str | None = None  # what every recent failure says was refused, if anything
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        delay = 0.05
        while True:
            for address in self.session.order():
                remaining = deadline - loop.time()
                try:
                    conn, welcome = await dial(address, "client", self.name, self.token,
                                               m.COORDINATOR_TO_CLIENT,
                                               timeout_s=max(min(remaining, 5.0), 0.1),
                                               ssl_context=self.ssl_context)
                except UnavailableError as exc:
                    last_error = str(exc)
                    refused = str(exc) if isinstance(exc, LikelyRefused) else None
                    continue
                if not self.session.connected(address, welcome.epoch):
                    last_error = (f"{address} is behind (epoch {welcome.epoch}, "
                                  f"{self.session.epoch_seen} seen)")
                    conn.close("stale coordinator")
                    continue
                self._conn, self.welcome, self.address = conn, welcome, address
                # The reader of a connection that closed under us may still be pending: end
                # it, or it is garbage collected pending ("Task was destroyed but it is
                # pending!") when the loop closes.
                await self._stop_reader()
                self._reader = asyncio.ensure_future(self._read_loop(conn))
                return
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        if refused is not None:  # refused every time until the deadline: not a busy listener
            raise AuthError(refused)
        raise UnavailableError(
            f"no coordinator reachable at {','.join(self.session.addresses)} ({last_error})"
        )

    def _probe(self, conn: Connection) -> None:
        """While requests wait, check that the coordinator still talks: a leader that hangs
        (SIGSTOP, a stalled host) keeps its connections open and answers nothing, and a request
        waiting on it would wait forever. After `PROBE_S` of silence a `leader` request goes
        out (any message counts as life); after `UNRESPONSIVE_S` more the connection is given
        up, and every pending request is sent again elsewhere (safe: see `_request`)."""
        if conn.closed or conn is not self._conn:
            return
        loop = asyncio.get_running_loop()
        silent_s = time.monotonic() - max(conn.last_message_at_s, self._probe_from)
        if self._pending and silent_s > PROBE_S + UNRESPONSIVE_S:
            conn.close(f"no answer from {self.address} for {silent_s:.1f}s")
            return
        if self._pending and silent_s > PROBE_S:
            with contextlib.suppress(LocalProtocolError, OSError):
                conn.send(m.Leader(req_id=next(self._req_ids)))
        elif not self._pending:
            self._probe_from = time.monotonic()
        loop.call_later(PROBE_S / 2, self._probe, conn)

    async def _read_loop(self, conn: Connection) -> None:
        self._probe_from = time.monotonic()
        asyncio.get_running_loop().call_later(PROBE_S / 2, self._probe, conn)
        try:
            while (msg := await conn.receive()) is not None:
                future = self._pending.pop(msg.req_id, None)
                if future is not None and not future.done():
                    future.set_result(msg)
        except (RemoteProtocolError, OSError):
            pass
        finally:
            conn.close()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(_ConnectionLost())
            self._pending.clear()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close("client closed")
            await conn.wait_closed()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            # asyncio.wait, not `await reader`: the reader's CancelledError is its own, and a
            # cancellation of the caller must still propagate.
            await asyncio.wait({reader})

    async def _request(self, build: Callable[[int], Any], timeout: float | None = None,
                       resend: bool = True) -> Any:
        """Send a request (again after a reconnect if the connection drops, unless `resend`
        is false: then _ConnectionLost) and return the reply's value; map error replies to
        exceptions."""
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        losses = 0
        leaderless_until: float | None = None
        while True:
            await self.connect()
            conn = self._conn
            assert conn is not None
            req_id = next(self._req_ids)
            try:
                conn.send(build(req_id))
            except LocalProtocolError as exc:
                # Registered only once sent: a future nobody awaits would end in "Future
                # exception was never retrieved" when the connection closes.
                raise RequestError(f"cannot send the request: {exc}") from None
            future: asyncio.Future[Any] = loop.create_future()
            self._pending[req_id] = future
            try:
                if give_up is None:
                    reply = await future
                else:
                    async with asyncio.timeout(max(give_up - loop.time(), 0.0)):
                        reply = await future
            except _ConnectionLost:
                self.session.lost(self.address)
                self._conn = None
                losses += 1
                if not resend:
                    raise
                if losses > RESENDS_MAX:
                    # A coordinator that drops us every time we ask is not a failover; stop
                    # rather than loop forever.
                    raise UnavailableError(
                        f"the connection to {self.address} was lost {losses} times before "
                        "a reply came"
                    ) from None
                continue
            except TimeoutError:
                self._pending.pop(req_id, None)
                raise JobTimeout("the coordinator did not answer in time") from None
            if isinstance(reply, m.ErrorReply) and reply.kind == "not_leader":
                # A follower: go to the leader it names (or, during an election, try the
                # others after a short wait) and ask again, until the connect timeout.
                if leaderless_until is None:
                    leaderless_until = loop.time() + self.connect_timeout_s
                wait = self.session.redirected(self.address or "", reply.leader_hint)
                if loop.time() + wait >= leaderless_until or (
                        give_up is not None and loop.time() + wait >= give_up):
                    raise NotLeaderError(
                        f"no leader within {self.connect_timeout_s:g}s: {reply.message}",
                        reply.leader_hint) from None
                await self._drop()
                if wait:
                    await asyncio.sleep(wait)
                continue
            if isinstance(reply, m.ErrorReply):
                raise _error_from(reply)
            self.session.answered()
            return reply.value

    async def _drop(self) -> None:
        """Close the current connection (to a follower) so the next request dials anew."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close("not the leader")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    # -- jobs -----------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> str:
        """Queue one job described by a JobSpec; returns its id."""
        (job_id,) = await self.submit_many([spec])
        return job_id

    async def submit_many(self, specs: Iterable[JobSpec], batch_size: int = SUBMIT_BATCH
                          ) -> list[str]:
        """Queue many jobs, `batch_size` per round trip; ids in the order of `specs`."""
        ids: list[str] = []
        batch: list[JobSpec] = []
        for given in specs:
            spec = given if given.key is not None else attrs.evolve(given, key=new_key())
            batch.append(spec)
            if len(batch) >= min(batch_size, self.unpack_limits.array_items_max):
                ids.extend(await self._submit_batch(batch))
                batch = []
        if batch:
            ids.extend(await self._submit_batch(batch))
        return ids

    async def _submit_batch(self, batch: list[JobSpec]) -> list[str]:
        jobs = tuple(batch)
        # A frame over the coordinator's limit gets the connection closed, and the resend after
        # the reconnect is closed again, forever: measure the batch first and split it. The
        # cheap bound spares the exact (second) encoding of every ordinary batch.
        bound = 0
        for index, spec in enumerate(jobs):
            size = size_bound(spec, self.unpack_limits)
            if size < 0:
                problem = spec_problem(spec, self.unpack_limits, None)
                raise RequestError(f"cannot send {which_job(index, jobs)}: {problem}")
            bound += size
        if bound + 64 <= self.frame_bytes_max:
            return await self._send_batch(jobs)
        try:
            size = len(encode(m.Submit(req_id=0, jobs=jobs), frame_bytes_max=2**32 - 1))
        except LocalProtocolError as exc:
            raise RequestError(f"cannot send the job: {exc}") from None
        if size > self.frame_bytes_max:
            if len(jobs) == 1:
                raise RequestError(f"job too large to send: {size} bytes encoded, over the "
                                   f"{self.frame_bytes_max}-byte frame limit")
            half = len(batch) // 2
            return [*await self._submit_batch(batch[:half]),
                    *await self._submit_batch(batch[half:])]
        return await self._send_batch(jobs)

    async def _send_batch(self, jobs: tuple[JobSpec, ...]) -> list[str]:
        """Submit one batch; while the leader's queue is full, back off and send it again,
        within `queue_full_wait`. The leader takes a batch whole or not at all, so a refused
        batch is resent as two halves: each fits into the room as it frees, sooner than the
        whole would (in order, so the ids keep the order of the jobs)."""
        backoff = Backoff(self.queue_full_wait_s)
        while True:
            try:
                return list(await self._request(lambda r: m.Submit(req_id=r, jobs=jobs)))
            except QueueFull as exc:
                pause = backoff.next_pause(exc.retry_after_s)
                if pause is None:
                    raise
                self.queue_full_waits += 1
                await asyncio.sleep(pause)
                if len(jobs) > 1:
                    half = len(jobs) // 2
                    return [*await self._send_batch(jobs[:half]),
                            *await self._send_batch(jobs[half:])]

    async def submit_shell(self, command: str, *, priority: int = 0, retries: int = 0,
                           timeout: float | None = None, delay: float = 0.0,
                           key: str | None = None, env: dict[str, str] | None = None,
                           cwd: str | None = None, tags: Sequence[str] = (),
                           after: Sequence[str] = ()) -> str:
        """Queue a shell command; `env` is laid over the worker's environment, `cwd` is
        where it runs (default: the worker's --workdir); `tags`: only a worker with every
        one of them runs it; `after`: jobs (ids, keys or id prefixes) that must all succeed
        first (the job is cancelled if one does not)."""
        return await self.submit(make_spec("shell", command=command, priority=priority,
                                       retries=retries, timeout=timeout, delay=delay, key=key,
                                       env=dict(env or {}), cwd=cwd, tags=tuple(tags),
                                       after=tuple(after)))

    async def submit_call(self, function: str | Callable[..., Any], *args: Any,
                          priority: int = 0, retries: int = 0,
                          timeout: float | None = None, delay: float = 0.0,
                          key: str | None = None, env: dict[str, str] | None = None,
                          cwd: str | None = None, tags: Sequence[str] = (),
                          after: Sequence[str] = (), **kwargs: Any) -> str:
        """Queue `function(*args, **kwargs)`; priority, retries, timeout, delay, key, env,
        cwd, tags and after are the job's options (a function taking arguments of those names needs
        `submit`). `function` is "module:function" or a function object (`function_name`)."""
        return await self.submit(make_spec("call", function=function_name(function), args=args,
                                       kwargs=kwargs, priority=priority, retries=retries,
                                       timeout=timeout, delay=delay, key=key,
                                       env=dict(env or {}), cwd=cwd, tags=tuple(tags),
                                       after=tuple(after)))

    async def map(self, function: str | Callable[..., Any], items: Iterable[Any], *,
                  priority: int = 0, retries: int = 0, timeout: float | None = None,
                  env: dict[str, str] | None = None, cwd: str | None = None,
                  batch_size: int = SUBMIT_BATCH, chunk_size: int = 1,
                  after: Sequence[str] = (), delay: float = 0.0,
                  group: str | None = None, tags: Sequence[str] = ()) -> list[str]:
        """One job per item, or with `chunk_size` K one job per K items whose result is the
        list of the function's results for its items (`tcpsched.chunks`); `gather_results`
        gives every item's result back in item order. A tuple item is the argument list,
        anything else one argument. The jobs share a group id (`group`, default a new one;
        every record shows it); `tags` route every one of them. `function` is
        "module:function" or a function object. While the leader's queue is full, it backs
        off and resends (the client's `queue_full_wait`)."""
        if type(chunk_size) is not int or chunk_size < 1:
            raise RequestError(f"chunk_size must be a whole number of at least 1, not "
                               f"{chunk_size!r}")
        name = function_name(function)
        shared_env = dict(env or {})
        shared = dict(priority=priority, retries=retries, timeout=timeout, env=shared_env,
                      cwd=cwd, after=tuple(after), delay=delay, group=group or new_group(),
                      tags=tuple(tags))
        if chunk_size == 1:
            specs: Iterable[JobSpec] = (
                make_spec("call", function=name, args=item if isinstance(item, tuple) else (item,),
                      key=new_key(), **shared)
                for item in items
            )
        else:
            specs = (make_spec("call", function=CHUNK_FUNCTION, args=(name, chunk), key=new_key(),
                           **shared)
                     for chunk in _chunks(items, chunk_size))
        return await self.submit_many(specs, batch_size)

    async def wait_records(self, job_ids: Sequence[str], timeout: float | None = None
                           ) -> list[dict[str, Any]]:
        """Records once every job is terminal or `timeout` passes (whichever first)."""
        out: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        start, size = 0, GATHER_BATCH
        while start < len(job_ids):
            chunk = tuple(job_ids[start:start + size])
            left = None if give_up is None else max(give_up - loop.time(), 0.0)
            try:
                records = await self._request(
                    functools.partial(_wait_request, job_ids=chunk, timeout=left),
                    timeout=None if left is None else left + self.connect_timeout_s,
                    resend=len(chunk) == 1,
                )
            except (_ConnectionLost, RequestError):
                if len(chunk) == 1:
                    raise
                # Records with big args or outputs can add up to a reply over the frame limit:
                # the coordinator refuses to send it (or the connection is closed). Ask for half
                # as many at a time; a refusal that is not about size shows up at one job.
                size = max(1, len(chunk) // 2)
                continue
            out.extend(records)
            start += len(chunk)
        return out

    async def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job's record once it is terminal; JobTimeout if `timeout` passes first."""
        (record,) = await self.gather([job_id], timeout=timeout)
        return record

    async def gather(self, job_ids: Sequence[str], timeout: float | None = None
                     ) -> list[dict[str, Any]]:
        """Records of every job, in the order given, once all are terminal."""
        records = await self.wait_records(job_ids, timeout)
        unfinished = [r["id"] for r in records if not _is_terminal(r)]
        if unfinished:
            raise JobTimeout(f"{len(unfinished)} job(s) not finished after {timeout:g}s: "
                             f"{', '.join(unfinished[:5])}")
        return records

    async def status(self, job_id: str) -> dict[str, Any]:
        (record,) = await self._request(lambda r: m.Status(req_id=r, job_ids=(job_id,)))
        return record

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._request(lambda r: m.Cancel(req_id=r, job_id=job_id))

    async def list(self, state: str | JobState | None = None, limit: int = 100
                   ) -> list[dict[str, Any]]:
        value = state.value if isinstance(state, JobState) else state
        return await self._request(lambda r: m.ListJobs(req_id=r, state=value, limit=limit))

    async def list_page(self, state: str | JobState | None = None, limit: int = 100,
                        after: str | None = None
                        ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """One page of the listing, newest first, continuing after the job `after`: the
        records and the cursor of the next page (None once no job is left to look at)."""
        value = state.value if isinstance(state, JobState) else state
        reply = await self._request(lambda r: m.ListJobs(req_id=r, state=value, limit=limit,
                                                         after=after, page=True))
        if not isinstance(reply, dict):  # a coordinator that predates pages: one listing
            return list(reply) if isinstance(reply, list) else [], None
        following = reply.get("next")
        return list(reply.get("jobs") or []), following if isinstance(following, str) else None

    async def tail(self, job_id: str, attempt: int | None = None,
                   offsets: tuple[int, int] = (0, 0), wait: float = 0.0) -> dict[str, Any]:
        """A job's output past `offsets` (stdout, stderr) of `attempt` (None: the current
        one), waiting up to `wait` seconds for some: see `messages.Tail` and follow.py."""
        return await self._request(
            lambda r: m.Tail(req_id=r, job_id=job_id, attempt=attempt,
                             stdout_offset=offsets[0], stderr_offset=offsets[1], wait=wait),
            timeout=wait + self.connect_timeout_s)

    # builtins.list: in this class body, `list` names the method above.
    async def explain(self, job_id: str) -> dict[str, Any]:
        """Why the job went where it went, or why it is still pending:
        `{"id", "state", "reasons": [...]}`."""
        return await self._request(lambda r: m.Explain(req_id=r, job_id=job_id))

    async def workers(self) -> builtins.list[dict[str, Any]]:
        return await self._request(lambda r: m.Workers(req_id=r))

    async def stats(self) -> dict[str, Any]:
        return await self._request(lambda r: m.Stats(req_id=r))

    async def leader(self) -> dict[str, Any]:
        return await self._request(lambda r: m.Leader(req_id=r))

    async def coordinators(self) -> builtins.list[dict[str, Any]]:
        """Every configured coordinator (role, epoch, last and commit seq, lag, reachable) as
        the coordinator we reach sees them; the leader knows its followers' progress."""
        return await self._request(lambda r: m.Coordinators(req_id=r))


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[list[Any]]]:
    """Argument lists of `items`, `size` at a time (a tuple item is its argument list)."""
    chunk: list[list[Any]] = []
    for item in items:
        chunk.append(list(item) if isinstance(item, tuple) else [item])
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _wait_request(req_id: int, job_ids: tuple[str, ...], timeout: float | None) -> m.Wait:
    return m.Wait(req_id=req_id, job_ids=job_ids, timeout=timeout)


def _is_terminal(record: dict[str, Any]) -> bool:
    return record.get("state") in ("succeeded", "failed", "cancelled", "forgotten")


def _error_from(reply: m.ErrorReply) -> Exception:
    if reply.kind == "not_found":
        return JobNotFound(reply.message)
    if reply.kind == "not_leader":
        return NotLeaderError(reply.message, reply.leader_hint)
    if reply.kind == "unavailable":
        return UnavailableError(reply.message)
    if reply.kind == "timeout":
        return JobTimeout(reply.message)
    if reply.kind == "conflict":
        return KeyConflict(reply.message)
    if reply.kind == "queue_full":
        return QueueFull(reply.message, reply.retry_after)
    return RequestError(reply.message)


__all__ = ["AuthError", "Client"]
