"""The client's side of groups and retry (mixed into `Client` and `SyncClient`).

Theory of operation: a group is the id the jobs of one `map` share; the leader indexes it, so
`group_status`, `group_ids`, `cancel_group` and `list_group` cost the group's own jobs.
`wait_group` asks for the ids once and waits on them like `wait_records`. `gather_results`
turns the records of `map`'s jobs back into one list of item results in item order: a chunk
job (core `tcpsched.chunks`) contributes the list it returned, item by item.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tcpsched.chunks import CHUNK_FUNCTION
from tcpsched.core import messages as m
from tcpsched.errors import RequestError

T = TypeVar("T")


def new_group() -> str:
    """A fresh group id (64 random bits, hex)."""
    return secrets.token_hex(8)


def flatten_results(records: Sequence[dict[str, Any]]) -> list[Any]:
    """The item results of `map`'s records (in the order of the ids `map` returned): a chunk
    job's list is spread out. RequestError names the first job that did not succeed."""
    out: list[Any] = []
    for record in records:
        if record.get("state") != "succeeded":
            raise RequestError(f"job {record.get('id')} is {record.get('state')}: "
                               f"{record.get('error') or 'no result'}")
        if record.get("function") == CHUNK_FUNCTION:
            out.extend(record.get("result") or [])
        else:
            out.append(record.get("result"))
    return out


class WorkflowClient:
    """Groups and retry for the asyncio `Client`."""

    _request: Callable[..., Awaitable[Any]]
    wait_records: Callable[..., Awaitable[builtins.list[dict[str, Any]]]]
    gather: Callable[..., Awaitable[builtins.list[dict[str, Any]]]]

    async def _group(self, group: str, action: str, state: str | None = None,
                     limit: int = 100) -> Any:
        return await self._request(lambda r: m.GroupRequest(
            req_id=r, group=group, action=action, state=state, limit=limit))

    async def group_status(self, group: str) -> dict[str, Any]:
        """Counts by state, progress (0..1), throughput (jobs/s) and ETA (s) of a group."""
        return await self._group(group, "status")  # type: ignore[no-any-return]

    async def group_ids(self, group: str, state: str | None = None) -> builtins.list[str]:
        """The group's job ids in submission order (item order for `map`)."""
        return builtins.list(await self._group(group, "ids", state))

    async def list_group(self, group: str, state: str | None = None, limit: int = 100
                         ) -> builtins.list[dict[str, Any]]:
        """The group's records, newest first."""
        return builtins.list(await self._group(group, "list", state, limit))

    async def cancel_group(self, group: str) -> builtins.list[dict[str, Any]]:
        """Cancel every unfinished job of the group; the records of those cancelled."""
        return builtins.list(await self._group(group, "cancel"))

    async def wait_group(self, group: str, timeout: float | None = None
                         ) -> builtins.list[dict[str, Any]]:
        """The records of the group (in submission order) once all are finished, or when
        `timeout` passes (then some may not be)."""
        return await self.wait_records(await self.group_ids(group), timeout)

    async def gather_results(self, job_ids: Sequence[str], timeout: float | None = None
                             ) -> builtins.list[Any]:
        """`map`'s results in item order, once every job is finished (JobTimeout first if
        `timeout` passes; RequestError if a job did not succeed)."""
        return flatten_results(await self.gather(job_ids, timeout))

    async def retry(self, job_id: str | None = None, *, group: str | None = None,
                    state: str | None = None) -> builtins.list[dict[str, Any]]:
        """Requeue a failed or cancelled job (or every such job of `group`, only those in
        `state` when given) as a new attempt with the same id; the records requeued."""
        if (job_id is None) == (group is None):
            raise RequestError("retry takes a job or a group, not both or neither")
        ids = () if job_id is None else (job_id,)
        return builtins.list(await self._request(
            lambda r: m.Retry(req_id=r, job_ids=ids, group=group, state=state)))


class SyncWorkflowClient:
    """The same methods, blocking, for `SyncClient`."""

    _client: Any
    _run: Callable[[Awaitable[Any]], Any]

    def group_status(self, group: str) -> dict[str, Any]:
        return self._run(self._client.group_status(group))  # type: ignore[no-any-return]

    def group_ids(self, group: str, state: str | None = None) -> builtins.list[str]:
        return self._run(self._client.group_ids(group, state))  # type: ignore[no-any-return]

    def list_group(self, group: str, state: str | None = None, limit: int = 100
                   ) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.list_group(group, state, limit))  # type: ignore[no-any-return]

    def cancel_group(self, group: str) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.cancel_group(group))  # type: ignore[no-any-return]

    def wait_group(self, group: str, timeout: float | None = None
                   ) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.wait_group(group, timeout))  # type: ignore[no-any-return]

    def gather_results(self, job_ids: Sequence[str], timeout: float | None = None
                       ) -> builtins.list[Any]:
        return self._run(self._client.gather_results(job_ids, timeout))  # type: ignore[no-any-return]

    def retry(self, job_id: str | None = None, *, group: str | None = None,
              state: str | None = None) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.retry(job_id, group=group, state=state))  # type: ignore[no-any-return]
