"""The REST routes as a table: each one names the wire request it sends to the core.

Theory of operation: a route parses its path, query and JSON body into one request message of
`core/messages.py` (through `build`, given the req_id the bridge picks) and, optionally,
reshapes the core's reply value (`shape`). Everything else — finding the job, refusing a bad
spec, redirecting a follower, committing before the reply — is the core's. Adding a route for
a new request message is one `Route(...)` entry here (and its line in openapi.py).

Bad input raises `BadRequest` (400) with one line naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobSpec

LIST_LIMIT_MAX = 1000


class BadRequest(ValueError):
    """The HTTP request itself is malformed; the message says which field and why."""


@attrs.frozen
class Call:
    """What a route got: the path's variables, the query string and the JSON body."""

    match: Mapping[str, str]
    query: Mapping[str, str]
    body: Any = None


@attrs.frozen
class Route:
    method: str
    path: str
    build: Callable[[Call], Callable[[int], Any]]
    shape: Callable[[Any, Call], Any] = lambda value, _call: value
    status: int = 200
    # The HTTP status of a core error kind where this route means it otherwise (a retry the
    # job's state refuses is a conflict with that state, not a malformed request).
    statuses: Mapping[str, int] = attrs.field(factory=dict)


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be within [{low}, {high}], not {value}")
    return value


def _str_list(body: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name, [])
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings (or one comma-separated string)")
    return tuple(value)


SUBMIT_FIELDS = frozenset({"shell", "call", "args", "kwargs", "priority", "retries", "timeout",
                           "delay", "tags", "after", "id", "env", "cwd", "group"})


def spec_from_body(body: Any) -> JobSpec:
    """A JSON submit body as a JobSpec: `shell` or `call` (+ `args`, `kwargs`) and the submit
    options of the CLI; `id` is the idempotency key (`submit --id`)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - SUBMIT_FIELDS)
    if unknown:
        fields = ", ".join(sorted(SUBMIT_FIELDS))
        raise BadRequest(f"unknown field {unknown[0]!r} (fields: {fields})")
    shell, call = body.get("shell"), body.get("call")
    if (shell is None) == (call is None):
        raise BadRequest("give exactly one of shell (a command line) or call (module:function)")
    options: dict[str, Any] = {
        "tags": _str_list(body, "tags"), "after": _str_list(body, "after"),
        "key": body.get("id"), "env": {} if body.get("env") is None else body["env"],
        "cwd": body.get("cwd"), "group": body.get("group"),
    }
    for name, kind in (("priority", int), ("retries", int), ("timeout", float),
                       ("delay", float)):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not isinstance(value, int)):
            raise BadRequest(f"{name} must be a{'n integer' if kind is int else ' number'}, "
                             f"not {value!r}")
        options[name] = value
    if not isinstance(options["env"], dict):
        raise BadRequest("env must be an object of NAME: VALUE strings")
    try:
        if shell is not None:
            if not isinstance(shell, str):
                raise BadRequest("shell must be a string")
            if "args" in body or "kwargs" in body:
                raise BadRequest("args and kwargs go with call, not shell")
            return JobSpec(kind="shell", command=shell, **options)
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(call, str):
            raise BadRequest("call must be a string like module:function")
        if not isinstance(args, list):
            raise BadRequest("args must be a JSON array")
        if not isinstance(kwargs, dict):
            raise BadRequest("kwargs must be a JSON object")
        return JobSpec(kind="call", function=call, args=tuple(args), kwargs=kwargs, **options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(str(exc)) from None


def _submit(call: Call) -> Callable[[int], Any]:
    spec = spec_from_body(call.body)
    return lambda r: m.Submit(req_id=r, jobs=(spec,))


def _list(call: Call) -> Callable[[int], Any]:
    state = call.query.get("state") or None
    limit = _int(call.query, "limit", 50, 0, LIST_LIMIT_MAX)
    after = call.query.get("after") or None
    group = call.query.get("group") or None
    if group is not None:
        # The core's group index answers this without a scan of the table (core/groups.py);
        # it is one page, newest first, like the listing.
        if after is not None:
            raise BadRequest("after (paging) does not combine with group: a group's listing "
                             "is one page of up to limit jobs")
        return _checked(lambda r: m.GroupRequest(req_id=r, group=group, action="list",
                                                 state=state, limit=limit))
    return lambda r: m.ListJobs(req_id=r, state=state, limit=limit, after=after, page=True)


def _listing(value: Any, call: Call) -> Any:
    """A group's listing (a list of records) in the paged listing's shape."""
    return {"jobs": value, "next": None} if isinstance(value, list) else value


def _checked(make: Callable[[int], Any]) -> Callable[[int], Any]:
    """`make`, tried once now: a field the message's validators refuse is a 400 here, not a
    failure inside the bridge."""
    try:
        make(0)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None
    return make


def _children(call: Call) -> Callable[[int], Any]:
    job_id = call.match["id"]
    limit = _int(call.query, "limit", 100, 0, LIST_LIMIT_MAX)
    return _checked(lambda r: m.Children(req_id=r, job_id=job_id, limit=limit))


def _group(call: Call) -> Callable[[int], Any]:
    group = call.match["group"]
    return _checked(lambda r: m.GroupRequest(req_id=r, group=group, action="status"))


def _one(make: Callable[..., Any]) -> Callable[[Call], Callable[[int], Any]]:
    def build(call: Call) -> Callable[[int], Any]:
        job_id = call.match["id"]
        return _checked(lambda r: make(r, job_id))

    return build


def _plain(make: Callable[..., Any]) -> Callable[[Call], Callable[[int], Any]]:
    return lambda _call: lambda r: make(req_id=r)


def logs_value(record: Mapping[str, Any]) -> dict[str, Any]:
    """What `logs JOB --json` prints."""
    return {"id": record.get("id"), "stdout": record.get("stdout") or "",
            "stderr": record.get("stderr") or "", "state": record.get("state")}


def first(value: Any, _call: Call) -> Any:
    return value[0]


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/jobs", _submit, lambda ids, _c: {"id": ids[0]}, status=201),
    Route("GET", "/api/jobs", _list, _listing),
    Route("GET", "/api/jobs/{id}", _one(lambda r, j: m.Status(req_id=r, job_ids=(j,))), first),
    Route("POST", "/api/jobs/{id}/cancel", _one(lambda r, j: m.Cancel(req_id=r, job_id=j))),
    Route("GET", "/api/workers", _plain(m.Workers)),
    Route("GET", "/api/stats", _plain(m.Stats)),
    Route("GET", "/api/leader", _plain(m.Leader)),
    Route("GET", "/api/coordinators", _plain(m.Coordinators)),
    # -- workflows, schedules, routing (issue 13 second part) --
    Route("POST", "/api/jobs/{id}/retry", _one(lambda r, j: m.Retry(req_id=r, job_ids=(j,))),
          first, statuses={"bad_request": 409}),
    Route("GET", "/api/jobs/{id}/explain", _one(lambda r, j: m.Explain(req_id=r, job_id=j))),
    Route("GET", "/api/jobs/{id}/children", _children),
    Route("GET", "/api/groups/{group}", _group),
    Route("GET", "/api/schedules", _plain(m.ScheduleList)),
)

# app.py serves the logs route: a Status as JSON, or `tail` long polls as Server-Sent Events
# (logstream.py).
LOGS_PATH = "/api/jobs/{id}/logs"


def status_request(job_id: str) -> Callable[[int], Any]:
    return lambda r: m.Status(req_id=r, job_ids=(job_id,))
