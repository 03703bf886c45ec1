"""The REST API and /metrics against real coordinator and worker processes on 127.0.0.1.

Most tests share one coordinator (with --http) and one 3-slot worker, started once for the
module; each test makes its own jobs. Auth, the follower's redirect and the refused public bind
start their own coordinators with the `procs` fixture.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tcpsched.testing.http import events, get, request, wait_http
from tcpsched.testing.processes import (
    ProcessGroup,
    free_port,
    wait_for_workers,
    wait_until,
)
from tests.conftest import connect

WAIT_S = 60.0


@attrs.frozen
class Site:
    base: str  # http://127.0.0.1:PORT
    address: str  # the TCP address


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
         ) -> Iterator[Site]:
    """One coordinator serving HTTP, worker w1 with 3 slots, for the whole module."""
    group = ProcessGroup(tmp_path_factory.mktemp("http") / "run")
    failed_before = request.session.testsfailed
    try:
        port = free_port()
        _, address = group.coordinator(extra=["--http", f"127.0.0.1:{port}"])
        group.worker(address, "w1", slots=3)
        client = connect(address)
        wait_for_workers(client, ["w1"])
        client.close()
        base = f"http://127.0.0.1:{port}"
        wait_http(base)
        yield Site(base, address)
    finally:
        group.stop_all()
        if request.session.testsfailed > failed_before:
            print(group.logs())


def submit(base: str, body: dict, **options: object) -> str:
    status, _, value = request("POST", f"{base}/api/jobs", body, **options)  # type: ignore[arg-type]
    assert status == 201, value
    return value["id"]


def wait_state(base: str, job_id: str, states: tuple[str, ...]) -> dict:
    return wait_until(lambda: (r := get(f"{base}/api/jobs/{job_id}"))["state"] in states and r,
                      WAIT_S, what=f"job {job_id} in {states}")


def test_submit_then_status_and_logs(site: Site) -> None:
    """POST /api/jobs answers 201 {"id"}; the record and the logs have the CLI's shapes."""
    job_id = submit(site.base, {"shell": "echo hello; echo oops >&2", "priority": 3,
                                "tags": "", "id": "rest-hello"})
    record = wait_state(site.base, job_id, ("succeeded",))
    assert record["id"] == job_id and record["key"] == "rest-hello"
    assert record["priority"] == 3 and record["kind"] == "shell"
    assert get(f"{site.base}/api/jobs/{job_id}/logs") == {
        "id": job_id, "stdout": "hello\n", "stderr": "oops\n", "state": "succeeded"}
    # The idempotency key: the same spec again is the same job; the key finds it too.
    assert submit(site.base, {"shell": "echo hello; echo oops >&2", "priority": 3,
                              "id": "rest-hello"}) == job_id
    assert get(f"{site.base}/api/jobs/rest-hello")["id"] == job_id


def test_call_job_with_args(site: Site) -> None:
    """A `call` body with args and kwargs runs the function; its result is in the record."""
    job_id = submit(site.base, {"call": "operator:add", "args": [2, 3]})
    assert wait_state(site.base, job_id, ("succeeded",))["result"] == 5


def test_list_pages_newest_first(site: Site) -> None:
    """GET /api/jobs filters by state and pages with the `next` cursor, newest first."""
    ids = [submit(site.base, {"shell": f"echo page {i}"}) for i in range(3)]
    for job_id in ids:
        wait_state(site.base, job_id, ("succeeded",))
    first = get(f"{site.base}/api/jobs?state=succeeded&limit=2")
    assert [r["id"] for r in first["jobs"]] == [ids[2], ids[1]]
    assert first["next"] == ids[1]
    rest = get(f"{site.base}/api/jobs?state=succeeded&limit=1&after={first['next']}")
    assert [r["id"] for r in rest["jobs"]] == [ids[0]]
    assert all(r["state"] == "succeeded" for r in first["jobs"] + rest["jobs"])


def test_cancel_running_job(site: Site) -> None:
    """POST /api/jobs/{id}/cancel kills a running job and answers its cancelled record."""
    job_id = submit(site.base, {"shell": "sleep 60"})
    wait_state(site.base, job_id, ("running",))
    status, _, record = request("POST", f"{site.base}/api/jobs/{job_id}/cancel")
    assert status == 200 and record["state"] == "cancelled"
    assert wait_state(site.base, job_id, ("cancelled",))["id"] == job_id


def test_logs_stream_follows_the_job(site: Site) -> None:
    """GET /api/jobs/{id}/logs as Server-Sent Events: `output` events while the job runs
    (tail long polls), then `end` with the final record; the output adds up."""
    job_id = submit(site.base, {"shell": "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done"})
    seen = list(events(f"{site.base}/api/jobs/{job_id}/logs"))
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    outputs = [data for kind, data in seen if kind == "output"]
    assert any(d["state"] == "running" for d in outputs)
    assert "".join(d.get("stdout", "") for d in outputs) == "".join(
        f"tick {i}\n" for i in range(1, 6))
    assert seen[-1][1]["state"] == "succeeded" and seen[-1][1]["id"] == job_id


@pytest.mark.parametrize(("body", "needle"), [
    ({"shell": "true", "call": "x:y"}, "exactly one of shell"),
    ({"command": "true"}, "unknown field 'command'"),
    ({"shell": "true", "priority": "high"}, "priority must be an integer"),
    ({"call": "operator:add", "args": {"a": 1}}, "args must be a JSON array"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_submit_is_400(site: Site, body: object, needle: str) -> None:
    """A malformed submit body is 400 with a JSON error naming the problem."""
    status, _, value = request("POST", f"{site.base}/api/jobs", body)
    assert status == 400 and value["kind"] == "bad_request" and needle in value["error"]


def test_error_statuses(site: Site) -> None:
    """Unknown job 404, key reused with another spec 409, invalid JSON 400, unknown route 404
    (kind no_route), all as JSON with a message."""
    status, _, value = request("GET", f"{site.base}/api/jobs/no-such-job")
    assert status == 404 and value["kind"] == "not_found" and "no-such-job" in value["error"]
    submit(site.base, {"shell": "true", "id": "rest-conflict"})
    status, _, value = request("POST", f"{site.base}/api/jobs",
                               {"shell": "false", "id": "rest-conflict"})
    assert status == 409 and value["kind"] == "conflict"
    status, _, value = request("POST", f"{site.base}/api/jobs", None,
                               headers={"Content-Type": "application/json"})
    assert status == 400
    status, _, value = request("POST", f"{site.base}/api/jobs/x/nudge")
    assert status == 404 and value["kind"] == "no_route"


def test_cluster_views(site: Site) -> None:
    """/api/workers, /api/stats, /api/leader and /api/coordinators answer as the CLI does."""
    workers = get(f"{site.base}/api/workers")
    assert [w["name"] for w in workers] == ["w1"] and workers[0]["slots"] == 3
    stats = get(f"{site.base}/api/stats")
    assert stats["workers_alive"] == 1 and stats["leader"] == 1
    assert get(f"{site.base}/api/leader")["address"] == site.address
    (row,) = get(f"{site.base}/api/coordinators")
    assert row["role"] == "leader" and row["address"] == site.address


def test_events_stream_snapshots(site: Site) -> None:
    """/api/events sends the chart history, then snapshots with stats, workers and
    coordinators."""
    stream = events(f"{site.base}/api/events")
    kind, history = next(stream)
    assert kind == "history" and isinstance(history, list)
    kind, snap = next(stream)
    stream.close()
    assert kind == "snapshot" and snap["stats"]["workers_alive"] == 1
    assert [w["name"] for w in snap["workers"]] == ["w1"]
    assert set(snap["sample"]) == {"t", "pending", "running", "finished"}


def test_openapi_served(site: Site) -> None:
    """/api/openapi.json is a valid OpenAPI 3 description."""
    from openapi_spec_validator import validate

    spec = get(f"{site.base}/api/openapi.json")
    validate(spec)
    for path in ("/api/jobs/{id}/cancel", "/api/jobs/{id}/retry", "/api/jobs/{id}/explain",
                 "/api/jobs/{id}/children", "/api/groups/{group}", "/api/schedules"):
        assert path in spec["paths"], path
    # Every route the server has is described.
    from tcpsched.runtime.http import routes

    for route in routes.ROUTES:
        assert route.method.lower() in spec["paths"][route.path], route.path


def test_dashboard_and_assets_served(site: Site) -> None:
    """/ is the dashboard page; its script and style come from the package."""
    status, headers, page = request("GET", f"{site.base}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page and "http://" not in page.replace(site.base, "")
    status, headers, _ = request("GET", f"{site.base}/static/app.js")
    assert status == 200 and "javascript" in headers["content-type"]
    assert request("GET", f"{site.base}/static/../setup.cfg")[0] == 404


# -- metrics ----------------------------------------------------------------------------------


def scrape(base: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text = request("GET", f"{base}/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_metrics_move_as_jobs_run(site: Site) -> None:
    """/metrics parses with prometheus_client.parser; submits, completions, failures and the
    histograms count the jobs that ran."""
    before = scrape(site.base)
    ok = submit(site.base, {"shell": "true"})
    bad = submit(site.base, {"shell": "exit 3"})
    wait_state(site.base, ok, ("succeeded",))
    wait_state(site.base, bad, ("failed",))
    after = scrape(site.base)

    def moved(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert moved("tcpsched_submits_total") == 2
    assert moved("tcpsched_completions_total{state=succeeded}") == 1
    assert moved("tcpsched_completions_total{state=failed}") == 1
    assert moved("tcpsched_failures_total") == 1
    assert moved("tcpsched_run_seconds_count") == 2
    assert moved("tcpsched_queue_latency_seconds_count") == 2
    assert after["tcpsched_journal_fsync_seconds_count"] > before[
        "tcpsched_journal_fsync_seconds_count"]
    assert after["tcpsched_is_leader"] == 1 and after["tcpsched_workers{state=alive}"] == 1
    assert after["tcpsched_connections{role=worker}"] == 1
    assert after["tcpsched_jobs{state=failed}"] >= 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed "
                    "(apt-get install prometheus)")
def test_metrics_pass_promtool(site: Site) -> None:
    """`promtool check metrics` finds nothing wrong with /metrics."""
    _, _, text = request("GET", f"{site.base}/metrics")
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed "
                    "(apt-get install prometheus)")
def test_real_prometheus_scrapes(site: Site, tmp_path: Path) -> None:
    """A real Prometheus server on loopback scrapes /metrics: the target is up and a tcpsched
    metric has a value in its query API."""
    port = free_port()
    target = site.base.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      "scrape_configs:\n  - job_name: tcpsched\n    static_configs:\n"
                      f"      - targets: ['{target}']\n")
    with open(tmp_path / "prometheus.log", "wb") as log:
        server = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        api = f"http://127.0.0.1:{port}/api/v1"
        submit(site.base, {"shell": "true"})

        def scraped() -> list | None:
            try:
                status, _, value = request("GET", f"{api}/query?query=tcpsched_submits_total",
                                           timeout=5)
            except OSError:
                return None
            result = value["data"]["result"] if status == 200 else []
            return result or None

        (series,) = wait_until(scraped, WAIT_S, interval=0.3, what="Prometheus to scrape")
        assert float(series["value"][1]) >= 1
        assert series["metric"]["job"] == "tcpsched"
        targets = get(f"{api}/targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- security and the follower's redirect ------------------------------------------------------


def test_token_required(procs: ProcessGroup, tmp_path: Path) -> None:
    """With a token, a request without `Authorization: Bearer TOKEN` (or with a wrong one) is
    401; with it, 200; POST /login with the token sets a cookie the dashboard then uses."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    port = free_port()
    procs.coordinator(extra=["--http", f"127.0.0.1:{port}", "--token-file", str(token_file)])
    base = f"http://127.0.0.1:{port}"
    wait_http(base)
    status, _, value = request("GET", f"{base}/api/stats")
    assert status == 401 and value["kind"] == "unauthorized"
    assert request("GET", f"{base}/api/stats",
                   headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request("GET", f"{base}/metrics")[0] == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    wait_until(lambda: request("GET", f"{base}/api/stats", headers=ok)[0] == 200, WAIT_S,
               what="the leader to answer")
    status, headers, _ = request("POST", f"{base}/login", headers={
        "Content-Type": "application/x-www-form-urlencoded"}, raw=b"token=s3cret-token")
    assert status == 302
    cookie = headers["set-cookie"].split(";")[0]
    assert request("GET", f"{base}/api/stats", headers={"Cookie": cookie})[0] == 200
    assert request("GET", f"{base}/", headers={"Cookie": "tcpsched_token=nope"})[0] == 302


def test_public_http_bind_refused(tmp_path: Path) -> None:
    """--http on a non-loopback address without a token or mutual TLS: one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "tcpsched.coordinator", "--http", "0.0.0.0:0",
         "--data-dir", str(tmp_path / "c1"), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve HTTP on 0.0.0.0" in lines[0]


def test_follower_redirects_to_leader(procs: ProcessGroup) -> None:
    """With three coordinators, a follower answers REST calls and `/` with 307 to the
    leader's HTTP address; the leader serves the redirected request."""
    tcp = {i: free_port() for i in (1, 2, 3)}
    web = {i: free_port() for i in (1, 2, 3)}
    addresses = {i: f"127.0.0.1:{p}" for i, p in tcp.items()}
    for i in (1, 2, 3):
        peer_http = [arg for j in (1, 2, 3) if j != i
                     for arg in ("--peer-http", f"{j}@127.0.0.1:{web[j]}")]
        procs.peer(i, addresses, extra=["--http", f"127.0.0.1:{web[i]}", *peer_http])
    client = connect(",".join(addresses.values()))
    leader = wait_until(lambda: client.leader()["id"], WAIT_S, what="a leader")
    client.close()
    for i in (1, 2, 3):
        wait_http(f"http://127.0.0.1:{web[i]}")
    follower = next(i for i in (1, 2, 3) if i != leader)
    leader_base = f"http://127.0.0.1:{web[leader]}"

    def redirected(method: str, path: str, body: object = None) -> str | None:
        status, headers, _ = request(method, f"http://127.0.0.1:{web[follower]}{path}", body)
        return headers.get("location") if status == 307 else None

    location = wait_until(lambda: redirected("GET", "/api/stats?x=1"), WAIT_S,
                          what="the follower to redirect")
    assert location == f"{leader_base}/api/stats?x=1"
    assert redirected("GET", "/") == f"{leader_base}/"
    target = redirected("POST", "/api/jobs", {"shell": "true"})
    assert target == f"{leader_base}/api/jobs"
    status, _, value = request("POST", target, {"shell": "true"})
    assert status == 201 and value["id"]
    # A follower's own metrics are its own: never redirected.
    status, _, text = request("GET", f"http://127.0.0.1:{web[follower]}/metrics")
    assert status == 200 and "tcpsched_is_leader 0.0" in text


def test_busy_http_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """--http on a port another socket holds: the coordinator says so in one line, exits 1."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tcpsched.coordinator", "--http", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path / "c1"), "--listen", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"cannot serve HTTP on 127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mutual_tls_https(procs: ProcessGroup, tmp_path: Path) -> None:
    """With --tls-cert/--tls-key/--tls-ca the HTTP port is HTTPS requiring a client
    certificate from the CA: with one the API answers, without one the TLS handshake fails."""
    import ssl

    from tests.integration.test_security import make_certificates

    certs = tmp_path / "certs"
    certs.mkdir()
    c = make_certificates(certs)
    port = free_port()
    procs.coordinator(extra=["--http", f"127.0.0.1:{port}", "--tls-cert", str(c["coordinator"]),
                             "--tls-key", str(certs / "coordinator.key"), "--tls-ca",
                             str(c["ca"])])
    base = f"https://127.0.0.1:{port}"
    with_cert = ssl.create_default_context(cafile=str(c["ca"]))
    with_cert.check_hostname = False
    with_cert.load_cert_chain(str(c["client"]), str(certs / "client.key"))
    without = ssl.create_default_context(cafile=str(c["ca"]))
    without.check_hostname = False

    def answered() -> bool:
        try:
            return request("GET", f"{base}/api/leader", context=with_cert, timeout=5)[0] == 200
        except OSError:
            return False

    wait_until(answered, WAIT_S, what="the HTTPS API")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request("GET", f"{base}/api/leader", context=without, timeout=5)


def test_sigterm_with_open_streams_exits_0(procs: ProcessGroup) -> None:
    """A coordinator with a dashboard stream open stops on SIGTERM as usual (exit 0), ending
    the stream rather than waiting on it."""
    port = free_port()
    coordinator, _ = procs.coordinator(extra=["--http", f"127.0.0.1:{port}"])
    base = f"http://127.0.0.1:{port}"
    wait_http(base)
    stream = events(f"{base}/api/events")
    assert next(stream)[0] == "history"
    wait_until(lambda: next(stream)[0] == "snapshot", WAIT_S, what="a snapshot")
    assert procs.stop(coordinator, grace=20.0) == 0
    rest = list(stream)  # ends (the server closed it), rather than hang until the timeout
    assert all(kind == "snapshot" for kind, _ in rest)


def test_live_line_arrives_while_the_job_runs(site: Site, tmp_path: Path) -> None:
    """A job printing a line per 100 ms: its first line comes over SSE while it still runs
    (it cannot end before the test creates the gate file), then `end` with the record."""
    gate = tmp_path / "gate"
    job_id = submit(site.base, {"shell": f"echo first; until [ -e {gate} ]; do echo tick; "
                                         "sleep 0.1; done; echo last"})
    stream = events(f"{site.base}/api/jobs/{job_id}/logs")
    text = ""
    for kind, data in stream:
        assert kind == "output", (kind, data)
        text += data.get("stdout", "")
        if "first\n" in text:
            assert data["state"] == "running" and data["attempt"] == 1
            break
    gate.touch()
    rest = list(stream)
    assert rest[-1][0] == "end" and rest[-1][1]["state"] == "succeeded"
    text += "".join(d.get("stdout", "") for k, d in rest if k == "output")
    assert text == rest[-1][1]["stdout"] and text.endswith("last\n")


def test_logs_stream_announces_a_new_attempt(site: Site, tmp_path: Path) -> None:
    """A job failing its first attempt and retried: the stream sends `attempt` and the
    second attempt's output from its start."""
    mark = tmp_path / "tried"
    job_id = submit(site.base, {"shell": f"if [ -e {mark} ]; then echo second; else "
                                         f"touch {mark}; echo first; exit 3; fi",
                                "retries": 1})
    seen = list(events(f"{site.base}/api/jobs/{job_id}/logs"))
    assert seen[-1][0] == "end" and seen[-1][1]["state"] == "succeeded"
    announced = [d for k, d in seen if k == "attempt"]
    assert announced and announced[-1]["attempt"] == 2
    after = seen[[k for k, _ in seen].index("attempt") + 1:]
    assert "".join(d.get("stdout", "") for k, d in after if k == "output") == "second\n"


def test_logs_stream_of_unknown_job_is_404(site: Site) -> None:
    """The SSE logs of an unknown job are a JSON 404 before any stream opens."""
    status, _, value = request("GET", f"{site.base}/api/jobs/nope-nope/logs",
                               headers={"Accept": "text/event-stream"})
    assert status == 404 and value["kind"] == "not_found"


def test_retry_route(site: Site) -> None:
    """POST /api/jobs/{id}/retry requeues a failed job as a new attempt (its record); 409
    for a job that succeeded, 404 for an unknown one."""
    job_id = submit(site.base, {"shell": "exit 4"})
    wait_state(site.base, job_id, ("failed",))
    status, _, record = request("POST", f"{site.base}/api/jobs/{job_id}/retry")
    assert status == 200 and record["id"] == job_id and record["state"] == "pending"
    again = wait_until(lambda: (r := get(f"{site.base}/api/jobs/{job_id}"))["attempts"] == 2
                       and r["state"] == "failed" and r, WAIT_S, what="the second attempt")
    assert again["id"] == job_id
    ok = submit(site.base, {"shell": "true"})
    wait_state(site.base, ok, ("succeeded",))
    status, _, value = request("POST", f"{site.base}/api/jobs/{ok}/retry")
    assert status == 409 and "only failed or cancelled" in value["error"]
    status, _, value = request("POST", f"{site.base}/api/jobs/no-such-job/retry")
    assert status == 404 and value["kind"] == "not_found"


def test_tags_after_and_groups(site: Site) -> None:
    """POST /api/jobs takes `tags` and `after` (an unknown parent is 400 with the core's
    message) and `/children` finds the child; GET /api/jobs?group= lists a group,
    /api/groups/{group} sums it up."""
    parent = submit(site.base, {"shell": "echo parent", "group": "rest-g"})
    child = submit(site.base, {"shell": "echo child", "after": [parent], "group": "rest-g"})
    wait_state(site.base, child, ("succeeded",))
    assert get(f"{site.base}/api/jobs/{child}")["after"] == [parent]
    assert get(f"{site.base}/api/jobs/{parent}/children") == [
        {"id": child, "state": "succeeded"}]
    assert get(f"{site.base}/api/jobs/{child}/children") == []
    status, _, value = request("POST", f"{site.base}/api/jobs",
                               {"shell": "true", "after": ["no-such-parent"]})
    assert status == 400 and "no-such-parent" in value["error"]
    tagged = submit(site.base, {"shell": "true", "tags": ["gpu"]})
    assert get(f"{site.base}/api/jobs/{tagged}")["tags"] == ["gpu"]
    explained = get(f"{site.base}/api/jobs/{tagged}/explain")
    assert explained["state"] == "pending" and any("gpu" in r for r in explained["reasons"])
    request("POST", f"{site.base}/api/jobs/{tagged}/cancel")
    listing = get(f"{site.base}/api/jobs?group=rest-g")
    assert [r["id"] for r in listing["jobs"]] == [child, parent] and listing["next"] is None
    assert [r["id"] for r in get(f"{site.base}/api/jobs?group=rest-g&state=succeeded&limit=1"
                                 )["jobs"]] == [child]
    summary = get(f"{site.base}/api/groups/rest-g")
    assert summary["total"] == 2 and summary["done"] == 2 and summary["progress"] == 1.0
    assert summary["counts"]["succeeded"] == 2
    status, _, value = request("GET", f"{site.base}/api/groups/no-such-group")
    assert status == 404 and value["kind"] == "not_found"


def test_schedules_route(site: Site) -> None:
    """GET /api/schedules lists the schedules with their cron/every and next fire times."""
    from tcpsched.core.jobs import JobSpec

    client = connect(site.address)
    try:
        client.schedule_add("rest-nightly", JobSpec(kind="shell", command="true"),
                            cron="0 3 * * *")
    finally:
        client.close()
    (row,) = [s for s in get(f"{site.base}/api/schedules") if s["name"] == "rest-nightly"]
    assert row["cron"] == "0 3 * * *" and row["paused"] is False and row["next"]


def test_queue_full_is_429_with_retry_after(procs: ProcessGroup) -> None:
    """With --max-pending 1 and no worker, a second submit is 429 with Retry-After."""
    port = free_port()
    procs.coordinator(extra=["--http", f"127.0.0.1:{port}", "--max-pending", "1"])
    base = f"http://127.0.0.1:{port}"
    wait_http(base)
    wait_until(lambda: request("GET", f"{base}/api/stats")[0] == 200, WAIT_S,
               what="the leader to answer")
    submit(base, {"shell": "true"})
    status, headers, value = request("POST", f"{base}/api/jobs", {"shell": "true"})
    assert status == 429 and value["kind"] == "queue_full"
    assert int(headers["retry-after"]) >= 1 and value["retry_after"] > 0
    scraped = scrape(base)
    assert scraped["tcpsched_refused_submits_total"] == 1
    assert scraped["tcpsched_refused_jobs_total"] == 1


def test_metrics_schedules_followers_breaker(site: Site, tmp_path: Path) -> None:
    """/metrics counts schedule fires, shows the followers of live output while an SSE
    stream is open, and has the breaker and backpressure families."""
    from tcpsched.core.jobs import JobSpec

    client = connect(site.address)
    try:
        client.schedule_add("rest-metrics", JobSpec(kind="shell", command="true"), every=1.0)
        wait_until(lambda: scrape(site.base)["tcpsched_schedule_ticks_total{outcome=fired}"]
                   >= 1, WAIT_S, what="a schedule fire in /metrics")
        client.schedule_remove("rest-metrics")
    finally:
        client.close()
    gate = tmp_path / "gate"
    job_id = submit(site.base, {"shell": f"echo on; until [ -e {gate} ]; do sleep 0.1; done"})
    wait_state(site.base, job_id, ("running",))
    stream = events(f"{site.base}/api/jobs/{job_id}/logs")
    next(stream)
    try:
        wait_until(lambda: scrape(site.base)["tcpsched_live_output_followers"] >= 1, WAIT_S,
                   what="a follower in /metrics")
    finally:
        gate.touch()
        stream.close()
    scraped = scrape(site.base)
    for name in ("tcpsched_breaker_trips_total", "tcpsched_workers_tripped",
                 "tcpsched_refused_submits_total", "tcpsched_refused_jobs_total",
                 "tcpsched_schedule_ticks_total{outcome=skipped}"):
        assert name in scraped, name
