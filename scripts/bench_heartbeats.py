"""The leader's cost per heartbeat of idle workers: CPU microseconds, or (under callgrind)
instructions, over the heartbeats the load generator sent in a window.

Why: on a shared 2-core machine a CPU share moves with the other processes' load, and the load
generator sends fewer heartbeats when it is starved; instructions per heartbeat do not move
(as long as the leader keeps up: compare `heartbeats` with workers / interval * window).
Under callgrind the leader is some 50 times slower, so either fewer workers at the default
interval (the real ratio of detector checks and resyncs to heartbeats) or 1,000 at a longer
`--interval` keep it up.

    python scripts/bench_heartbeats.py [--tree DIR] [--workers 1000] [--idle-s 5]
        [--interval S] [--callgrind OUT]

`--tree`: the checkout whose coordinator is measured (default this one), so two versions can
be compared interleaved; the load generator always comes from this checkout (it counts the
heartbeats). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VALGRIND_START_S = 25.0  # the coordinator's imports under valgrind, before workers dial


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def heartbeats_sent(gen: subprocess.Popen[str]) -> int:
    gen.send_signal(signal.SIGUSR1)
    while True:
        line = gen.stdout.readline() if gen.stdout is not None else ""
        if not line:
            raise RuntimeError("the load generator exited")
        if line.startswith("heartbeats_sent "):
            return int(line.split()[1])


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    coordinator = ["-m", "tcpsched.coordinator", "--id", "1", "--listen", address,
                   "--data-dir", str(workdir / "c1"), "--log-level", "warning"]
    if args.interval is not None:
        coordinator += ["--heartbeat-interval", str(args.interval),
                        "--heartbeat-timeout", str(4 * args.interval)]
    wrap = [] if args.callgrind is None else [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={args.callgrind}"]
    env = {**os.environ, "PYTHONPATH": str(args.tree)}
    with open(workdir / "coordinator.log", "wb") as log:
        leader = subprocess.Popen([*wrap, sys.executable, *coordinator], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=workdir)
    gen = None
    try:
        time.sleep(VALGRIND_START_S if wrap else 3.0)
        gen = subprocess.Popen(
            [sys.executable, "-m", "tcpsched.testing.loadgen", address,
             "--workers", str(args.workers)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, cwd=workdir)
        assert gen.stdout is not None
        ready = gen.stdout.readline()
        if not ready.startswith("ready"):
            raise RuntimeError(f"the load generator did not get ready: {ready!r}")
        time.sleep(args.settle_s)
        if wrap:
            subprocess.run(["callgrind_control", "-i", "on", str(leader.pid)], check=True,
                           capture_output=True)
        beats, cpu, start = heartbeats_sent(gen), cpu_seconds(leader.pid), time.perf_counter()
        time.sleep(args.idle_s)
        beats = heartbeats_sent(gen) - beats
        cpu, window = cpu_seconds(leader.pid) - cpu, time.perf_counter() - start
        if wrap:
            subprocess.run(["callgrind_control", "-i", "off", str(leader.pid)], check=True,
                           capture_output=True)
    finally:
        if gen is not None:
            gen.send_signal(signal.SIGTERM)
            gen.communicate(timeout=60)
        leader.send_signal(signal.SIGTERM)
        leader.wait(timeout=120)
    figures: dict[str, Any] = {
        "tree": str(args.tree), "workers": args.workers, "heartbeats": beats,
        "leader_cpu_pct": round(100 * cpu / window, 2),
        "leader_us_per_heartbeat": round(1e6 * cpu / max(beats, 1), 1)}
    if wrap:
        totals = subprocess.run(["callgrind_annotate", args.callgrind], capture_output=True,
                                text=True, check=True).stdout
        line = next(x for x in totals.splitlines() if "PROGRAM TOTALS" in x)
        instructions = int(line.split()[0].replace(",", ""))
        figures["instructions_per_heartbeat"] = instructions // max(beats, 1)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=None, metavar="S")
    parser.add_argument("--callgrind", default=None, metavar="OUT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-heartbeats-") as workdir:
        print(json.dumps(measure(args, Path(workdir))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
