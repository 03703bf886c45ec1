"""Restart time and memory per queued job: a coordinator started on a data directory of N jobs.

    python scripts/bench_restart.py [--jobs 1000000] [--runs 3] [--journal-share 0.1]
                                    [--data-dir DIR] [--json]

The data directory holds N queued call jobs (`operator:add`, two integer arguments, an
idempotency key each), a share of them (`--journal-share`) as journal records after the
snapshot and the rest in `snapshot.json`. It is written with the storage code itself
(tcpsched/testing/datadirs.py: the real `JobTable`, `write_snapshot` and `encode_line`):
submitting a million jobs over the wire would measure the network, not recovery; `--data-dir`
keeps it (built there if absent, reused if present, never written to by the runs). Then,
RUNS times, a coordinator is spawned on a copy of it and timed
from spawn until the first successful `stats` reply through the real `SyncClient` (the
coordinator listens only once it has recovered, so the client's first connection is polled for
without its reconnect backoff), with the CPU seconds the coordinator used until then (less
load-sensitive than wall time). Memory: the RSS of that coordinator minus the RSS of one spawned
on an empty directory, divided by N. Figures are medians over the runs.

`main(argv)` returns 0 and prints a table, or with `--json` one JSON object (also what
`measure(...)` returns, for scripts/bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcpsched.client_sync import SyncClient  # noqa: E402
from tcpsched.testing.datadirs import build_data_dir  # noqa: E402
from tcpsched.testing.processes import ProcessGroup, free_port  # noqa: E402

SPAWN_TIMEOUT_S = 600.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (/proc/PID/stat): less sensitive to what else runs
    on the machine than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_start(group: ProcessGroup, name: str, data_dir: Path, jobs: int
               ) -> tuple[float, int, float]:
    """Spawn a coordinator on `data_dir`; seconds to its first `stats` reply, its RSS, and the
    CPU seconds it used until then."""
    port = free_port()
    started = time.monotonic()
    proc = group.start(name, "tcpsched.coordinator",
                       ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
                        "--log-level", "warning"])
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() - started > SPAWN_TIMEOUT_S or not proc.alive():
                    raise RuntimeError(f"coordinator {name} did not start:\n{proc.log()}") \
                        from None
                time.sleep(0.005)
        with SyncClient(f"127.0.0.1:{port}", connect_timeout=60) as client:
            stats = client.stats()
            elapsed = time.monotonic() - started
        cpu_s = cpu_seconds(proc.pid)
        if stats["pending"] != jobs:
            raise RuntimeError(f"coordinator {name} recovered {stats['pending']} pending jobs, "
                               f"not {jobs}")
        return elapsed, rss_bytes(proc.pid), cpu_s
    finally:
        group.stop(proc)


def measure(jobs: int = 1_000_000, runs: int = 3, journal_share: float = 0.1,
            workdir: Path | None = None, data_dir: Path | None = None) -> dict[str, Any]:
    """Build the data directory (unless `data_dir` exists) and time `runs` restarts on a copy
    of it; medians and every run's figures."""
    with tempfile.TemporaryDirectory(prefix="tcpsched-restart-", dir=workdir) as tmp:
        root = Path(tmp)
        build_s = None
        if data_dir is None or not data_dir.exists():
            data_dir = data_dir or root / "built"
            build_s = round(build_data_dir(data_dir, jobs, journal_share), 1)
        disk = sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file())
        group = ProcessGroup(root / "run")
        restarts: list[float] = []
        cpus: list[float] = []
        per_job: list[float] = []
        try:
            for run in range(runs):
                _, empty_rss, _ = time_start(group, f"empty{run}", root / f"empty{run}", 0)
                # Each run starts from the same files (a coordinator journals its new epoch).
                run_dir = root / f"full{run}"
                shutil.copytree(data_dir, run_dir, ignore=shutil.ignore_patterns("lock"))
                full_s, full_rss, full_cpu = time_start(group, f"full{run}", run_dir, jobs)
                shutil.rmtree(run_dir)
                restarts.append(full_s)
                cpus.append(full_cpu)
                per_job.append((full_rss - empty_rss) / max(jobs, 1))
        finally:
            group.stop_all()
    return {"jobs": jobs, "runs": runs, "journal_share": journal_share,
            "build_s": build_s, "disk_bytes_per_job": round(disk / max(jobs, 1)),
            "restart_s": round(statistics.median(restarts), 3),
            "restart_cpu_s": round(statistics.median(cpus), 3),
            "rss_bytes_per_job": round(statistics.median(per_job)),
            "restart_s_runs": [round(s, 3) for s in restarts],
            "restart_cpu_s_runs": [round(s, 3) for s in cpus],
            "rss_bytes_per_job_runs": [round(b) for b in per_job]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="queued jobs (1,000,000)")
    parser.add_argument("--runs", type=int, default=3, help="restarts to take the median of")
    parser.add_argument("--journal-share", type=float, default=0.1,
                        help="share of the jobs in the journal tail, not the snapshot (0.1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the data directory here: built if absent, reused if present")
    parser.add_argument("--json", action="store_true", help="one JSON object, no table")
    args = parser.parse_args(argv)
    if args.jobs < 0 or args.runs < 1 or not 0.0 <= args.journal_share <= 1.0:
        parser.error("--jobs must be >= 0, --runs >= 1 and --journal-share within [0, 1]")
    result = measure(args.jobs, args.runs, args.journal_share, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"restart  {result['jobs']:,} queued jobs ({args.journal_share:.0%} in the "
              f"journal tail): spawn to first stats reply {result['restart_s']} s "
              f"(median of {result['runs']}: {result['restart_s_runs']}); CPU "
              f"{result['restart_cpu_s']} s ({result['restart_cpu_s_runs']})")
        print(f"memory   RSS per queued job: {result['rss_bytes_per_job']} bytes "
              f"(runs: {result['rss_bytes_per_job_runs']}); "
              f"disk {result['disk_bytes_per_job']} bytes/job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
