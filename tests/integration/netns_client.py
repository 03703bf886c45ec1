"""A client that lives inside a test host and runs the partition tests' requests.

The test process sits in the root namespace and cannot reach the hosts' addresses, so it starts
this script in a host (`python netns_client.py TOKEN_FILE`) and talks to it over a pipe: one
JSON request a line on stdin, one JSON answer a line on stdout, in order. A request names the
coordinators to ask, so one agent can ask the whole group (`SyncClient` finds the leader) or a
single coordinator (what *it* says about leadership). Every request gets a fresh client: no
session state (a remembered leader, an epoch seen) carries from one request to the next, so each
answer is what the cluster says now.

Requests: `{"method": M, "coordinators": [...], "connect_timeout": S, "args": [...],
"kwargs": {...}, "token": true}` calls `SyncClient.M`; `{"method": "submit_each", "commands":
[...]}` submits one shell job per command on one client and answers each with its id or its
error. Answers: `{"ok": true, "value": ...}` or `{"ok": false, "error": CLASS, "message": ...}`
for a `TcpschedError`; anything else is a bug of ours and ends the agent with a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tcpsched.client_sync import SyncClient
from tcpsched.config import read_token
from tcpsched.errors import TcpschedError

METHODS = frozenset({"submit_shell", "leader", "workers", "status", "list", "gather", "stats"})


def error_answer(exc: TcpschedError) -> dict[str, Any]:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


def submit_each(client: SyncClient, commands: list[str]) -> list[dict[str, Any]]:
    """One submit per command, each answered on its own: a failover in the middle of the run
    shows as errors on some of them, not as one failure for all."""
    out: list[dict[str, Any]] = []
    for command in commands:
        started = time.monotonic()
        try:
            out.append({"ok": True, "value": client.submit_shell(command),
                        "took_s": time.monotonic() - started})
        except TcpschedError as exc:
            out.append(error_answer(exc))
    return out


def handle(request: dict[str, Any], token: bytes) -> dict[str, Any]:
    method = request["method"]
    options = {"connect_timeout": float(request.get("connect_timeout", 5.0))}
    use_token = token if request.get("token", True) else None
    started = time.monotonic()
    try:
        with SyncClient(request["coordinators"], use_token, **options) as client:
            if method == "submit_each":
                value: Any = submit_each(client, request["commands"])
            elif method in METHODS:
                value = getattr(client, method)(*request.get("args", ()),
                                                **request.get("kwargs", {}))
            else:
                raise ValueError(f"unknown method {method!r}")
    except TcpschedError as exc:
        return {**error_answer(exc), "took_s": time.monotonic() - started}
    return {"ok": True, "value": value, "took_s": time.monotonic() - started}


def main() -> None:
    token = read_token(sys.argv[1])
    assert token is not None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line), token)), flush=True)


if __name__ == "__main__":
    main()
