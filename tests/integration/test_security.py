"""Who gets in, and what abuse does to a live coordinator: real processes on loopback.

Each test pins one promise of the security issue: a wrong or missing token is refused (CLI
exit 4, a worker never registers and exits 4), authentication is mutual, a TLS cluster works
end to end with certificates made here by `openssl` while plain and certificate-less dialers
are refused, a coordinator or worker on a public address without protection refuses to start
(nothing is ever sent off the machine), idle connections are closed but a client waiting on a
`wait` is not, and a storm of malformed frames and stalled connections (scripts/abuse.py)
changes no job and leaves the coordinator's memory near where it was.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tcpsched import Client
from tcpsched.config import TlsSettings
from tcpsched.core import messages as m
from tcpsched.runtime.handshake import dial
from tcpsched.testing.processes import ProcessGroup, free_port, wait_for_workers
from tests.conftest import connect

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0


def cli(address: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcpsched", "--coordinators", address,
                           "--connect-timeout", "3", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, cwd=cwd, env=_clean_env(), check=False)


def _clean_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture
def token_files(tmp_path: Path) -> tuple[Path, Path]:
    good, bad = tmp_path / "token", tmp_path / "wrong-token"
    good.write_text("s3cret-token-for-tests\n")
    bad.write_text("not-the-token\n")
    return good, bad


def secured(procs: ProcessGroup, token: Path, extra: Sequence[str] = ()) -> tuple[Any, str]:
    return procs.coordinator(extra=["--token-file", str(token), *extra])


# -- tokens -----------------------------------------------------------------------------------


def test_wrong_token_is_refused_with_exit_4(procs: ProcessGroup,
                                            token_files: tuple[Path, Path]) -> None:
    """A CLI with the wrong token gets one clear line and exit 4; the right one gets in."""
    good, bad = token_files
    _coordinator, address = secured(procs, good)
    connect(address, token=good.read_bytes().strip()).close()
    done = cli(address, "--token-file", str(bad), "stats")
    assert done.returncode == 4
    assert "wrong token" in one_error_line(done)
    assert cli(address, "--token-file", str(good), "stats").returncode == 0


def test_worker_with_wrong_token_never_registers_and_exits_4(
        procs: ProcessGroup, token_files: tuple[Path, Path]) -> None:
    """A worker with a wrong token exits 4 and the coordinator never lists it."""
    good, bad = token_files
    coordinator, address = secured(procs, good)
    worker = procs.worker(address, "intruder", extra=["--token-file", str(bad)])
    assert worker.wait(EXIT_TIMEOUT_S) == 4
    assert "wrong token" in worker.log()
    with connect(address, token=good.read_bytes().strip()) as client:
        assert client.workers() == []
    assert "intruder" in coordinator.log() and "wrong token" in coordinator.log()


def test_without_the_token_no_job_runs(procs: ProcessGroup, tmp_path: Path,
                                       token_files: tuple[Path, Path]) -> None:
    """Token on the coordinator, none on worker and client: nothing is queued or run."""
    good, _bad = token_files
    _coordinator, address = secured(procs, good)
    marker = tmp_path / "ran"
    done = cli(address, "submit", "--shell", f"touch {marker}")
    assert done.returncode == 4 and "requires a token" in one_error_line(done)
    with connect(address, token=good.read_bytes().strip()) as client:
        # A job queued by someone who may; a worker without the token must not get it.
        job_id = client.submit_shell(f"touch {marker}")
        worker = procs.worker(address, "tokenless")
        assert worker.wait(EXIT_TIMEOUT_S) == 4
        stats = client.stats()
        assert stats["submitted"] == 1 and stats["workers_alive"] == 0
        assert client.status(job_id)["state"] == "pending"
        assert client.workers() == []
    assert not marker.exists()


def test_client_with_token_refuses_a_coordinator_without_one(
        procs: ProcessGroup, token_files: tuple[Path, Path]) -> None:
    """Mutual: a dialer holding a token will not talk to a coordinator that cannot prove it."""
    good, _bad = token_files
    _coordinator, address = procs.coordinator()
    connect(address).close()
    done = cli(address, "--token-file", str(good), "submit", "--shell", "true")
    assert done.returncode == 4
    assert "no token configured" in one_error_line(done)
    worker = procs.worker(address, "careful", extra=["--token-file", str(good)])
    assert worker.wait(EXIT_TIMEOUT_S) == 4


# -- protected by default --------------------------------------------------------------------


def public_address() -> str:
    """This machine's non-loopback address if it has one (never contacted), else 0.0.0.0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it picks a route
            host = probe.getsockname()[0]
        except OSError:
            host = "0.0.0.0"
    return "0.0.0.0" if host.startswith("127.") else host


@pytest.mark.parametrize("host", [public_address(), "0.0.0.0"])
def test_public_bind_without_protection_refuses_to_start(tmp_path: Path, host: str) -> None:
    """A coordinator on a non-loopback address with neither token nor mutual TLS exits 2."""
    port = free_port()
    for extra in ([], ["--tls-cert", "c.pem", "--tls-key", "k.pem"]):  # TLS without a CA
        done = subprocess.run(
            [sys.executable, "-m", "tcpsched.coordinator", "--listen", f"{host}:{port}",
             "--data-dir", str(tmp_path / "c1"), *extra],
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=_clean_env(),
            cwd=tmp_path, check=False)
        assert done.returncode == 2
        assert "refusing to listen" in one_error_line(done)


def test_worker_refuses_an_unprotected_remote_coordinator(tmp_path: Path) -> None:
    """A worker told to take jobs from a non-loopback address without a token exits 2."""
    address = f"{public_address()}:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "tcpsched.worker", "--coordinators", address],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=_clean_env(), cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert "refusing to take jobs" in one_error_line(done)


# -- TLS -----------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and two certificates it signs (coordinator, client), with `openssl`."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True,
                       timeout=RUN_TIMEOUT_S)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tcpsched test CA")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("coordinator", "client"):
        run("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    # A CA nobody trusts, and a client certificate it signed.
    run("req", "-x509", *curve, "-keyout", "rogue-ca.key", "-out", "rogue-ca.pem",
        "-days", "2", "-subj", "/CN=rogue CA")
    run("req", *curve, "-keyout", "rogue.key", "-out", "rogue.csr", "-subj", "/CN=rogue")
    run("x509", "-req", "-in", "rogue.csr", "-CA", "rogue-ca.pem", "-CAkey", "rogue-ca.key",
        "-CAcreateserial", "-out", "rogue.pem", "-days", "2")
    # A self-signed client certificate, and one from the right CA that has expired.
    run("req", "-x509", *curve, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
        "-subj", "/CN=self")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "expired.pem", "-days", "-1", "-extfile", "san.ext")
    return {p.stem if p.suffix == ".pem" else p.name: p for p in directory.iterdir()}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_cluster_works_and_plain_or_uncertified_dialers_are_refused(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """Mutual TLS end to end; a plain client, one without a certificate, and one with a
    certificate from another CA all fail and run nothing."""
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    c = make_certificates(certs_dir)
    server_tls = ["--tls-cert", str(c["coordinator"]), "--tls-key",
                  str(certs_dir / "coordinator.key"), "--tls-ca", str(c["ca"])]
    client_tls = ["--tls-cert", str(c["client"]), "--tls-key", str(certs_dir / "client.key"),
                  "--tls-ca", str(c["ca"])]
    coordinator, address = procs.coordinator(extra=server_tls)
    procs.worker(address, "tls-worker", extra=client_tls)
    tls = TlsSettings(cert=str(c["client"]), key=str(certs_dir / "client.key"), ca=str(c["ca"]))
    with connect(address, tls=tls) as client:
        wait_for_workers(client, ["tls-worker"], timeout=30)
        done = cli(address, *client_tls, "--json", "submit", "--shell", "echo over tls")
        assert done.returncode == 0, done.stderr
        job_id = json.loads(done.stdout)["id"]
        waited = cli(address, *client_tls, "--json", "wait", job_id, "--timeout", "60")
        assert waited.returncode == 0, waited.stderr
        assert json.loads(waited.stdout)[0]["stdout"] == "over tls\n"

        plain = cli(address, "submit", "--shell", "echo plain")
        assert plain.returncode == 4 and "requires TLS" in one_error_line(plain)
        no_cert = cli(address, "--tls-ca", str(c["ca"]), "submit", "--shell", "echo no-cert")
        assert no_cert.returncode == 4
        assert "without a client certificate" in one_error_line(no_cert)
        # Refused certificates: another CA's, a self-signed one, an expired one. Each is
        # exit 4 naming the certificate, not "no coordinator reachable".
        for name, key in (("rogue", "rogue.key"), ("self", "self.key"),
                          ("expired", "client.key")):
            refused = cli(address, "--tls-cert", str(c[name]), "--tls-key",
                          str(certs_dir / key), "--tls-ca", str(c["ca"]), "submit",
                          "--shell", f"echo {name}")
            assert refused.returncode == 4, (name, refused.stderr)
            assert f"refused our client certificate {c[name]}" in one_error_line(refused)
        untrusted = cli(address, "--tls-ca", str(c["rogue-ca"]), "stats")  # wrong server CA
        assert untrusted.returncode == 4 and "certificate" in one_error_line(untrusted)
        assert client.stats()["submitted"] == 1  # only the job submitted over mutual TLS
    assert "tls=mutual" in coordinator.log()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_dialer_to_a_plain_coordinator_exits_4_saying_so(procs: ProcessGroup,
                                                              tmp_path: Path) -> None:
    """A TLS client of a coordinator without TLS is told the coordinator serves plain TCP
    (exit 4), not that none is reachable."""
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    c = make_certificates(certs_dir)
    _coordinator, address = procs.coordinator()
    done = cli(address, "--tls-cert", str(c["client"]), "--tls-key",
               str(certs_dir / "client.key"), "--tls-ca", str(c["ca"]), "stats")
    assert done.returncode == 4, done.stderr
    assert "serves plain TCP, not TLS" in one_error_line(done)


# -- idle connections -------------------------------------------------------------------------


async def _authenticated(address: str) -> Any:
    conn, _welcome = await dial(address, "client", "idler", None, m.COORDINATOR_TO_CLIENT,
                                timeout_s=30)
    return conn


async def _wait_closed_by_peer(conn: Any, timeout_s: float = 30.0) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            while await conn.reader.read(65536):
                pass
    except OSError:
        pass
    return True


def test_idle_connections_close_but_a_pending_wait_keeps_its_client(
        procs: ProcessGroup) -> None:
    """With --idle-timeout 1: a silent client is closed; one whose wait lasts 4 s is not,
    gets its reply, and is closed once idle again."""
    _coordinator, address = procs.coordinator(extra=["--idle-timeout", "1"])
    with connect(address) as client:
        job_id = client.submit_shell("true", delay=3600)  # pending for the whole test

    async def scenario() -> tuple[bool, Any, bool]:
        silent = await _authenticated(address)
        waiting = await _authenticated(address)
        waiting.send(m.Wait(req_id=1, job_ids=(job_id,), timeout=4.0))
        silent_closed = await _wait_closed_by_peer(silent)
        reply = await asyncio.wait_for(waiting.receive(), 30)  # arrives after 4 s, > 1 s idle
        waiting_closed_after = await _wait_closed_by_peer(waiting)
        silent.close()
        waiting.close()
        return silent_closed, reply, waiting_closed_after

    silent_closed, reply, closed_after = asyncio.run(scenario())
    assert silent_closed
    assert isinstance(reply, m.Reply) and reply.value[0]["state"] == "pending"
    assert closed_after
    with connect(address) as client:
        assert client.stats()["idle_closed"] >= 2


# -- abuse --------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_abuse_changes_no_job_and_memory_returns(procs: ProcessGroup,
                                                 token_files: tuple[Path, Path]) -> None:
    """10,000 malformed frames and 500 stalled connections while a client submits and a
    worker runs jobs: all closed by the coordinator, nothing changed, memory within 20%."""
    good, _bad = token_files
    coordinator, address = secured(procs, good, [
        "--handshake-timeout", "1", "--max-unauthenticated", "1000",
        "--max-unauthenticated-per-source", "1000",
        "--max-output-buffer", str(1024 * 1024), "--idle-timeout", "5",
        "--heartbeat-timeout", "5",
    ])
    procs.worker(address, "steady", slots=4, extra=["--token-file", str(good)])
    with connect(address, token=good.read_bytes().strip()) as client:
        wait_for_workers(client, ["steady"], timeout=30)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "abuse.py"), "--coordinator", address,
         "--pid", str(coordinator.pid), "--token-file", str(good), "--frames", "10000",
         "--stalled", "500", "--json"],
        capture_output=True, text=True, timeout=280, env=_clean_env(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert figures["malformed_inputs_tried"] == 10_000
    assert figures["malformed_closed_by_coordinator"] == 10_000
    assert figures["stalled_connections"] == 500
    assert figures["stalled_closed_by_coordinator"] == 500
    assert figures["non_reading_clients_disconnected"] == figures["non_reading_clients"] > 0
    assert figures["jobs_served_during_abuse"] > 0 and figures["fresh_client_served"]
    assert figures["pre_existing_jobs_changed"] == [] and figures["submitted_by_others"] == 0
    assert figures["rss_after_kib"] <= 1.2 * figures["rss_before_kib"], figures
    counters = figures["coordinator_counters"]
    assert counters["handshake_timeouts"] >= 500
    assert counters["protocol_errors"] + counters["auth_failures"] >= 9_000
    assert coordinator.alive()
    assert "before authentication" in coordinator.log()  # reasons are logged (rate-limited)
    assert rss_kib(coordinator.pid) <= 1.2 * figures["rss_before_kib"]


def test_client_api_takes_tls_settings() -> None:
    """Client(tls=TlsSettings()) with nothing set is plain TCP; an unreadable CA is one line."""
    assert Client("127.0.0.1:1", tls=TlsSettings()).ssl_context is None
    from tcpsched.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot load TLS CA"):
        Client("127.0.0.1:1", tls=TlsSettings(ca="/nonexistent/ca.pem"))
