"""A heartbeating worker that measures how long the leader's loop leaves it unanswered.

Theory of operation: `LoopProbe` dials a coordinator as a worker, registers as draining (so it
is watched by the failure detector like any worker but is never given a job), heartbeats like
`tcpsched/worker.py`, and every `ping_interval_s` sends a result for an attempt the coordinator
does not know. Every result is acknowledged at once by the leader, from its loop, whatever it
is about; the time from sending one to reading its acknowledgement is how long the leader's
loop kept a worker waiting. `max_rtt_s` is the worst of those: the worst loop stall a
heartbeating worker saw. Used by `scripts/loop_stall.py` and the integration tests; the
coordinator logs each probe result as a stale result (INFO).

It runs in a process of its own, so that what the measuring side does (decoding big replies)
cannot show up as a stall of the coordinator:

    python -m tcpsched.testing.probe 127.0.0.1:7001 [--name probe]

prints `ready` once registered and, on SIGTERM or SIGINT, one JSON line with `max_rtt_ms`,
`acks` and `closed` (why the coordinator cut it off, or null).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from tcpsched.core import messages as m
from tcpsched.errors import RemoteProtocolError
from tcpsched.runtime.handshake import dial
from tcpsched.runtime.transport import Connection


class LoopProbe:
    def __init__(self, address: str, name: str = "probe", *, heartbeat_interval_s: float = 0.1,
                 ping_interval_s: float = 0.02, token: bytes | None = None) -> None:
        self.address = address
        self.name = name
        self.heartbeat_interval_s = heartbeat_interval_s
        self.ping_interval_s = ping_interval_s
        self.token = token
        self.max_rtt_s = 0.0
        self.acks = 0
        self.closed_reason: str | None = None  # set if the coordinator cut the probe off
        self._sent: dict[str, float] = {}
        self._conn: Connection | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        """Connect and register; returns once the coordinator has answered the registration."""
        conn, _ = await dial(self.address, "worker", self.name, self.token,
                             m.COORDINATOR_TO_WORKER)
        conn.send(m.Register(name=self.name, slots=1, draining=True))
        async with asyncio.timeout(10.0):
            reply = await conn.receive()
        if not isinstance(reply, m.Registered):
            conn.close()
            raise RuntimeError(f"probe {self.name}: expected registered, got {reply!r:.80}")
        self._conn = conn
        self._tasks = [asyncio.ensure_future(self._read(conn)),
                       asyncio.ensure_future(self._beat(conn)),
                       asyncio.ensure_future(self._ping(conn))]

    async def stop(self) -> None:
        """Stop beating and pinging, close the connection, and count what is unanswered."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None and self.closed_reason is None:
            self._conn.close("probe done")
            self._count_unanswered()

    def _count_unanswered(self) -> None:
        """Pings still unanswered at the end waited at least until now (a probe that was cut
        off counts until the cut, not until it stops)."""
        now = time.monotonic()
        for sent in self._sent.values():
            self.max_rtt_s = max(self.max_rtt_s, now - sent)
        self._sent.clear()

    async def _beat(self, conn: Connection) -> None:
        while not conn.closed:
            conn.send(m.Heartbeat(running=()))
            await asyncio.sleep(self.heartbeat_interval_s)

    async def _ping(self, conn: Connection) -> None:
        n = 0
        while not conn.closed:
            n += 1
            job_id = f"probe-{self.name}-{n}"
            now = time.monotonic()
            self._sent[job_id] = now
            wall = time.time()
            conn.send(m.Result(job_id=job_id, attempt=1, state="succeeded", exit_code=0,
                               result=None, stdout="", stderr="", error=None, started_at=wall,
                               finished_at=wall))
            await asyncio.sleep(self.ping_interval_s)

    async def _read(self, conn: Connection) -> None:
        try:
            while (msg := await conn.receive()) is not None:
                if isinstance(msg, m.ResultAck):
                    sent = self._sent.pop(msg.job_id, None)
                    if sent is not None:
                        self.acks += 1
                        self.max_rtt_s = max(self.max_rtt_s, time.monotonic() - sent)
            self.closed_reason = conn.close_reason or "closed by the coordinator"
        except (RemoteProtocolError, OSError) as exc:
            self.closed_reason = f"connection lost: {exc}"
        conn.close(self.closed_reason)
        self._count_unanswered()


async def _run(address: str, name: str) -> dict[str, Any]:
    probe = LoopProbe(address, name)
    await probe.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await probe.stop()
    return {"max_rtt_ms": round(probe.max_rtt_s * 1000.0, 1), "acks": probe.acks,
            "closed": probe.closed_reason}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpsched.testing.probe",
                                     description="Measure the leader's loop stalls as a worker.")
    parser.add_argument("address")
    parser.add_argument("--name", default="probe")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args.address, args.name))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
