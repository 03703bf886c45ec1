"""Abuse a live coordinator with malformed frames and stalled connections, and measure.

While a client keeps submitting jobs (and a worker keeps running them), this opens
`--frames` connections that each send one malformed input (before and after authenticating:
garbage, zero and huge lengths, truncated and byte-by-byte frames, wrong shapes, unknown
types, out-of-order messages, deep nesting, huge maps, invalid UTF-8, a wrong token, replayed
and truncated HMAC answers, results for jobs this connection never ran), plus `--stalled`
connections that never finish their handshake (silent, a partial header, a partial frame, a
slowloris dribble), plus `--non-readers` authenticated clients that ask and never read. Each
must be closed by the coordinator. Then it checks that the coordinator still serves, that the
jobs that existed before are unchanged, and how its memory (VmRSS) compares with before:
`rss_closed_kib` as the last connection closes, `rss_after_kib` SETTLE_S later (the coordinator
returns freed heap at its next sweep).

Without `--coordinator` it starts its own coordinator and worker on loopback (token, 1 s
handshake deadline, handshake slots for every stalled connection, 1 MiB output bound, 5 s idle
timeout, 5 s heartbeat timeout so a CPU-starved 2-core machine does not declare the worker
dead) and stops them at the end. Malformed frames after authenticating are sent sealed, so
they get past the MAC and meet the decoder.

    python scripts/abuse.py [--frames 10000] [--stalled 500] [--non-readers 4] [--json]
    python scripts/abuse.py --coordinator 127.0.0.1:7001 --pid PID --token-file F --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import msgpack

from tcpsched import Client
from tcpsched.config import parse_address
from tcpsched.core import auth
from tcpsched.core import messages as m
from tcpsched.core.codec import HEADER, encode
from tcpsched.errors import TcpschedError
from tcpsched.runtime.handshake import dial
from tcpsched.testing.processes import ProcessGroup, free_port

CLOSE_WAIT_S = 30.0  # generous: a loaded 2-core machine; the deadline under test is ~1 s
SUBMIT_PACE_S = 0.02
# The coordinator hands freed heap back at its next connection sweep, at most a second after
# the connections close (tcpsched/runtime/heap.py): memory is read again after this long.
SETTLE_S = 2.5
ROLE_ALLOWED = {"client": m.COORDINATOR_TO_CLIENT, "worker": m.COORDINATOR_TO_WORKER}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def packed(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


@attrs.frozen
class Case:
    """One malformed input: the bytes, when to send them, and whether they end mid-frame."""

    name: str
    data: bytes
    phase: str  # "open": before any handshake; "client"/"worker": after authenticating
    incomplete: bool = False  # ends inside a frame: we half-close so the coordinator sees it
    byte_by_byte: bool = False
    hmac: str = ""  # "replay", "truncated" or "wrong": an answer to a real challenge


def _hello(rng: random.Random, role: str = "client") -> m.Hello:
    return m.Hello(version=m.PROTOCOL_VERSION, role=role, name=f"abuser-{rng.randrange(10**6)}",
                   nonce=rng.randbytes(32))


def pre_auth_cases(rng: random.Random) -> list[Case]:
    hello = encode(_hello(rng))
    deep = b"\x91" * 5000 + b"\xc0"
    return [
        Case("garbage", b"\x00\x00\x00\x08" + rng.randbytes(8), "open"),
        Case("zero length", b"\x00\x00\x00\x00", "open"),
        Case("huge length", b"\xff\xff\xff\xff", "open"),
        Case("over handshake limit", struct.pack(">I", 4097) + b"\x80", "open"),
        Case("truncated hello", hello[: rng.randrange(1, len(hello))], "open", incomplete=True),
        Case("byte by byte garbage", packed({"t": "hello", "version": "one"}), "open",
             byte_by_byte=True),
        Case("wrong shape", packed({"t": "hello", "version": 1, "role": 5, "name": [],
                                    "nonce": "x"}), "open"),
        Case("not a map", packed([1, 2, 3]), "open"),
        Case("unknown type", packed({"t": "exec", "cmd": "rm -rf /"}), "open"),
        Case("auth before hello", encode(m.Auth(mac=b"\x00" * 32)), "open"),
        Case("welcome from dialer", encode(m.Welcome(node="x", epoch=1)), "open"),
        Case("request before auth", packed({"t": "stats", "req_id": 1}), "open"),
        Case("deep nesting", frame(b"\x81\xa1t" + deep), "open"),
        Case("huge map", frame(b"\xdf\xff\xff\xff\xff"), "open"),
        Case("invalid utf-8", frame(b"\x81\xa1t\xa2\xff\xfe"), "open"),
        Case("ext type", frame(b"\x81\xa1t\xd4\x05\x00"), "open"),
        Case("replayed hmac", b"", "open", hmac="replay"),
        Case("truncated hmac", b"", "open", hmac="truncated"),
        Case("wrong token", b"", "open", hmac="wrong"),
    ]


def post_auth_cases(rng: random.Random, job_ids: list[str]) -> list[Case]:
    victim = rng.choice(job_ids) if job_ids else "000000000000"
    deep_args = b"\x91" * 100 + b"\xc0"
    bad_spec = {"kind": "evil", "command": "x"}
    return [
        Case("submit wrong shape", packed({"t": "submit", "req_id": 1, "jobs": "x"}), "client"),
        Case("submit bad spec", packed({"t": "submit", "req_id": 1, "jobs": [bad_spec]}),
             "client"),
        Case("wait nan", packed({"t": "wait", "req_id": 1, "job_ids": [victim],
                                 "timeout": float("nan")}), "client"),
        Case("unknown type", packed({"t": "pickle", "req_id": 1}), "client"),
        Case("hello again", encode(_hello(rng)), "client"),
        Case("register as client", encode(m.Register(name="x", slots=1)), "client"),
        Case("deep args", frame(b"\x83\xa1t\xa6submit\xa6req_id\x01\xa4jobs" + deep_args),
             "client"),
        Case("huge array", frame(b"\x82\xa1t\xa6status\xa7job_ids\xdd\xff\xff\xff\xff"),
             "client"),
        Case("invalid utf-8 command", frame(
            b"\x83\xa1t\xa6cancel\xa6req_id\x01\xa6job_id\xa3\xff\xfe\xfd"), "client"),
        Case("zero length", b"\x00\x00\x00\x00", "client"),
        Case("huge length", b"\xff\xff\xff\xff", "worker"),
        Case("truncated frame", encode(m.Stats(req_id=1))[:-1], "client", incomplete=True),
        Case("result before register", encode(m.Result(
            job_id=victim, attempt=1, state="failed", exit_code=1, result=None, stdout="",
            stderr="", error="forged", started_at=0.0, finished_at=0.0)), "worker"),
        Case("heartbeat before register", encode(m.Heartbeat(
            running=(m.AttemptRef(job_id=victim, attempt=1),))), "worker"),
        Case("register slots 0", packed({"t": "register", "name": "x", "slots": 0}), "worker"),
        Case("request from worker", encode(m.Cancel(req_id=1, job_id=victim)), "worker"),
    ]


@attrs.define
class Tally:
    tried: int = 0
    closed_by_server: int = 0
    not_closed: int = 0
    by_case: dict[str, int] = attrs.field(factory=dict)
    failures: list[str] = attrs.field(factory=list)


async def _await_close(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True once the coordinator closes (EOF or reset); False if it keeps us past timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except OSError:
        pass  # a reset is a close too (aborted connections)
    return True


async def _open_case(address: str, case: Case, token: bytes | None,
                     rng: random.Random) -> asyncio.StreamReader:
    host, port = parse_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    if case.hmac:
        hello = _hello(rng)
        writer.write(encode(hello))
        header = await reader.readexactly(4)
        body = await reader.readexactly(HEADER.unpack(header)[0])
        challenge = msgpack.unpackb(body, raw=False)
        listener_nonce = challenge.get("nonce", b"\x00" * 32)
        key = token or b"none"
        if case.hmac == "replay":  # right token, but the answer to an earlier challenge
            mac = auth.dialer_mac(key, hello.role, hello.name, hello.nonce, rng.randbytes(32))
        elif case.hmac == "truncated":
            mac = auth.dialer_mac(key, hello.role, hello.name, hello.nonce, listener_nonce)[:16]
        else:
            mac = auth.dialer_mac(b"wrong" + key, hello.role, hello.name, hello.nonce,
                                  listener_nonce)
        writer.write(encode(m.Auth(mac=mac)))
    elif case.byte_by_byte:
        for i in range(len(case.data)):
            writer.write(case.data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
    else:
        writer.write(case.data)
    if case.incomplete:
        writer.write_eof()
    return reader


async def _authenticated_case(address: str, case: Case, token: bytes | None,
                              rng: random.Random) -> asyncio.StreamReader:
    conn, _welcome = await dial(address, case.phase, f"abuser-{rng.randrange(10**6)}", token,
                                ROLE_ALLOWED[case.phase], timeout_s=CLOSE_WAIT_S)
    conn.send_bytes(case.data)  # sealed with the session key, so the decoder gets to see it
    if case.incomplete:
        conn.writer.write_eof()
    return conn.reader


async def malformed(address: str, token: bytes | None, count: int, *, concurrency: int,
                    job_ids: list[str], seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    cases = pre_auth_cases(rng) + post_auth_cases(rng, job_ids)
    if token is None:
        cases = [c for c in cases if not c.hmac]
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(cases[i % len(cases)])

    async def one(case: Case) -> None:
        opener = _open_case if case.phase == "open" else _authenticated_case
        try:
            reader = await opener(address, case, token, rng)
        except (OSError, TcpschedError, asyncio.IncompleteReadError) as exc:
            # Refused while connecting (e.g. closed at once): it did not get through, which
            # is what we want, but say so in the figures.
            tally.failures.append(f"{case.name}: {type(exc).__name__}: {exc}"[:200])
            tally.closed_by_server += 1
            return
        if await _await_close(reader, CLOSE_WAIT_S):
            tally.closed_by_server += 1
        else:
            tally.not_closed += 1
            tally.failures.append(f"{case.name}: still open after {CLOSE_WAIT_S}s")

    async def loop() -> None:
        while not queue.empty():
            case = queue.get_nowait()
            tally.tried += 1
            tally.by_case[case.name] = tally.by_case.get(case.name, 0) + 1
            await one(case)

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(loop())
    return tally


async def stalled(address: str, count: int, seed: int) -> Tally:
    """`count` connections at once that never complete a handshake; the deadline ends them."""
    rng = random.Random(seed)
    host, port = parse_address(address)
    tally = Tally()
    hello = encode(_hello(rng))

    async def one(i: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            tally.failures.append(f"connect: {exc}")
            return
        tally.tried += 1
        kind = i % 4
        with contextlib.suppress(OSError):
            if kind == 1:
                writer.write(hello[:2])  # half a header
            elif kind == 2:
                writer.write(hello[:10])  # a header and a bit of the body
        if kind == 3:  # slowloris: a byte now and then, never the whole hello
            closed = asyncio.ensure_future(_await_close(reader, CLOSE_WAIT_S))
            for b in range(len(hello) - 1):
                if closed.done():
                    break
                with contextlib.suppress(OSError):
                    writer.write(hello[b : b + 1])
                await asyncio.wait([closed], timeout=0.2)
            ok = await closed
        else:
            ok = await _await_close(reader, CLOSE_WAIT_S)
        if ok:
            tally.closed_by_server += 1
        else:
            tally.not_closed += 1
        writer.close()

    async with asyncio.TaskGroup() as tasks:
        for i in range(count):
            tasks.create_task(one(i))
    return tally


async def non_readers(address: str, token: bytes | None, count: int) -> Tally:
    """Authenticated clients that ask for the job list over and over and never read."""
    tally = Tally()

    async def one(i: int) -> None:
        conn, _welcome = await dial(address, "client", f"non-reader-{i}", token,
                                    m.COORDINATOR_TO_CLIENT, timeout_s=CLOSE_WAIT_S)
        conn.reader._transport.pause_reading()  # type: ignore[attr-defined]
        tally.tried += 1
        request = encode(m.ListJobs(req_id=1, limit=10_000)) * 64
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                while True:
                    conn.writer.write(request)
                    await conn.writer.drain()
        except OSError:
            tally.closed_by_server += 1  # the coordinator gave up on us
        except TimeoutError:
            tally.not_closed += 1
        conn.writer.transport.abort()

    async with asyncio.TaskGroup() as tasks:
        for i in range(count):
            tasks.create_task(one(i))
    return tally


async def warm_up(address: str, token: bytes | None, count: int) -> None:
    """The baseline is a coordinator that has served a burst of `count` legitimate clients at
    once: holding that many connections is what it is built for, and the memory for them
    stays with the allocator afterwards. Abuse must not cost more than such a burst."""

    async def one(i: int) -> None:
        async with Client(address, token, connect_timeout=60.0, name=f"warm-{i}") as c:
            await c.leader()
            await c.list(limit=10)

    async with asyncio.TaskGroup() as tasks:
        for i in range(count):
            tasks.create_task(one(i))


async def run(address: str, pid: int, token: bytes | None, *, frames: int, stalled_count: int,
              readers: int, concurrency: int, seed: int, warmup_clients: int
              ) -> dict[str, Any]:
    async with Client(address, token, connect_timeout=30.0) as client:
        # Jobs that exist before the abuse: finished ones, and delayed ones still pending.
        done_ids = await client.map("operator:neg", range(20))
        await client.gather(done_ids, timeout=120)
        pending_ids = [await client.submit_shell("echo later", delay=3600) for _ in range(5)]
        before = {j: await client.status(j) for j in done_ids + pending_ids}
        stats_before = await client.stats()
        cold = rss_kib(pid)
        await warm_up(address, token, warmup_clients)
        baseline = rss_kib(pid)
        peak = baseline
        served = 0

        async def keep_submitting(stop: asyncio.Event) -> None:
            """One job at a time, paced: the coordinator must keep serving, and the finished
            jobs it keeps (legitimately) must not swamp the memory figure."""
            nonlocal served
            while not stop.is_set():
                job_id = await client.submit_call("operator:neg", served)
                record = await client.wait(job_id, timeout=120)
                if record["state"] != "succeeded" or record["result"] != -served:
                    raise RuntimeError(f"job {job_id} went wrong during the abuse: {record}")
                served += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SUBMIT_PACE_S):
                        await stop.wait()

        async def sample_memory(stop: asyncio.Event) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_kib(pid))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await stop.wait()

        started = time.monotonic()
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            submitter = tasks.create_task(keep_submitting(stop))
            tasks.create_task(sample_memory(stop))
            stall = tasks.create_task(stalled(address, stalled_count, seed))
            bad = tasks.create_task(malformed(address, token, frames, concurrency=concurrency,
                                              job_ids=done_ids + pending_ids, seed=seed))
            hog = tasks.create_task(non_readers(address, token, readers))
            await asyncio.wait([stall, bad, hog])
            stop.set()
            await submitter
        elapsed = time.monotonic() - started
        # The coordinator must still serve a brand-new client.
        async with Client(address, token, connect_timeout=30.0) as fresh:
            probe = await fresh.submit_call("operator:neg", 7)
            probe_ok = (await fresh.wait(probe, timeout=120))["result"] == -7
            after = {j: await fresh.status(j) for j in before}
            stats_after = await fresh.stats()
    rss_closed = rss_kib(pid)
    await asyncio.sleep(SETTLE_S)
    rss_after = rss_kib(pid)
    changed = sorted(j for j in before if before[j] != after[j])
    security = ("protocol_errors", "auth_failures", "handshake_timeouts", "refused_busy",
                "idle_closed")
    return {
        "malformed_inputs_tried": bad.result().tried,
        "malformed_closed_by_coordinator": bad.result().closed_by_server,
        "malformed_not_closed": bad.result().not_closed,
        "malformed_cases": len(bad.result().by_case),
        "stalled_connections": stall.result().tried,
        "stalled_closed_by_coordinator": stall.result().closed_by_server,
        "non_reading_clients": hog.result().tried,
        "non_reading_clients_disconnected": hog.result().closed_by_server,
        "connections_abused": (bad.result().tried + stall.result().tried
                               + hog.result().tried),
        "jobs_served_during_abuse": served,
        "fresh_client_served": probe_ok,
        "pre_existing_jobs": len(before),
        "pre_existing_jobs_changed": changed,
        "submitted_by_others": stats_after["submitted"] - stats_before["submitted"] - served - 1,
        "rss_cold_kib": cold,
        "warmup_clients": warmup_clients,
        "rss_before_kib": baseline,
        "rss_peak_kib": peak,
        "rss_closed_kib": rss_closed,
        "rss_after_kib": rss_after,
        "rss_after_over_before": round(rss_after / baseline, 3),
        "elapsed_s": round(elapsed, 2),
        "coordinator_counters": {k: stats_after.get(k, 0) for k in security},
        "sample_failures": bad.result().failures[:5] + stall.result().failures[:5],
    }


def _own_cluster(workdir: Path, token_file: Path, stalled_count: int,
                 concurrency: int) -> tuple[ProcessGroup, str, int]:
    group = ProcessGroup(workdir)
    port = free_port()
    coordinator, address = group.coordinator(port, extra=[
        "--token-file", str(token_file), "--handshake-timeout", "1",
        "--max-unauthenticated", str(stalled_count + concurrency + 64),
        # All from 127.0.0.1: room for every stalled connection, so that the handshake
        # deadline (not eviction to make room) is what closes them.
        "--max-unauthenticated-per-source", str(stalled_count + concurrency + 64),
        "--max-output-buffer", str(1024 * 1024), "--idle-timeout", "5",
        "--heartbeat-timeout", "5", "--log-level", "warning",
    ])
    group.worker(address, "abuse-worker", slots=4, extra=["--token-file", str(token_file)])
    return group, address, coordinator.pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="abuse this coordinator (else start one, with a worker)")
    p.add_argument("--pid", type=int, default=None, help="its process id (for VmRSS)")
    p.add_argument("--token-file", default=None)
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--stalled", type=int, default=500)
    p.add_argument("--non-readers", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--warmup-clients", type=int, default=None,
                   help="legitimate clients at once before the baseline (= --stalled)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    group = None
    with tempfile.TemporaryDirectory(prefix="tcpsched-abuse-") as tmp:
        try:
            if args.coordinator is None:
                token_file = Path(tmp) / "token"
                token_file.write_text(os.urandom(16).hex())
                group, address, pid = _own_cluster(Path(tmp), token_file, args.stalled,
                                                   args.concurrency)
            else:
                if args.pid is None:
                    p.error("--coordinator needs --pid")
                address, pid = args.coordinator, args.pid
                token_file = Path(args.token_file) if args.token_file else None
            token = token_file.read_bytes().strip() if token_file else None
            warmup = args.stalled if args.warmup_clients is None else args.warmup_clients
            figures = asyncio.run(run(
                address, pid, token, frames=args.frames, stalled_count=args.stalled,
                readers=args.non_readers, concurrency=args.concurrency, seed=args.seed,
                warmup_clients=warmup))
        finally:
            if group is not None:
                group.stop_all()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:36} {value}")
    ok = (figures["malformed_not_closed"] == 0 and not figures["pre_existing_jobs_changed"]
          and figures["fresh_client_served"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
