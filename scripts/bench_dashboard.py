"""What the dashboard costs the coordinator, and how fast a job's output reaches it.

    python scripts/bench_dashboard.py [--jobs 5000] [--rounds 2] [--workers 2] [--slots 4]
                                      [--output-samples 20]

Starts one coordinator with --http and `--workers` workers (a temporary directory, free ports on
127.0.0.1), then alternates throughput runs without and with one headless Chromium showing the
dashboard (Debian's /usr/bin/chromium through Playwright): `--jobs` no-op Python jobs through
`Client.map` and `gather`, measuring jobs/s and the coordinator's CPU seconds (utime + stime
from /proc) per run. Then the output latency: `--output-samples` jobs that echo a line, each
watched on the dashboard's job page; the figure is the time from the job's `finished_at` to the
line showing in the page (the dashboard polls the record: on this branch output reaches the
record when the job ends). Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcpsched.client_sync import SyncClient  # noqa: E402
from tcpsched.testing.http import get, request, wait_http  # noqa: E402
from tcpsched.testing.processes import (  # noqa: E402
    ProcessGroup,
    free_port,
    wait_for_workers,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(address: str, jobs: int) -> None:
    """The load, in a process of its own (Playwright's sync API owns the main one's loop)."""
    client = SyncClient(address, connect_timeout=30)
    start = time.perf_counter()
    ids = client.map("builtins:abs", range(jobs))
    records = client.gather(ids, timeout=600)
    elapsed = time.perf_counter() - start
    assert all(r["state"] == "succeeded" for r in records)
    client.close()
    print(jobs / elapsed)


def throughput(address: str, pid: int, jobs: int) -> tuple[float, float]:
    before = cpu_s(pid)
    done = subprocess.run([sys.executable, __file__, "--load", address, "--jobs", str(jobs)],
                          capture_output=True, text=True, check=True, timeout=900)
    return float(done.stdout.strip()), cpu_s(pid) - before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--output-samples", type=int, default=20)
    p.add_argument("--load", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        load(args.load, args.jobs)
        return 0
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="tcpsched-bench-dash-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            port = free_port()
            proc, address = group.coordinator(extra=["--http", f"127.0.0.1:{port}"])
            for i in range(args.workers):
                group.worker(address, f"w{i + 1}", slots=args.slots)
            base = f"http://127.0.0.1:{port}"
            client = SyncClient(address, connect_timeout=30)
            wait_for_workers(client, [f"w{i + 1}" for i in range(args.workers)], 30)
            client.close()
            wait_http(base)
            throughput(address, proc.pid, 500)  # warm up
            plain: list[tuple[float, float]] = []
            shown: list[tuple[float, float]] = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=CHROMIUM_ARGS)
                for _ in range(args.rounds):
                    plain.append(throughput(address, proc.pid, args.jobs))
                    page = browser.new_page()
                    page.goto(base + "/")
                    page.wait_for_selector("#workers tr[data-name=w1]")
                    shown.append(throughput(address, proc.pid, args.jobs))
                    page.close()
                # Output latency on the job page.
                page = browser.new_page()
                delays = []
                for i in range(args.output_samples):
                    status, _, value = request("POST", f"{base}/api/jobs",
                                               {"shell": f"sleep 0.2; echo sample {i}"})
                    assert status == 201
                    page.goto(f"{base}/#/job/{value['id']}")
                    page.wait_for_function(
                        f"document.querySelector('#job-stdout').textContent"
                        f".includes('sample {i}')", timeout=30_000)
                    seen = time.time()
                    record = get(f"{base}/api/jobs/{value['id']}")
                    delays.append(seen - record["finished_at"])
                browser.close()
        finally:
            group.stop_all()
    shape = f"{args.jobs} no-op jobs per run, {args.workers} workers x {args.slots} slots"
    print(f"load: {shape}, {args.rounds} round(s) each, 1 coordinator, fsync always")
    for name, runs in (("without dashboard", plain), ("with one dashboard", shown)):
        rate = statistics.fmean(r for r, _ in runs)
        cpu = statistics.fmean(c for _, c in runs)
        print(f"{name:20} {rate:8.0f} jobs/s   coordinator CPU {cpu:6.2f} s/run "
              f"({1000 * cpu / args.jobs:.3f} ms/job)   runs: "
              + ", ".join(f"{r:.0f}" for r, _ in runs))
    delays.sort()
    median_ms = statistics.median(delays) * 1000
    print(f"output on the dashboard after the job's end: median {median_ms:.0f} ms, "
          f"max {delays[-1] * 1000:.0f} ms over {len(delays)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
