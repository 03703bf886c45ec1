"""CPU seconds per process for N no-op jobs: where a peer group's cost goes.

    scripts/bench_cpu.py [--coordinators 3] [--jobs 5000] [--slots 4] [--repeat 3] [--json]

Wall-clock throughput is noisy on a shared machine; CPU seconds of each process are much less
so. This starts the same cluster as `scripts/bench.py` (1 coordinator or a group of 3, and 2
workers), warms it with 200 jobs, then for each repeat reads utime + stime of every process
from /proc/PID/stat (a worker's call processes included once they exit; they are counted as
the worker's children) before and after a `map` + `gather` of N `builtins:abs` jobs, and prints
the leader's, each follower's, the workers' and this client's CPU seconds, with jobs/s. The
roles come from the group itself (`coordinators`), so a leader other than id 3 is named right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_sections as sections  # noqa: E402

from tcpsched.client_sync import SyncClient  # noqa: E402
from tcpsched.testing.processes import ProcessGroup  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
WARM_JOBS = 200


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its children it has waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICKS_PER_S


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--coordinators", type=int, choices=(1, 3), default=3)
    p.add_argument("--jobs", type=int, default=5_000, help="jobs per repeat (5000)")
    p.add_argument("--slots", type=int, default=4, help="slots per worker (4)")
    p.add_argument("--repeat", type=int, default=3, metavar="N")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1:
        p.error("--jobs and --repeat must be at least 1")
    return args


def roles(client: SyncClient, group: ProcessGroup) -> dict[str, int]:
    """Process name (leader, follower-N, wN) -> pid."""
    by_id = {int(p.name[1:]): p.pid for p in group.procs if p.name.startswith("c")}
    out: dict[str, int] = {}
    if len(by_id) == 1:
        out["leader"] = next(iter(by_id.values()))
    else:
        for row in client.coordinators():
            name = "leader" if row["role"] == "leader" else f"follower-{row['id']}"
            out[name] = by_id[row["id"]]
    out.update({p.name: p.pid for p in group.procs if p.name.startswith("w")})
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = sections.BenchConfig(slots=args.slots)
    runs = []
    with tempfile.TemporaryDirectory(prefix="tcpsched-bench-cpu-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            address, _pid = sections.start_cluster(group, config, None, args.coordinators)
            with SyncClient(address, connect_timeout=30.0) as client:
                client.gather(client.map(sections.NOOP_FUNCTION, range(WARM_JOBS)), timeout=60)
                for _ in range(args.repeat):
                    pids = roles(client, group)
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    mine = os.times()
                    started = time.perf_counter()
                    ids = client.map(sections.NOOP_FUNCTION, range(args.jobs))
                    records = client.gather(ids, timeout=sections.GATHER_TIMEOUT_S)
                    took = time.perf_counter() - started
                    if any(r["state"] != "succeeded" for r in records):
                        raise RuntimeError("a job did not succeed")
                    after = os.times()
                    row: dict[str, Any] = {"jobs_per_s": round(args.jobs / took, 1)}
                    row.update({name: round(cpu_seconds(pid) - before[name], 2)
                                for name, pid in pids.items()})
                    row["client"] = round(after.user + after.system - mine.user - mine.system, 2)
                    runs.append(row)
        except Exception:
            print(group.logs()[-4000:], file=sys.stderr)
            raise
        finally:
            group.stop_all()
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = run(args)
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps({"coordinators": args.coordinators, "jobs": args.jobs,
                          "slots": args.slots, "runs": runs}))
        return 0
    print(f"CPU seconds per {args.jobs} jobs, {args.coordinators} coordinator(s), "
          f"{args.slots} slot(s) per worker:")
    for row in runs:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
