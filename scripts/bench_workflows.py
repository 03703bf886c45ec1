"""Benchmarks of workflows on a local cluster: dependency release latency and chunked `map`.

Starts one coordinator and `--workers` workers on free loopback ports in a temporary
directory (every process stopped at the end, also on Ctrl-C), then measures:

  release   `--chains` chains parent -> child (`after`) of no-op shell jobs, one chain at a
            time: the time from each parent's finish to its child's start (both times as the
            worker reports them, one machine's clock), median and p90 in milliseconds;
            `release_burst`: the same with every chain submitted at once.
            Baseline (`client_chain`): the client waits for the parent, then submits the
            child, one chain at a time.
  map       `Client.map` of `--items` items with each `--chunk-size`, submitted and gathered
            (`gather_results`, checked against the items): jobs/s and items/s end to end.

    python scripts/bench_workflows.py [--chains 50] [--items 100000]
                                      [--chunk-size 1000] [--chunk-size 100] [--workers 2]
                                      [--slots 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_for_workers

TIMEOUT_S = 600.0


def _figures(gaps_ms: list[float], chains: int) -> dict[str, Any]:
    gaps_ms = sorted(gaps_ms)
    return {"chains": chains, "median_ms": round(statistics.median(gaps_ms), 2),
            "p90_ms": round(gaps_ms[int(0.9 * (len(gaps_ms) - 1))], 2),
            "max_ms": round(gaps_ms[-1], 2)}


def release_latency(client: SyncClient, chains: int, burst: bool) -> dict[str, Any]:
    """Parent -> child with `after`: one chain at a time, or (`burst`) all submitted at once."""
    pairs = []
    gaps_ms = []
    for _ in range(chains):
        parent = client.submit_shell("true")
        pairs.append((parent, client.submit_shell("true", after=[parent])))
        if not burst:
            records = client.gather(pairs[-1], timeout=TIMEOUT_S)
            gaps_ms.append((records[1]["started_at"] - records[0]["finished_at"]) * 1000)
    if burst:
        records = {r["id"]: r for r in client.gather([j for pair in pairs for j in pair],
                                                     timeout=TIMEOUT_S)}
        gaps_ms = [(records[child]["started_at"] - records[parent]["finished_at"]) * 1000
                   for parent, child in pairs]
    return _figures(gaps_ms, chains)


def client_chain_latency(client: SyncClient, chains: int) -> dict[str, Any]:
    """The baseline without `after`: the client waits for the parent, then submits the child
    (one chain at a time)."""
    gaps_ms = []
    for _ in range(chains):
        parent = client.wait(client.submit_shell("true"), timeout=TIMEOUT_S)
        child = client.wait(client.submit_shell("true"), timeout=TIMEOUT_S)
        gaps_ms.append((child["started_at"] - parent["finished_at"]) * 1000)
    return _figures(gaps_ms, chains)


def chunked_map(client: SyncClient, items: int, chunk_size: int) -> dict[str, Any]:
    began = time.perf_counter()
    ids = client.map("operator:neg", range(items), chunk_size=chunk_size)
    submitted_s = time.perf_counter() - began
    results = client.gather_results(ids, timeout=TIMEOUT_S)
    took_s = time.perf_counter() - began
    if results != [-i for i in range(items)]:
        raise SystemExit("map: the gathered results are not the items' results in item order")
    return {"items": items, "chunk_size": chunk_size, "jobs": len(ids),
            "submit_s": round(submitted_s, 3), "total_s": round(took_s, 3),
            "jobs_per_s": round(len(ids) / took_s, 1),
            "items_per_s": round(items / took_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, action="append", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    chunk_sizes = args.chunk_size or [1000, 100]
    with tempfile.TemporaryDirectory(prefix="tcpsched-bench-") as tmp:
        procs = ProcessGroup(Path(tmp) / "run")
        try:
            _, address = procs.coordinator(extra=["--log-level", "warning"])
            names = [f"w{i}" for i in range(1, args.workers + 1)]
            for name in names:
                procs.worker(address, name, slots=args.slots, extra=["--log-level", "warning"])
            with SyncClient(address, connect_timeout=30.0) as client:
                wait_for_workers(client, names, timeout=30.0)
                print("release latency...", file=sys.stderr)
                figures: dict[str, Any] = {
                    "release": release_latency(client, args.chains, burst=False),
                    "release_burst": release_latency(client, args.chains, burst=True)}
                figures["client_chain"] = client_chain_latency(client, args.chains)
                figures["map"] = []
                for size in chunk_sizes:
                    print(f"map of {args.items} items, chunks of {size}...", file=sys.stderr)
                    figures["map"].append(chunked_map(client, args.items, size))
        finally:
            procs.stop_all()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name in ("release", "release_burst"):
            r = figures[name]
            print(f"{name} latency over {r['chains']} chains: median {r['median_ms']} ms, "
                  f"p90 {r['p90_ms']} ms, max {r['max_ms']} ms")
        b = figures["client_chain"]
        print(f"baseline, the client waits then submits: median {b['median_ms']} ms, "
              f"p90 {b['p90_ms']} ms")
        for f in figures["map"]:
            print(f"map {f['items']} items, chunk {f['chunk_size']}: {f['jobs']} jobs in "
                  f"{f['total_s']} s: {f['jobs_per_s']} jobs/s, {f['items_per_s']} items/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
