"""The OpenAPI 3 description served at /api/openapi.json, written by hand (a test validates it
and checks that it names every route the server has)."""

from __future__ import annotations

from typing import Any

from tcpsched import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}
JOB_ID = {"name": "id", "in": "path", "required": True,
          "description": "a job id, an unambiguous id prefix, or the job's idempotency key",
          "schema": {"type": "string"}}
NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}
REDIRECT = {"307": {"description": "this coordinator follows: the Location is the leader's"}}


def _get(summary: str, ok: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": ok, **REDIRECT, **ERRORS}, **more}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "tcpsched", "version": __version__,
             "description": "The coordinator's REST API. Records have the shape of the CLI's "
             "--json output. With a token configured, send Authorization: Bearer TOKEN."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "kind"], "properties": {
                "error": {"type": "string"}, "kind": {"type": "string"},
                "leader": {"type": "string", "nullable": True}}},
            "Job": {"type": "object", "additionalProperties": True, "properties": {
                "id": {"type": "string"}, "key": {"type": "string", "nullable": True},
                "state": {"type": "string", "enum": ["pending", "running", "succeeded",
                                                     "failed", "cancelled"]},
                "kind": {"type": "string", "enum": ["shell", "call"]},
                "command": {"type": "string", "nullable": True},
                "function": {"type": "string", "nullable": True},
                "priority": {"type": "integer"}, "attempts": {"type": "integer"},
                "worker": {"type": "string", "nullable": True},
                "submitted_at": {"type": "number"},
                "started_at": {"type": "number", "nullable": True},
                "finished_at": {"type": "number", "nullable": True},
                "exit_code": {"type": "integer", "nullable": True},
                "stdout": {"type": "string"}, "stderr": {"type": "string"},
                "error": {"type": "string", "nullable": True}}},
            "Submit": {"type": "object", "additionalProperties": False, "properties": {
                "shell": {"type": "string"}, "call": {"type": "string"},
                "args": {"type": "array", "items": {}}, "kwargs": {"type": "object"},
                "priority": {"type": "integer"}, "retries": {"type": "integer"},
                "timeout": {"type": "number"}, "delay": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "after": {"type": "array", "items": {"type": "string"}},
                "id": {"type": "string", "description": "idempotency key"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "cwd": {"type": "string"},
                "group": {"type": "string", "description": "the group (as `map` names one)"}}},
            "Logs": {"type": "object", "properties": {
                "id": {"type": "string"}, "stdout": {"type": "string"},
                "stderr": {"type": "string"}, "state": {"type": "string"}}},
            "Group": {"type": "object", "properties": {
                "group": {"type": "string"}, "total": {"type": "integer"},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "done": {"type": "integer"}, "progress": {"type": "number"},
                "throughput": {"type": "number", "nullable": True},
                "eta_s": {"type": "number", "nullable": True}}},
            "Schedule": {"type": "object", "additionalProperties": True, "properties": {
                "name": {"type": "string"}, "cron": {"type": "string", "nullable": True},
                "every": {"type": "number", "nullable": True},
                "tz": {"type": "string", "nullable": True}, "paused": {"type": "boolean"},
                "next": {"type": "array", "items": {"type": "string"},
                         "description": "the next fire times, ISO 8601"},
                "next_at": {"type": "array", "items": {"type": "number"}},
                "fired": {"type": "integer"}, "skipped": {"type": "integer"}}},
            "Page": {"type": "object", "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "next": {"type": "string", "nullable": True,
                         "description": "pass as ?after= for the next page"}}},
        },
        "responses": {
            "BadRequest": _json(_ref("Error"), "the request is malformed"),
            "Unauthorized": _json(_ref("Error"), "no or wrong bearer token"),
            "NotFound": _json(_ref("Error"), "no such job"),
            "Conflict": _json(_ref("Error"), "the idempotency key names another spec"),
            "Unavailable": _json(_ref("Error"), "no leader (leader: its TCP address, if "
                                 "known), or the core did not answer"),
            "RetryConflict": _json(_ref("Error"), "the job is not failed or cancelled, or "
                                   "waits on a parent that ended badly"),
            "TooMany": {"description": "the queue is full (--max-pending): wait Retry-After "
                        "seconds and submit again", "headers": {"Retry-After": {
                            "schema": {"type": "integer"}}},
                        "content": {"application/json": {"schema": _ref("Error")}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/jobs": {
            "post": {"summary": "submit a job",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref("Submit")}}},
                     "responses": {
                         "201": _json({"type": "object", "properties": {
                             "id": {"type": "string"}}}, "queued"),
                         "409": {"$ref": "#/components/responses/Conflict"},
                         "429": {"$ref": "#/components/responses/TooMany"},
                         **REDIRECT, **ERRORS}},
            "get": {"summary": "jobs, newest first, a page at a time",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                        {"name": "after", "in": "query", "schema": {"type": "string"},
                         "description": "the `next` of the previous page"},
                        {"name": "group", "in": "query", "schema": {"type": "string"},
                         "description": "only this group's jobs (one page, no `after`)"}],
                    "responses": {"200": _json(_ref("Page"), "a page"), **REDIRECT,
                                  **ERRORS}},
        },
        "/api/jobs/{id}": _get("one job", _json(_ref("Job"), "the record"),
                               parameters=[JOB_ID]),
        "/api/jobs/{id}/cancel": {"post": {
            "summary": "cancel: a pending job never runs, a running one is killed",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "the record"), **NOT_FOUND, **REDIRECT,
                          **ERRORS}}},
        "/api/jobs/{id}/logs": {"get": {
            "summary": "the job's output; with Accept: text/event-stream, Server-Sent Events "
                       "while it runs: `output` with what each stream added, `attempt` when "
                       "another attempt starts, then `end` with the record",
            "parameters": [JOB_ID],
            "responses": {"200": {"description": "the output", "content": {
                "application/json": {"schema": _ref("Logs")},
                "text/event-stream": {"schema": {"type": "string"}}}},
                **NOT_FOUND, **REDIRECT, **ERRORS}}},
        "/api/jobs/{id}/retry": {"post": {
            "summary": "requeue a failed or cancelled job as a new attempt (same id)",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "the record"),
                          "409": {"$ref": "#/components/responses/RetryConflict"},
                          **NOT_FOUND, **REDIRECT, **ERRORS}}},
        "/api/jobs/{id}/explain": _get("why the job went where it went, or is still pending",
                                       _json({"type": "object", "properties": {
                                           "id": {"type": "string"},
                                           "state": {"type": "string"},
                                           "reasons": {"type": "array", "items": {
                                               "type": "string"}}}}, "the reasons"),
                                       parameters=[JOB_ID]),
        "/api/jobs/{id}/children": _get(
            "the jobs whose `after` names this job, newest first",
            _json({"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "state": {"type": "string"}}}}, "the children"),
            parameters=[JOB_ID, {"name": "limit", "in": "query",
                                 "schema": {"type": "integer"}}]),
        "/api/groups/{group}": _get("a group's counts by state, progress, throughput, ETA",
                                    _json(_ref("Group"), "the summary"), parameters=[
                                        {"name": "group", "in": "path", "required": True,
                                         "schema": {"type": "string"}}]),
        "/api/schedules": _get("every schedule with its next fire times", _json(
            {"type": "array", "items": _ref("Schedule")}, "the schedules")),
        "/api/workers": _get("registered workers", _json({"type": "array", "items": {
            "type": "object"}}, "the workers")),
        "/api/stats": _get("cluster figures", _json({"type": "object"}, "the figures")),
        "/api/leader": _get("who leads", _json({"type": "object", "properties": {
            "id": {"type": "integer"}, "address": {"type": "string"},
            "epoch": {"type": "integer"}}}, "the leader")),
        "/api/coordinators": _get("every configured coordinator", _json(
            {"type": "array", "items": {"type": "object"}}, "the coordinators")),
        "/api/events": {"get": {"summary": "Server-Sent Events for the dashboard: `history`, "
                                "then a `snapshot` (stats, workers, coordinators) each second",
                                "responses": {"200": {"description": "the stream", "content": {
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                                    **REDIRECT}}},
        "/api/openapi.json": {"get": {"summary": "this description", "security": [],
                                      "responses": {"200": _json({"type": "object"}, "it")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (this coordinator's own)",
                             "responses": {"200": {"description": "text exposition format",
                                                   "content": {"text/plain": {
                                                       "schema": {"type": "string"}}}}}}},
    },
}
# Per-job routes can answer 404 too.
for _path in ("/api/jobs/{id}", "/api/jobs/{id}/explain", "/api/jobs/{id}/children",
              "/api/groups/{group}"):
    OPENAPI["paths"][_path]["get"]["responses"].update(NOT_FOUND)
