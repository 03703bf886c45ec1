"""Schedule methods of `Client` and `SyncClient` (cron and interval schedules, issue 12).

Mixed into the clients so their module stays about jobs. `schedule_add` is safe to resend
(the same add twice is one schedule; another spec under the same name is a conflict), and
pause/resume are idempotent, so all of them ride the client's resend-after-failover.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobSpec

if TYPE_CHECKING:
    from tcpsched.client import Client

T = TypeVar("T")


class ScheduleMethods:
    if TYPE_CHECKING:
        async def _request(self, build: Callable[[int], Any], timeout: float | None = None,
                           resend: bool = True) -> Any: ...

    async def schedule_add(self, name: str, job: JobSpec, *, cron: str | None = None,
                           tz: str | None = None, every: float | None = None,
                           no_overlap: bool = False, catch_up: str = "once"
                           ) -> dict[str, Any]:
        """Fire `job` on a cron expression (in time zone `tz`, default UTC) or every `every`
        seconds; each tick's job has the idempotency key NAME@TICK. Returns the schedule."""
        return await self._request(lambda r: m.ScheduleAdd(
            req_id=r, name=name, job=job, cron=cron, tz=tz, every=every,
            no_overlap=no_overlap, catch_up=catch_up))

    async def schedule_list(self) -> builtins.list[dict[str, Any]]:
        return await self._request(lambda r: m.ScheduleList(req_id=r))

    async def schedule_show(self, name: str, count: int = 5) -> dict[str, Any]:
        """The schedule with its next `count` fire times and its last runs (newest first)."""
        return await self._request(lambda r: m.ScheduleShow(req_id=r, name=name, count=count))

    async def schedule_remove(self, name: str) -> dict[str, Any]:
        return await self._request(lambda r: m.ScheduleChange(req_id=r, name=name,
                                                              action="remove"))

    async def schedule_pause(self, name: str) -> dict[str, Any]:
        return await self._request(lambda r: m.ScheduleChange(req_id=r, name=name,
                                                              action="pause"))

    async def schedule_resume(self, name: str) -> dict[str, Any]:
        return await self._request(lambda r: m.ScheduleChange(req_id=r, name=name,
                                                              action="resume"))


class SyncScheduleMethods:
    if TYPE_CHECKING:
        _client: Client

        def _run(self, coro: Awaitable[T]) -> T: ...

    def schedule_add(self, name: str, job: JobSpec, **options: Any) -> dict[str, Any]:
        return self._run(self._client.schedule_add(name, job, **options))

    def schedule_list(self) -> builtins.list[dict[str, Any]]:
        return self._run(self._client.schedule_list())

    def schedule_show(self, name: str, count: int = 5) -> dict[str, Any]:
        return self._run(self._client.schedule_show(name, count))

    def schedule_remove(self, name: str) -> dict[str, Any]:
        return self._run(self._client.schedule_remove(name))

    def schedule_pause(self, name: str) -> dict[str, Any]:
        return self._run(self._client.schedule_pause(name))

    def schedule_resume(self, name: str) -> dict[str, Any]:
        return self._run(self._client.schedule_resume(name))
