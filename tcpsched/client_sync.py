"""`SyncClient`: every method of `Client`, blocking, for scripts and notebooks without a loop.

It runs the async client on a private uvloop loop of its own, one call at a time, so it is as
fast as the async client for batch calls (`map`, `gather`) and costs one loop turn more per
call; it is not safe to share between threads.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from tcpsched.client import SUBMIT_BATCH, Client
from tcpsched.client_schedules import SyncScheduleMethods
from tcpsched.client_workflows import SyncWorkflowClient
from tcpsched.core.jobs import JobSpec, JobState

T = TypeVar("T")


class SyncClient(SyncScheduleMethods, SyncWorkflowClient):
    """The same methods as `Client`, blocking, on a private event loop."""

    def __init__(self, coordinators: Sequence[str] | str | None = None,
                 token: bytes | str | None = None, **options: Any) -> None:
        import uvloop

        # uvloop, as in every process of ours: its streams cost a fraction of asyncio's.
        self._loop = uvloop.new_event_loop()
        self._client = Client(coordinators, token, **options)

    def _run(self, coro: Awaitable[T]) -> T:
        return self._loop.run_until_complete(coro)

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        self._run(self._client.connect())

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._client.close())
            self._loop.close()

    def submit(self, spec: JobSpec) -> str:
        return self._run(self._client.submit(spec))

    def submit_many(self, specs: Iterable[JobSpec], batch_size: int = SUBMIT_BATCH) -> list[str]:
        return self._run(self._client.submit_many(specs, batch_size))

    def submit_shell(self, command: str, **options: Any) -> str:
        return self._run(self._client.submit_shell(command, **options))

    def submit_call(self, function: str | Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        return self._run(self._client.submit_call(function, *args, **kwargs))

    def map(self, function: str | Callable[..., Any], items: Iterable[Any], **options: Any
            ) -> list[str]:
        return self._run(self._client.map(function, items, **options))

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._client.wait(job_id, timeout))

    def wait_records(self, job_ids: Sequence[str], timeout: float | None = None
                     ) -> list[dict[str, Any]]:
        return self._run(self._client.wait_records(job_ids, timeout))

    def gather(self, job_ids: Sequence[str], timeout: float | None = None
               ) -> list[dict[str, Any]]:
        return self._run(self._client.gather(job_ids, timeout))

    def status(self, job_id: str) -> dict[str, Any]:
        return self._run(self._client.status(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._run(self._client.cancel(job_id))

    def list(self, state: str | JobState | None = None, limit: int = 100
             ) -> list[dict[str, Any]]:
        return self._run(self._client.list(state, limit))

    def list_page(self, state: str | JobState | None = None, limit: int = 100,
                  after: str | None = None
                  ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        return self._run(self._client.list_page(state, limit, after))

    def explain(self, job_id: str) -> dict[str, Any]:
        return self._run(self._client.explain(job_id))

    def workers(self) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.workers())

    def stats(self) -> dict[str, Any]:
        return self._run(self._client.stats())

    def leader(self) -> dict[str, Any]:
        return self._run(self._client.leader())

    def coordinators(self) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.coordinators())


__all__ = ["SyncClient"]
