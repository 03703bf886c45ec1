"""Many workers in one process, speaking the real worker protocol, that run nothing.

Used by `scripts/bench.py --only workers` to measure what connected workers cost the leader
(its CPU share while they only heartbeat) and how fast it dispatches to many of them. Each
virtual worker is a `tcpsched.worker.Worker` (the real shell: the real handshake, codec,
`WorkerProtocol` core, heartbeats at the interval the coordinator asks for, reconnects) whose
jobs finish the moment they are started: an `Assign` is answered with a `Result` in the next
loop turn (`builtins:abs` gets its real value, any other job `None`), so the coordinator sees
workers as fast as the wire and its own loop allow. They share one event loop and one reaper
process (the executor needs one, and never uses it: nothing runs).

    python -m tcpsched.testing.loadgen 127.0.0.1:7001 --workers 1000 [--slots 1]
        [--name-prefix lg] [--token-file FILE]

prints `ready N` once every worker is registered, `heartbeats_sent N` (how many all its
workers have sent so far) on each SIGUSR1, so a benchmark can put the leader's CPU over the
heartbeats of a window (fewer are sent when the machine is loaded), and, on SIGTERM or SIGINT,
one JSON line with `workers`, `jobs` (answered), `heartbeats` (sent) and `registered` (at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcpsched.config import WorkerSettings
from tcpsched.core import messages as m
from tcpsched.core import workerproto as wp
from tcpsched.runtime.reaper import Reaper
from tcpsched.worker import Worker


class InstantWorker(Worker):
    """A worker whose every job succeeds at once, without running anything."""

    jobs_done = 0
    heartbeats_sent = 0
    on_registered: Any = None  # called once per worker, the first time it is registered

    def feed(self, event: wp.Event) -> None:
        super().feed(event)
        if not getattr(self, "_counted", False) and \
                self.proto.statistics().state == "registered":
            self._counted = True
            if InstantWorker.on_registered is not None:
                InstantWorker.on_registered()

    def _carry_out(self, effect: wp.Effect) -> None:
        if isinstance(effect, wp.StartJob):
            asyncio.get_running_loop().call_soon(self._finish, effect.assign)
        else:
            if type(effect) is wp.Send and type(effect.msg) is m.Heartbeat \
                    and self.conn is not None:
                InstantWorker.heartbeats_sent += 1

            super()._carry_out(effect)

    def _finish(self, assign: m.Assign) -> None:
        result = None
        if assign.function == "builtins:abs" and len(assign.args) == 1 \
                and isinstance(assign.args[0], int | float):
            result = abs(assign.args[0])
        now = time.time()
        InstantWorker.jobs_done += 1
        self.feed(wp.JobFinished(m.Result(
            job_id=assign.job_id, attempt=assign.attempt, state="succeeded", exit_code=None,
            result=result, stdout="", stderr="", error=None, started_at=now, finished_at=now,
        )))  # fmt: skip


def registered(workers: Sequence[Worker]) -> int:
    return sum(1 for w in workers if w.proto.statistics().state == "registered")


async def run(address: str, count: int, slots: int, prefix: str,
              token: bytes | None) -> dict[str, Any]:
    reaper = Reaper()
    workers = [InstantWorker(WorkerSettings(coordinators=(address,), name=f"{prefix}{i}",
                                            slots=slots, token=token, isolation="thread",
                                            log_level="warning"), reaper=reaper)
               for i in range(count)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(
        f"heartbeats_sent {InstantWorker.heartbeats_sent}", flush=True))
    all_in = asyncio.Event()
    seen = 0

    def one_registered() -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            all_in.set()

    InstantWorker.on_registered = one_registered
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        waiting = asyncio.ensure_future(all_in.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopping.cancel()
        print(f"ready {count}", flush=True)
        await stop.wait()
        at_end = registered(workers)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reaper.close()
    return {"workers": count, "jobs": InstantWorker.jobs_done,
            "heartbeats": InstantWorker.heartbeats_sent, "registered": at_end}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpsched.testing.loadgen",
                                     description="Many no-op workers on one connection each.")
    parser.add_argument("address")
    parser.add_argument("--workers", type=int, default=10, metavar="N")
    parser.add_argument("--slots", type=int, default=1, metavar="N")
    parser.add_argument("--name-prefix", default="lg")
    parser.add_argument("--token-file", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.slots < 1:
        parser.error("--workers and --slots must be at least 1")
    token = None if args.token_file is None else Path(args.token_file).read_bytes().strip()
    import logging

    logging.basicConfig(level=logging.WARNING)
    import uvloop

    figures = uvloop.run(run(args.address, args.workers, args.slots, args.name_prefix, token))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
