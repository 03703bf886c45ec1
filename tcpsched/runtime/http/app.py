"""The HTTP server (aiohttp) on the coordinator's own event loop.

Theory of operation: every REST call goes through `routes.ROUTES` into the core by the bridge
(bridge.py), so the answers are the TCP protocol's. Errors map to JSON `{"error", "kind"}` with
the status a REST client expects: bad_request 400, not_found 404, conflict 409, unavailable
503, queue_full 429 with Retry-After; not_leader becomes a 307 to the leader's HTTP address
(or 503 naming the leader's TCP address when its HTTP address is unknown, or none is
elected). `/metrics`, the dashboard's assets and `/api/openapi.json` are this coordinator's
own and never redirect; `/` redirects on a follower that knows the leader, so the dashboard
always talks to the leader.

The leader's HTTP address: coordinator `--peer-http ID@HOST:PORT` when given, else the
convention that every coordinator serves HTTP at the same port offset from its TCP port as this
one does (7001 → 8001 makes 7002 → 8002), on its TCP host.

Security, as on the TCP port: with a token configured, every request needs `Authorization:
Bearer TOKEN` (compared with hmac.compare_digest) or the cookie that `POST /login` sets from the
same token (so a browser can open the dashboard); with `--tls-ca`, TLS requires a client
certificate signed by the CA (mutual TLS). A non-loopback bind with neither is refused at start
(`check_http_bind`).

Live updates: one `EventHub` samples stats, workers and coordinators once a second while at
least one browser listens on `/api/events`, and fans the one snapshot out to all of them; with
no listener it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from tcpsched.config import format_address, is_loopback, parse_address
from tcpsched.errors import ConfigError
from tcpsched.formatting import json_safe
from tcpsched.runtime.http import routes
from tcpsched.runtime.http.bridge import BridgeUnavailable, CoreBridge, CoreError
from tcpsched.runtime.http.logstream import LogStream, stream_logs
from tcpsched.runtime.http.metrics import Metrics
from tcpsched.runtime.http.openapi import OPENAPI

log = logging.getLogger(__name__)


class _LazyWeb:
    """`aiohttp.web`, imported on first use, so that only a coordinator started with --http
    loads aiohttp: its client cookie jar imports pickle, which importing tcpsched must not
    (tests/unit/test_fuzz.py); the server never touches that jar."""

    def __getattr__(self, name: str) -> Any:
        from aiohttp import web as module

        return getattr(module, name)


if TYPE_CHECKING:
    from aiohttp import web
else:
    web = _LazyWeb()

STATUS_BY_KIND = {"bad_request": 400, "not_found": 404, "conflict": 409, "unavailable": 503,
                  "timeout": 504, "not_leader": 503, "queue_full": 429}
COOKIE = "tcpsched_token"
PUBLIC_PATHS = frozenset({"/login", "/static/style.css", "/api/openapi.json"})
EVENT_PERIOD_S = 1.0
SHUTDOWN_S = 1.0
HISTORY_SAMPLES = 600  # ten minutes of one-second samples for the charts
STATIC = resources.files("tcpsched.runtime.http") / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".svg": "image/svg+xml"}


def check_http_bind(host: str, token: bytes | None, mutual_tls: bool) -> None:
    """The TCP port's rule for the HTTP port: public only behind a token or mutual TLS."""
    if not is_loopback(host) and token is None and not mutual_tls:
        raise ConfigError(
            f"refusing to serve HTTP on {host} without a token: anyone who can reach it could "
            "run commands; give --token-file (or TCPSCHED_TOKEN), or mutual TLS (--tls-cert, "
            "--tls-key, --tls-ca), or --http 127.0.0.1:PORT")


def http_addresses(node_id: int, listen: tuple[str, int], http: tuple[str, int],
                   peers: tuple[tuple[int, str], ...],
                   peer_http: tuple[tuple[int, str], ...]) -> dict[int, str]:
    """Every coordinator's HTTP address: --peer-http where given, else the port convention."""
    offset = http[1] - listen[1]
    found = {node_id: format_address(*http)}
    given = dict(peer_http)
    for peer, address in peers:
        if peer in given:
            found[peer] = given[peer]
            continue
        host, port = parse_address(address)
        if 0 < port + offset < 65536:
            found[peer] = format_address(host, port + offset)
    return found


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(json_safe(value), default=repr, allow_nan=False)
    return web.Response(text=body, status=status, content_type="application/json",
                        headers=headers)


def error_response(status: int, message: str, kind: str, **extra: Any) -> web.Response:
    return _json({"error": message, "kind": kind, **extra}, status)


class HttpServer:
    """The routes, the middlewares and the site. `host` is the Coordinator: its settings, its
    node (who leads), `attach_local` (a LocalConnection gets an id) and its runner."""

    def __init__(self, host: Any) -> None:
        self.host = host
        s = host.settings
        self.settings = s
        self.token: bytes | None = s.token
        self.scheme = "https" if s.tls.enabled else "http"
        self.addresses = http_addresses(s.node_id, s.listen, s.http, s.peers, s.peer_http)
        self.bridge = CoreBridge(host.attach_local, host.detach_local, host.runner.feed)
        self.metrics = Metrics(host)
        self.hub = EventHub(self.bridge, self._leader_address)
        self.app = web.Application(middlewares=[self._errors, self._auth],
                                   client_max_size=s.frame_bytes_max)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._add_routes()

    # -- wiring ---------------------------------------------------------------------------------

    def _add_routes(self) -> None:
        router = self.app.router
        router.add_get("/", self._dashboard)
        router.add_get("/static/{name}", self._static)
        router.add_get("/login", self._login_page)
        router.add_post("/login", self._login)
        router.add_get("/metrics", self._metrics)
        router.add_get("/api/openapi.json", self._openapi)
        router.add_get("/api/events", self._events)
        router.add_get(routes.LOGS_PATH, self._logs)
        for route in routes.ROUTES:
            router.add_route(route.method, route.path, self._handler(route))

    def _handler(self, route: routes.Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = None
            if request.method == "POST" and request.can_read_body:
                try:
                    body = await request.json()
                except ValueError as exc:
                    raise routes.BadRequest(f"the body is not valid JSON: {exc}") from None
            call = routes.Call(request.match_info, request.query, body)
            try:
                value = await self.bridge.request(route.build(call))
            except CoreError as exc:
                status = route.statuses.get(exc.reply.kind)
                if status is None:
                    raise
                return error_response(status, exc.reply.message, exc.reply.kind)
            return _json(route.shape(value, call), route.status)

        return handle

    async def start(self) -> None:
        s = self.settings
        from tcpsched.runtime.tls import server_context

        # Open streams end at shutdown (the hub tells them); a straggler gets a second.
        runner = self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                              shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, s.http[0], s.http[1], ssl_context=server_context(s.tls),
                           backlog=128, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else s.http[1]
        log.info("node=%d http on %s://%s:%d auth=%s", s.node_id, self.scheme, s.http[0],
                 self.port, "token" if self.token else "none")

    async def stop(self) -> None:
        self.hub.stop()
        self.bridge.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middlewares ----------------------------------------------------------------------------

    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except routes.BadRequest as exc:
            return error_response(400, str(exc), "bad_request")
        except CoreError as exc:
            reply = exc.reply
            if reply.kind == "not_leader":
                target = self._leader_address()
                if target is not None:
                    raise web.HTTPTemporaryRedirect(
                        f"{self.scheme}://{target}{request.path_qs}") from None
                return error_response(503, reply.message, reply.kind, leader=reply.leader_hint)
            if reply.kind == "queue_full":
                # Overload: 429 Too Many Requests with Retry-After (whole seconds, RFC 9110),
                # the core's own hint; the body keeps the exact figure.
                wait = reply.retry_after if reply.retry_after is not None else 1.0
                response = error_response(429, reply.message, reply.kind, retry_after=wait)
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
            return error_response(STATUS_BY_KIND.get(reply.kind, 500), reply.message,
                                  reply.kind)
        except BridgeUnavailable as exc:
            return error_response(503, str(exc), "unavailable")
        except web.HTTPException as exc:
            if exc.status in (404, 405) and request.path.startswith("/api/"):
                return error_response(exc.status, f"no route {request.method} {request.path} "
                                      "on this coordinator", "no_route")
            raise

    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is None or request.path in PUBLIC_PATHS \
                or self._authorized(request):
            return await handler(request)
        if request.path == "/":
            raise web.HTTPFound("/login")
        return error_response(401, "authentication required: send Authorization: Bearer "
                              "TOKEN (the cluster's token)", "unauthorized")

    # New-style middlewares, as `@web.middleware` marks them (without importing aiohttp here).
    _errors.__middleware_version__ = 1  # type: ignore[attr-defined]
    _auth.__middleware_version__ = 1  # type: ignore[attr-defined]

    def _authorized(self, request: web.Request) -> bool:
        assert self.token is not None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              self.token):
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.token)

    # -- the leader ---------------------------------------------------------------------------

    def _leader_address(self) -> str | None:
        """The leader's HTTP address, when it is another coordinator that we know of."""
        node = self.host.node
        leader = node.election.leader_hint()
        if not leader or node.is_leader or leader == self.settings.node_id:
            return None
        return self.addresses.get(leader)

    # -- pages ----------------------------------------------------------------------------------

    async def _dashboard(self, request: web.Request) -> web.StreamResponse:
        target = self._leader_address()
        if target is not None:
            raise web.HTTPTemporaryRedirect(f"{self.scheme}://{target}{request.path_qs}")
        return self._asset("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request.match_info["name"])

    def _asset(self, name: str) -> web.Response:
        suffix = name[name.rfind("."):] if "." in name else ""
        item = STATIC / name
        if "/" in name or suffix not in STATIC_TYPES or not item.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=item.read_bytes(), content_type=STATIC_TYPES[suffix],
                            headers={"Cache-Control": "no-cache"})

    async def _login_page(self, _request: web.Request) -> web.StreamResponse:
        return self._asset("login.html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = str(form.get("token", "")).strip().encode()
        if self.token is None or not hmac.compare_digest(given, self.token):
            return web.Response(status=401, text="wrong token", content_type="text/plain")
        response = web.HTTPFound("/")
        response.set_cookie(COOKIE, given.decode(), httponly=True, samesite="Strict",
                            secure=self.scheme == "https")
        raise response

    async def _openapi(self, _request: web.Request) -> web.StreamResponse:
        return _json(OPENAPI)

    async def _metrics(self, _request: web.Request) -> web.StreamResponse:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- streams --------------------------------------------------------------------------------

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        """The job's output as `logs --json` prints it; with `Accept: text/event-stream`, its
        live output as events (logstream.py: `tail` long polls through the core)."""
        job_id = request.match_info["id"]
        if "text/event-stream" not in request.headers.get("Accept", ""):
            record = (await self.bridge.request(routes.status_request(job_id)))[0]
            return _json(routes.logs_value(record))
        reader = LogStream(job_id)
        first = await self.bridge.request(reader.request(wait=0.0))  # 404 before the stream
        response = await _open_stream(request)

        async def emit(kind: str, value: Any) -> None:
            await _event(response, kind, value)

        with contextlib.suppress(ConnectionError):
            try:
                await stream_logs(self.bridge.request, first, job_id, emit,
                                  lambda: _gone(request) or self.hub.stopped)
            except (CoreError, BridgeUnavailable) as exc:
                await _event(response, "error", {"error": str(exc)})
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """`snapshot` events once a second (stats, workers, coordinators), after one
        `history` event with the samples the charts need."""
        target = self._leader_address()
        if target is not None:
            raise web.HTTPTemporaryRedirect(f"{self.scheme}://{target}{request.path_qs}")
        response = await _open_stream(request)
        queue = self.hub.subscribe()
        try:
            await _event(response, "history", list(self.hub.history))
            while True:
                kind, value = await queue.get()
                if kind == "close":
                    break
                await _event(response, kind, value)
        except ConnectionError:
            pass
        finally:
            self.hub.unsubscribe(queue)
        return response


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


async def _event(response: web.StreamResponse, kind: str, value: Any) -> None:
    data = json.dumps(json_safe(value), default=repr, allow_nan=False)
    await response.write(f"event: {kind}\ndata: {data}\n\n".encode())


class EventHub:
    """One sampler for every dashboard: runs only while someone listens."""

    def __init__(self, bridge: CoreBridge, leader_address: Callable[[], str | None]) -> None:
        self.bridge = bridge
        self.leader_address = leader_address
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SAMPLES)
        self._queues: set[asyncio.Queue[tuple[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self.snapshots = 0
        self.stopped = False

    def subscribe(self) -> asyncio.Queue[tuple[str, Any]]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=8)
        self._queues.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sample())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        self._queues.discard(queue)

    def stop(self) -> None:
        """End every open stream (at shutdown), and the sampler."""
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(("close", None))

    def _publish(self, kind: str, value: Any) -> None:
        for queue in self._queues:
            if queue.full():  # a slow browser skips snapshots rather than grow our memory
                queue.get_nowait()
            queue.put_nowait((kind, value))

    async def _sample(self) -> None:
        from tcpsched.core import messages as m

        while self._queues:
            started = time.monotonic()
            try:
                stats = await self.bridge.request(lambda r: m.Stats(req_id=r))
                workers = await self.bridge.request(lambda r: m.Workers(req_id=r))
                coordinators = await self.bridge.request(lambda r: m.Coordinators(req_id=r))
            except (CoreError, BridgeUnavailable) as exc:
                self._publish("error", {"error": str(exc), "leader": self.leader_address()})
            else:
                sample = {"t": time.time(), "pending": stats.get("pending", 0),
                          "running": stats.get("running", 0),
                          "finished": stats.get("finished", 0)}
                self.history.append(sample)
                self.snapshots += 1
                self._publish("snapshot", {"stats": stats, "workers": workers,
                                           "coordinators": coordinators, "sample": sample})
            await asyncio.sleep(max(0.0, EVENT_PERIOD_S - (time.monotonic() - started)))
