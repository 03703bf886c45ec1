"""Schedules: how late a tick fires (jitter), and whether ticks survive leader failovers.

Starts coordinators 1-3 as a peer group on loopback (election timeout 0.6 s, hold-down 1 s,
as the integration tests) and one worker, then:

* jitter: a schedule `--every 1` and a six-field cron `* * * * * *` (every second, in
  Europe/Paris) run for `--jitter-s` seconds with no fault; each fired job's submitted_at (the
  leader's wall clock when it journaled the fire) minus its tick (from its key NAME@TICK) is
  one sample; prints the median, p99 and max.
* failovers: a schedule `--every 1` runs while the leader is killed (-9) `--failovers` times;
  after each kill the script waits for a new leader and 3 more fires, then restarts the killed
  coordinator. Then the schedule is paused and every tick from its add to its last fire is
  accounted for: expected ticks, fires seen (jobs keyed NAME@TICK), duplicates (a key twice),
  ticks folded into the fire after a gap (`--catch-up once`), and ticks unaccounted (lost).

    .venv/bin/python scripts/bench_schedules.py [--jitter-s 30] [--failovers 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tcpsched.client_sync import SyncClient
from tcpsched.core.jobs import JobSpec
from tcpsched.errors import TcpschedError
from tcpsched.testing.processes import ProcessGroup, free_port, wait_for_workers, wait_until

TIMING = ["--election-timeout", "0.6", "--hold-down", "1.0", "--heartbeat-interval", "0.2",
          "--heartbeat-timeout", "1.5"]
WAIT_S = 60.0


def tick_of(key: str) -> float:
    return datetime.fromisoformat(key.partition("@")[2].replace("Z", "+00:00")).timestamp()


def leader_id(client: SyncClient) -> int | None:
    try:
        return int(client.leader()["id"])
    except TcpschedError:
        return None


def schedule_jobs(client: SyncClient, name: str) -> list[dict[str, Any]]:
    return [j for j in client.list(limit=1_000_000)
            if str(j.get("key", "")).startswith(f"{name}@")]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def jitter(client: SyncClient, seconds: float) -> dict[str, Any]:
    client.schedule_add("jitter-every", JobSpec(kind="shell", command="true"), every=1.0)
    client.schedule_add("jitter-cron", JobSpec(kind="shell", command="true"),
                        cron="* * * * * *", tz="Europe/Paris")
    time.sleep(seconds)
    client.schedule_pause("jitter-every")
    client.schedule_pause("jitter-cron")
    out: dict[str, Any] = {}
    for name in ("jitter-every", "jitter-cron"):
        late_ms = [(j["submitted_at"] - tick_of(j["key"])) * 1000
                   for j in schedule_jobs(client, name)]
        out[name] = {"fires": len(late_ms), "median_ms": round(statistics.median(late_ms), 3),
                     "p99_ms": round(percentile(late_ms, 99), 3),
                     "max_ms": round(max(late_ms), 3)}
    return out


def failovers(procs: ProcessGroup, group: dict[int, Any], addresses: dict[int, str],
              client: SyncClient, count: int) -> dict[str, Any]:
    name = "failover"
    client.schedule_add(name, JobSpec(kind="shell", command="true"), every=1.0)
    fired = lambda: int(client.schedule_show(name, 0)["fired"])  # noqa: E731
    wait_until(lambda: fired() >= 3, WAIT_S, what="3 fires")
    gaps = []
    for n in range(count):
        leader = wait_until(lambda: leader_id(client), WAIT_S, what="a leader")
        before = fired()
        killed_at = time.monotonic()
        group[leader][0].signal(signal.SIGKILL)
        wait_until(lambda: (lid := leader_id(client)) is not None and lid != leader,  # noqa: B023
                   WAIT_S, what="a new leader")
        wait_until(lambda: fired() > before, WAIT_S, what="a fire after the kill")  # noqa: B023
        gaps.append(time.monotonic() - killed_at)
        wait_until(lambda: fired() >= before + 3, WAIT_S, what="3 fires")  # noqa: B023
        group[leader] = procs.peer(leader, addresses, TIMING, name=f"c{leader}-{n}")
        print(f"failover {n + 1}: killed {leader}, next fire after {gaps[-1]:.2f}s",
              file=sys.stderr)
    client.schedule_pause(name)
    shown = client.schedule_show(name, 0)
    keys = [j["key"] for j in schedule_jobs(client, name)]
    anchor = float(int(shown["created_at"]) + 1)
    expected = round(shown["last_tick"] - anchor)
    accounted = shown["fired"] + shown["skipped"] + shown["missed"]
    return {"failovers": count, "expected_ticks": expected, "fires_seen": len(set(keys)),
            "duplicates": len(keys) - len(set(keys)), "folded_after_gaps": shown["missed"],
            "skipped": shown["skipped"], "unaccounted": expected - accounted,
            "kill_to_next_fire_s_median": round(statistics.median(gaps), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jitter-s", type=float, default=30.0)
    p.add_argument("--failovers", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-schedules-"))
    procs = ProcessGroup(workdir)
    try:
        ports = [free_port() for _ in range(3)]
        addresses = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
        group = {i: procs.peer(i, addresses, TIMING) for i in addresses}
        every = ",".join(addresses.values())
        procs.worker(every, "w1", slots=8)
        with SyncClient(every, connect_timeout=20.0) as client:
            wait_for_workers(client, ["w1"], timeout=WAIT_S)
            result = {"jitter": jitter(client, args.jitter_s),
                      "failover": failovers(procs, group, addresses, client, args.failovers)}
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, row in result["jitter"].items():
            print(f"{name}: {row['fires']} fires, late by median {row['median_ms']} ms, p99 "
                  f"{row['p99_ms']} ms, max {row['max_ms']} ms")
        f = result["failover"]
        print(f"{f['failovers']} leader kills: {f['expected_ticks']} ticks expected, "
              f"{f['fires_seen']} fired, {f['folded_after_gaps']} folded into the fire after "
              f"a gap, {f['duplicates']} duplicates, {f['unaccounted']} unaccounted; kill to "
              f"next fire median {f['kill_to_next_fire_s_median']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
