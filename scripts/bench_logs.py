"""Latency from a job's print to the line arriving at a `logs --follow` reader (median).

Starts a coordinator and a worker on loopback, submits one job per mode that prints `--lines`
lines every `--interval` seconds, each holding the Unix time it was printed at, and follows it
the way `logs --follow` does (`tcpsched.follow.follow`, the same code path as the CLI, with a
reader that notes when each line arrives). The latency of a line is its arrival time minus its
print time (one machine, one clock). Modes: `shell` (a shell job: its pipes), `thread` and
`process` (a `--call` job on a worker with that isolation: the routed sys.stdout, the call
child's output frames). Prints a table (or `--json`).

`--readers` adds other readers of a shell job's output, on a coordinator started with `--http`:
`sse` (`GET /api/jobs/ID/logs` as Server-Sent Events, the time each event is read) and
`dashboard` (the job's page in headless Chromium through Playwright: a MutationObserver notes
when each line appears in the page's stdout box). Their job waits for a gate file that the
bench creates once the reader is attached, so page loading is not counted.

    .venv/bin/python scripts/bench_logs.py [--lines 50] [--interval 0.1]
        [--modes shell,thread,process] [--readers follow,sse,dashboard] [--json]
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

from tcpsched.client import Client
from tcpsched.client_sync import SyncClient
from tcpsched.follow import follow
from tcpsched.testing.processes import ProcessGroup, wait_for_workers

MODES = ("shell", "thread", "process")
READERS = ("follow", "sse", "dashboard")
CHROMIUM = "/usr/bin/chromium"
PRINTER = ("import os, sys, time\n"
           "while {gate!r} and not os.path.exists({gate!r}):\n"
           "    time.sleep(0.01)\n"
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
                script.write_text(PRINTER.format(n=lines, dt=interval, gate=""))
                job_id = client.submit_shell(f"{sys.executable} -u {script}")
            else:
                job_id = client.submit_call("bench_logs:stamps", lines, interval)
        latencies = asyncio.run(measure(address, job_id))
    finally:
        group.stop_all()
    return summary(mode, "follow", latencies)


def summary(mode: str, reader: str, latencies: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)
    return {"mode": mode, "reader": reader, "lines": len(ms),
            "median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 2), "max_ms": round(ms[-1], 2)}


def latencies_of(arrivals: list[tuple[str, float]]) -> list[float]:
    """(line, arrival time) pairs of the printer's lines as latencies."""
    return [at - float(line.split()[1]) for line, at in arrivals if len(line.split()) == 2]


def sse_arrivals(base: str, job_id: str, gate: Path) -> list[tuple[str, float]]:
    from tcpsched.testing.http import events

    arrivals: list[tuple[str, float]] = []
    pending = ""
    for kind, data in events(f"{base}/api/jobs/{job_id}/logs", timeout=60.0):
        arrived = time.time()
        gate.touch()  # attached (the first event came): the job may print
        if kind == "end":
            break
        pending += data.get("stdout", "")
        *lines, pending = pending.split("\n")
        arrivals.extend((line, arrived) for line in lines)
    return arrivals


OBSERVER = """() => {
  window.__arrivals = []; let seen = 0;
  const box = document.querySelector('#job-stdout');
  new MutationObserver(() => {
    const now = Date.now() / 1000, lines = box.textContent.split('\\n');
    for (; seen < lines.length - 1; seen++) window.__arrivals.push([lines[seen], now]);
  }).observe(box, {childList: true, characterData: true, subtree: true});
}"""


def dashboard_arrivals(base: str, job_id: str, gate: Path) -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/#/job/{job_id}")
            page.wait_for_selector("#job-state .running")
            page.evaluate(OBSERVER)
            gate.touch()
            page.wait_for_selector("#job-state .succeeded")
            return [(line, at) for line, at in page.evaluate("window.__arrivals")]
        finally:
            browser.close()


def run_http_reader(reader: str, lines: int, interval: float, workdir: Path
                    ) -> dict[str, Any]:
    from tcpsched.testing.http import request, wait_http
    from tcpsched.testing.processes import free_port

    group = ProcessGroup(workdir / reader)
    try:
        port = free_port()
        _, address = group.coordinator(extra=["--http", f"127.0.0.1:{port}"])
        group.worker(address, "w", slots=2)
        base = f"http://127.0.0.1:{port}"
        wait_http(base)
        with SyncClient([address], connect_timeout=15.0) as client:
            wait_for_workers(client, ["w"])
        gate = workdir / f"{reader}.gate"
        script = workdir / f"{reader}.py"
        script.write_text(PRINTER.format(n=lines, dt=interval, gate=str(gate)))
        status, _, value = request("POST", f"{base}/api/jobs",
                                   {"shell": f"{sys.executable} -u {script}"})
        if status != 201:
            raise SystemExit(f"submit refused: {value}")
        read = sse_arrivals if reader == "sse" else dashboard_arrivals
        arrivals = read(base, value["id"], gate)
    finally:
        group.stop_all()
    return summary("shell", reader, latencies_of(arrivals))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--readers", default="follow",
                        help=f"a list of {','.join(READERS)} (sse, dashboard: shell jobs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    readers = [r for r in args.readers.split(",") if r]
    bad = [m for m in modes if m not in MODES] + [r for r in readers if r not in READERS]
    if bad or args.lines < 2 or args.interval < 0:
        parser.error(f"--modes is a list of {','.join(MODES)}; --readers of "
                     f"{','.join(READERS)}; --lines >= 2; --interval >= 0")
    workdir = Path(tempfile.mkdtemp(prefix="bench_logs-"))
    try:
        rows = [run_mode(mode, args.lines, args.interval, workdir) for mode in modes
                ] if "follow" in readers else []
        rows += [run_http_reader(reader, args.lines, args.interval, workdir)
                 for reader in readers if reader != "follow"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"lines": args.lines, "interval_s": args.interval, "results": rows},
                         indent=2))
    else:
        print(f"{'mode':8} {'reader':10} {'lines':>5} {'median ms':>10} {'p90 ms':>8} "
              f"{'max ms':>8}")
        for r in rows:
            print(f"{r['mode']:8} {r['reader']:10} {r['lines']:>5} {r['median_ms']:>10} "
                  f"{r['p90_ms']:>8} {r['max_ms']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
