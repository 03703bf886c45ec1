"""Latency from a job's print to the line arriving at a `logs --follow` reader (median).

Starts a coordinator and a worker on loopback, submits one job per mode that prints `--lines`
lines every `--interval` seconds, each holding the Unix time it was printed at, and follows it
the way `logs --follow` does (`tcpsched.follow.follow`, the same code path as the CLI, with a
reader that notes when each line arrives). The latency of a line is its arrival time minus its
print time (one machine, one clock). Modes: `shell` (a shell job: its pipes), `thread` and
`process` (a `--call` job on a worker with that isolation: the routed sys.stdout, the call
child's output frames). Prints a table (or `--json`).

    .venv/bin/python scripts/bench_logs.py [--lines 50] [--interval 0.1]
        [--modes shell,thread,process] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcpsched.client import Client, SyncClient
from tcpsched.follow import follow
from tcpsched.testing.processes import ProcessGroup, wait_for_workers

MODES = ("shell", "thread", "process")
PRINTER = ("import sys, time\n"
           "for i in range({n}):\n"
           "    print(i, repr(time.time()), flush=True)\n"
           "    time.sleep({dt})\n")


def stamps(count: int, interval: float) -> int:
    """The call job: `count` lines, each with the Unix time it was printed at."""
    for i in range(count):
        print(i, repr(time.time()), flush=True)
        time.sleep(interval)
    return count


async def measure(address: str, job_id: str) -> list[float]:
    latencies: list[float] = []
    pending = ""

    def write(stream: str, text: str) -> None:
        nonlocal pending
        arrived = time.time()
        if stream != "stdout":
            return
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            latencies.append(arrived - float(line.split()[1]))

    client = Client([address])
    try:
        view = await follow(client, job_id, write, lambda _note: None)
    finally:
        await client.close()
    if view.get("state") != "succeeded":
        raise SystemExit(f"the job {job_id} {view.get('state')}: {view.get('error')}")
    return latencies


def run_mode(mode: str, lines: int, interval: float, workdir: Path) -> dict[str, Any]:
    # The workers import this file as `bench_logs` for the call jobs.
    group = ProcessGroup(workdir / mode, env={"PYTHONPATH": str(Path(__file__).parent)})
    try:
        _, address = group.coordinator()
        isolation = "thread" if mode == "thread" else "process"
        group.worker(address, "w", slots=2, extra=["--isolation", isolation])
        with SyncClient([address], connect_timeout=15.0) as client:
            wait_for_workers(client, ["w"])
            if mode == "shell":
                script = workdir / "printer.py"
                script.write_text(PRINTER.format(n=lines, dt=interval))
                job_id = client.submit_shell(f"{sys.executable} -u {script}")
            else:
                job_id = client.submit_call("bench_logs:stamps", lines, interval)
        latencies = asyncio.run(measure(address, job_id))
    finally:
        group.stop_all()
    ms = sorted(x * 1000 for x in latencies)
    return {"mode": mode, "lines": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 2), "max_ms": round(ms[-1], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or args.lines < 2 or args.interval < 0:
        parser.error(f"--modes is a list of {','.join(MODES)}; --lines >= 2; --interval >= 0")
    workdir = Path(tempfile.mkdtemp(prefix="bench_logs-"))
    try:
        rows = [run_mode(mode, args.lines, args.interval, workdir) for mode in modes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"lines": args.lines, "interval_s": args.interval, "results": rows},
                         indent=2))
    else:
        print(f"{'mode':8} {'lines':>5} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}")
        for r in rows:
            print(f"{r['mode']:8} {r['lines']:>5} {r['median_ms']:>10} {r['p90_ms']:>8} "
                  f"{r['max_ms']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
