"""The HTTP layer's pure parts: submit bodies, the bridge, metrics from journal lines, the
OpenAPI description, the leader's HTTP address and the bind rule."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.events import Received
from tcpsched.errors import ConfigError
from tcpsched.runtime.http import routes
from tcpsched.runtime.http.app import check_http_bind, http_addresses
from tcpsched.runtime.http.bridge import BridgeUnavailable, CoreBridge, CoreError
from tcpsched.runtime.http.metrics import Metrics, entry_op
from tcpsched.runtime.http.openapi import OPENAPI
from tcpsched.runtime.journal_lines import encode_line


def test_submit_body_becomes_the_cli_spec() -> None:
    """Every submit option of the CLI maps onto the JobSpec; `id` is the key, tags may be a
    comma-separated string."""
    spec = routes.spec_from_body({"shell": "make", "priority": 2, "retries": 1, "timeout": 5,
                                  "delay": 0.5, "tags": "gpu, ssd", "after": ["abc"],
                                  "id": "k1", "env": {"CI": "1"}, "cwd": "/tmp"})
    assert (spec.kind, spec.command, spec.priority, spec.retries, spec.timeout) == (
        "shell", "make", 2, 1, 5)
    assert spec.tags == ("gpu", "ssd") and spec.after == ("abc",) and spec.key == "k1"
    assert spec.env == {"CI": "1"} and spec.cwd == "/tmp" and spec.delay == 0.5
    call = routes.spec_from_body({"call": "m:f", "args": [1, "x"], "kwargs": {"a": 2}})
    assert (call.function, call.args, call.kwargs) == ("m:f", (1, "x"), {"a": 2})


@pytest.mark.parametrize(("body", "needle"), [
    ({}, "exactly one of"), ({"shell": "x", "args": []}, "go with call"),
    ({"shell": "x", "retries": 1.5}, "retries must be an integer"),
    ({"shell": "x", "timeout": True}, "timeout must be a number"),
    ({"shell": "x", "tags": [1]}, "tags must be a list of strings"),
    ({"shell": "x", "env": []}, "env must be an object"),
    ({"shell": "x", "priority": 10**9}, "priority"),
    ({"call": "nocolon"}, "module:function"),
])
def test_bad_submit_body_names_the_problem(body: dict[str, Any], needle: str) -> None:
    """A bad body is BadRequest with one line naming the field (the JobSpec's own checks
    included)."""
    with pytest.raises(routes.BadRequest, match=needle):
        routes.spec_from_body(body)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8))
def test_any_json_body_is_a_spec_or_a_bad_request(body: Any) -> None:
    """Whatever JSON arrives, the result is a JobSpec or BadRequest, never another error."""
    try:
        routes.spec_from_body(body)
    except routes.BadRequest:
        pass


def test_list_query_is_checked() -> None:
    """`limit` must be an integer in range; the listing asks the core for a page."""
    build = routes._list(routes.Call({}, {"state": "failed", "limit": "7", "after": "j"}))
    assert build(4) == m.ListJobs(req_id=4, state="failed", limit=7, after="j", page=True)
    with pytest.raises(routes.BadRequest, match="limit must be an integer"):
        routes._list(routes.Call({}, {"limit": "many"}))
    with pytest.raises(routes.BadRequest, match="within"):
        routes._list(routes.Call({}, {"limit": "100000"}))


async def test_bridge_resolves_replies_by_req_id() -> None:
    """The bridge feeds the request as Received on its connection and returns the Reply's
    value; an ErrorReply raises CoreError; a dropped connection fails the waiting call."""
    fed: list[Any] = []
    attached: list[Any] = []
    detached: list[int] = []
    bridge = CoreBridge(lambda conn: attached.append(conn) or 7,
                        lambda conn_id, _reason: detached.append(conn_id), fed.append)
    task = asyncio.ensure_future(bridge.request(lambda r: m.Stats(req_id=r)))
    await asyncio.sleep(0)
    (event,) = fed
    assert isinstance(event, Received) and event.conn == 7 and isinstance(event.msg, m.Stats)
    attached[0].send(m.Reply(req_id=event.msg.req_id, value={"pending": 1}))
    assert await task == {"pending": 1}
    task = asyncio.ensure_future(bridge.request(lambda r: m.Status(req_id=r, job_ids=("x",))))
    await asyncio.sleep(0)
    attached[0].send(m.ErrorReply(req_id=fed[-1].msg.req_id, kind="not_found", message="no"))
    with pytest.raises(CoreError, match="no"):
        await task
    task = asyncio.ensure_future(bridge.request(lambda r: m.Workers(req_id=r)))
    await asyncio.sleep(0)
    attached[0].close("gone")
    with pytest.raises(BridgeUnavailable, match="gone"):
        await task
    await asyncio.sleep(0)
    assert detached == [7]


async def test_bridge_times_out() -> None:
    """No reply within the bound: BridgeUnavailable, and a late reply is ignored."""
    conns: list[Any] = []
    bridge = CoreBridge(lambda conn: conns.append(conn) or 1, lambda *_: None,
                        lambda _e: None, timeout_s=0.01)
    with pytest.raises(BridgeUnavailable, match="no reply"):
        await bridge.request(lambda r: m.Stats(req_id=r))
    conns[0].send(m.Reply(req_id=1, value=None))  # nobody waits: dropped


def _host() -> Any:
    job = SimpleNamespace(submitted_at=100.0, not_before=0.0)
    return SimpleNamespace(node=SimpleNamespace(table=SimpleNamespace(jobs={"j1": job})))


def test_metrics_from_journal_lines() -> None:
    """Start lines give queue latency, finish lines completions, failures and run time, a
    requeue after a failure a failure; submit lines are not parsed."""
    metrics = Metrics(_host())
    lines = [
        encode_line(1, {"op": "submit", "job": {"id": "j1", "seq": 1}}, 1),
        encode_line(2, {"op": "start", "id": "j1", "attempt": 1, "worker": "w", "at": 102.5}, 1),
        encode_line(3, {"op": "requeue", "id": "j1", "reason": "failed"}, 1),
        encode_line(4, {"op": "finish", "id": "j1", "state": "failed", "at": 110.0,
                        "started_at": 103.0, "finished_at": 110.0, "stdout": '"op":"start"'}, 1),
    ]
    for line in lines:
        metrics.observe_entry(line)
    value = metrics.registry.get_sample_value
    assert value("tcpsched_queue_latency_seconds_sum") == 2.5
    assert value("tcpsched_failures_total") == 2
    assert value("tcpsched_completions_total", {"state": "failed"}) == 1
    assert value("tcpsched_run_seconds_sum") == 7.0
    assert [entry_op(line) for line in lines] == [b"submit", b"start", b"requeue", b"finish"]


def test_openapi_is_valid_and_names_every_route() -> None:
    """The hand-written description is valid OpenAPI 3 and documents every REST route."""
    from openapi_spec_validator import validate

    validate(OPENAPI)
    paths = OPENAPI["paths"]
    for route in routes.ROUTES:
        assert route.method.lower() in paths[route.path], route.path
    assert "get" in paths[routes.LOGS_PATH]


def test_leader_http_address_by_flag_or_offset() -> None:
    """--peer-http wins; otherwise a peer's HTTP port sits at our own --http offset."""
    found = http_addresses(1, ("127.0.0.1", 7001), ("127.0.0.1", 8001),
                           ((2, "127.0.0.1:7002"), (3, "10.0.0.3:7003")),
                           ((3, "10.0.0.3:9999"),))
    assert found == {1: "127.0.0.1:8001", 2: "127.0.0.1:8002", 3: "10.0.0.3:9999"}


def test_public_http_bind_needs_token_or_mutual_tls() -> None:
    """The TCP port's rule: loopback is free, anything else needs a token or mutual TLS."""
    check_http_bind("127.0.0.1", None, False)
    check_http_bind("0.0.0.0", b"t", False)
    check_http_bind("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match=r"refusing to serve HTTP on 0\.0\.0\.0"):
        check_http_bind("0.0.0.0", None, False)


def test_header_fields_ignore_user_data() -> None:
    """Fields are read only from the record's own scalars: a result or output that spells
    `"state":"x"` (escaped or nested) changes nothing; the figures equal a full decode's."""
    from tcpsched.runtime.http.metrics import header_fields

    line = encode_line(9, {"op": "finish", "id": "j1", "attempt": 1, "state": "succeeded",
                           "at": 5.0, "started_at": 1.5, "finished_at": 4.25,
                           "result": {"state": "failed", "started_at": 0},
                           "stdout": '"state":"cancelled"', "error": None}, 3)
    assert header_fields(line) == {"id": "j1", "state": "succeeded", "at": 5.0,
                                   "started_at": 1.5, "finished_at": 4.25}
    metrics = Metrics(_host())
    metrics.observe_entry(line)
    assert metrics.registry.get_sample_value("tcpsched_run_seconds_sum") == 2.75
    assert metrics.registry.get_sample_value("tcpsched_completions_total",
                                             {"state": "succeeded"}) == 1


def test_http_settings_from_flags_and_toml(tmp_path: Any) -> None:
    """--http and --peer-http parse from flags and as TOML keys; a bad address is one line."""
    from tcpsched.config import coordinator_settings

    config = tmp_path / "c1.toml"
    config.write_text('http = "127.0.0.1:8001"\npeer = ["2@127.0.0.1:7002"]\n'
                      'peer_http = ["2@127.0.0.1:9002"]\n')
    settings, _ = coordinator_settings(["--config", str(config)])
    assert settings.http == ("127.0.0.1", 8001) and settings.peer_http == ((2, "127.0.0.1:9002"),)
    assert coordinator_settings([])[0].http is None
    with pytest.raises(ConfigError, match="HOST:PORT"):
        coordinator_settings(["--http", "8001"])
    with pytest.raises(ConfigError, match="--peer-http"):
        coordinator_settings(["--peer-http", "nope"])
