"""A tiny HTTP client for the tests and scripts: requests that never follow redirects (so a
test sees the 307 itself) and a Server-Sent Events reader. Loopback only, stdlib only."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from tcpsched.testing.processes import wait_until


def _connection(url: str, timeout: float, context: ssl.SSLContext | None = None
                ) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), "tests talk to loopback only"
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    return conn, parts.path + (f"?{parts.query}" if parts.query else "")


def request(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
            timeout: float = 30.0, raw: bytes | None = None,
            context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON value or text). A JSON `body` is sent as application/json;
    `raw` bytes as they are; `context` for an https URL."""
    conn, path = _connection(url, timeout, context)
    try:
        data = raw if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
        value: Any = raw.decode(errors="replace")
        if found.get("content-type", "").startswith("application/json"):
            value = json.loads(raw)
        return response.status, found, value
    finally:
        conn.close()


def get(url: str, **options: Any) -> Any:
    """The JSON value of a GET that must answer 200."""
    status, _, value = request("GET", url, **options)
    assert status == 200, (status, value)
    return value


def events(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0
           ) -> Iterator[tuple[str, Any]]:
    """(event, JSON data) from a Server-Sent Events stream until the server ends it."""
    conn, path = _connection(url, timeout)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        response = conn.getresponse()
        assert response.status == 200, (response.status, response.read())
        kind, data = "message", []
        while line := response.readline():
            text = line.decode().rstrip("\r\n")
            if text.startswith("event:"):
                kind = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].strip())
            elif text == "" and data:
                yield kind, json.loads("\n".join(data))
                kind, data = "message", []
    finally:
        conn.close()


def wait_http(base: str, timeout: float = 30.0) -> None:
    """Until the coordinator's HTTP server answers (any status)."""

    def up() -> bool:
        try:
            request("GET", f"{base}/api/openapi.json", timeout=2.0)
        except OSError:
            return False
        return True

    wait_until(up, timeout, what=f"HTTP server at {base}")
