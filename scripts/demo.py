"""`make demo`: a local cluster put through its paces in under a minute.

Starts three peer coordinators (they elect a leader) and three workers on free ports in a
directory of its own (so it never clashes with `make cluster`), queues a mixed load (shell
commands and Python callables, two priorities, a flaky job that succeeds on a retry and a
doomed one that runs out of retries), kills a worker with kill -9 while it runs jobs and shows
the leader handing them to the others, starts a replacement, kills the leader with kill -9 and
shows the next one taking over with every job (the workers keep running theirs), restarts the
old leader, which catches up and takes over again, draws a progress bar, and ends with a
summary. Every process it starts
is its child and is stopped on the way out, also on Ctrl-C or SIGTERM; the exit code is 0 only
if every job ended as expected.

    scripts/demo.py [--quick] [--dir DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcpsched.client_sync import SyncClient  # noqa: E402
from tcpsched.core.jobs import JobSpec  # noqa: E402
from tcpsched.errors import TcpschedError  # noqa: E402
from tcpsched.testing.processes import (  # noqa: E402
    Proc,
    ProcessGroup,
    free_port,
    wait_for_workers,
    wait_until,
)

SLOTS = 3
COORDINATOR_FLAGS = ["--heartbeat-interval", "0.3", "--heartbeat-timeout", "1.5",
                     "--retry-base", "0.3", "--retry-cap", "2", "--hold-down", "2"]
TERMINAL = ("succeeded", "failed", "cancelled")
BAR_WIDTH = 30


class DemoFailed(Exception):
    """The cluster did not do what the demo shows; printed as one line, exit 1."""


class Screen:
    """A progress bar redrawn in place on a terminal, printed every few seconds otherwise;
    events go on their own line above it."""

    def __init__(self) -> None:
        self.is_tty = sys.stdout.isatty()
        self.bar = ""
        self.printed_at = 0.0

    def event(self, text: str) -> None:
        if self.is_tty and self.bar:
            sys.stdout.write("\r\x1b[2K")
        print(f"  {time.strftime('%H:%M:%S')}  {text}", flush=True)
        if self.is_tty and self.bar:
            sys.stdout.write(self.bar)
            sys.stdout.flush()

    def progress(self, done: int, total: int, stats: dict[str, Any], rate: float) -> None:
        filled = int(BAR_WIDTH * done / total) if total else BAR_WIDTH
        self.bar = (f"  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}  "
                    f"running {stats['running']:<2} pending {stats['pending']:<3} "
                    f"reassigned {stats.get('reassigned', 0)}  {rate:5.1f} jobs/s")
        if self.is_tty:
            sys.stdout.write("\r\x1b[2K" + self.bar)
            sys.stdout.flush()
        elif time.monotonic() - self.printed_at >= 2.0 or done == total:
            self.printed_at = time.monotonic()
            print(self.bar, flush=True)

    def end_bar(self) -> None:
        if self.is_tty and self.bar:
            sys.stdout.write("\n")
        self.bar = ""


def section(title: str) -> None:
    print(f"\n\x1b[1m{title}\x1b[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


class Demo:
    def __init__(self, workdir: Path, quick: bool, seed: int) -> None:
        self.workdir = workdir
        self.quick = quick
        self.rng = random.Random(seed)
        self.group = ProcessGroup(workdir)
        self.screen = Screen()
        self.members = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
        self.address = ",".join(self.members.values())
        self.http = {i: f"127.0.0.1:{free_port()}" for i in self.members}  # dashboards
        self.coordinators: dict[int, Proc] = {}
        self.workers: dict[str, Proc] = {}
        self.client: SyncClient | None = None
        self.ids: list[str] = []
        self.flaky = self.doomed = ""
        self.killed_worker: str | None = None
        self.killed_leader = 0
        self.restarted_after_s: float | None = None
        self.failover_s: float | None = None
        self.leaders: list[tuple[int, int]] = []  # (id, epoch), as they came
        self.cause = ""  # the last fault, which the next reassignments are owed to
        self.reassigned_by_cause: collections.Counter[str] = collections.Counter()

    # -- cluster --------------------------------------------------------------------------------

    def start_coordinator(self, node_id: int, name: str | None = None) -> None:
        web = ["--http", self.http[node_id], *(arg for i, a in self.http.items() if i != node_id
                                              for arg in ("--peer-http", f"{i}@{a}"))]
        self.coordinators[node_id], _ = self.group.peer(node_id, self.members,
                                                        extra=[*COORDINATOR_FLAGS, *web],
                                                        name=name)

    def start_worker(self, name: str) -> None:
        self.workers[name] = self.group.worker(self.address, name, slots=SLOTS)

    def start(self) -> None:
        section("1. a local cluster")
        for node_id in self.members:
            self.start_coordinator(node_id)
        for i in (1, 2, 3):
            self.start_worker(f"w{i}")
        self.client = SyncClient(self.address, connect_timeout=20.0)
        # The highest id leads once it is up and caught up (a lower one may lead meanwhile).
        top = max(self.members)
        wait_until(lambda: self.client is not None and self.client.leader()["id"] == top, 30.0,
                   what=f"c{top} to lead among {self.address}")
        wait_for_workers(self.client, list(self.workers), 30.0)
        leader = self.client.leader()
        self.leaders.append((leader["id"], leader["epoch"]))
        print(f"  coordinators c1, c2, c3 at {self.address}: c{leader['id']} leads "
              f"(the highest id, epoch {leader['epoch']}); workers {', '.join(self.workers)} "
              f"with {SLOTS} slots each")
        print(f"  data and logs in {self.workdir}")
        print(f"  dashboard at http://{self.http[leader['id']]}/ (any coordinator's --http "
              "redirects to the leader's), REST API under /api, metrics at /metrics")
        print("  every change is journaled and on a majority before it is acknowledged: the "
              "leader will be killed")

    # -- load -----------------------------------------------------------------------------------

    def submit(self) -> None:
        assert self.client is not None
        section("2. a mixed load")
        count = 40 if self.quick else 200
        sleeps = [round(self.rng.uniform(0.2, 1.5), 2) for _ in range(count)]
        half = count // 2
        shell = [JobSpec(kind="shell", command=f"sleep {s}; echo slept {s}s on $(hostname)")
                 for s in sleeps[:half]]
        self.ids += self.client.submit_many(shell)
        self.ids += self.client.map("time:sleep", sleeps[half:])
        print(f"  {half} shell jobs (sleep 0.2-1.5 s) and {count - half} Python calls of "
              "time:sleep, priority 0")
        calls = [("math:comb", (40, 20)), ("statistics:fmean", ([1.5, 2.5, 4.0],)),
                 ("operator:mul", (6, 7)), ("platform:python_version", ())]
        for function, args in calls:
            self.ids.append(self.client.submit_call(function, *args, priority=9))
        print(f"  {len(calls)} Python calls at priority 9 (math:comb, statistics:fmean, "
              "operator:mul, platform:python_version): they jump the queue")
        marker = self.workdir / "flaky.marker"
        self.flaky = self.client.submit_shell(
            f"if [ -e {marker} ]; then echo 'worked on a retry'; "
            f"else touch {marker}; echo 'first attempt fails' >&2; exit 1; fi",
            retries=2, priority=5)
        self.doomed = self.client.submit_shell("echo 'this never works' >&2; exit 3",
                                               retries=2, priority=5)
        self.ids += [self.flaky, self.doomed]
        print(f"  a flaky shell job with --retries 2 ({self.flaky}): fails once, then works")
        print(f"  a doomed shell job with --retries 2 ({self.doomed}): fails 3 times, then "
              "stays failed")
        print(f"  submitted {len(self.ids)} jobs")

    # -- watching it run ------------------------------------------------------------------------

    def run(self) -> float:
        """Poll until every job is finished, causing the faults on the way; the seconds it
        took."""
        assert self.client is not None
        section("3. running, with faults")
        total = len(self.ids)
        started = time.monotonic()
        deadline = started + (90 if self.quick else 150)
        seen_reassigned = 0
        states: dict[str, str] = {}
        replaced = False
        samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=8)
        while True:
            stats = self.client.stats()
            done = sum(int(stats[s]) for s in TERMINAL)
            now = time.monotonic()
            samples.append((now, done))
            rate = ((samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
                    if len(samples) > 1 and samples[-1][0] > samples[0][0] else 0.0)
            self.screen.progress(done, total, stats, rate)
            if done >= total:
                break
            if now > deadline:
                raise DemoFailed(f"only {done} of {total} jobs finished after "
                                 f"{now - started:.0f}s")
            for w in self.client.workers():
                if states.get(w["name"]) not in (None, w["state"]):
                    self.screen.event(f"coordinator: worker {w['name']} is now {w['state']}")
                states[w["name"]] = w["state"]
            if int(stats.get("reassigned", 0)) > seen_reassigned:
                gained = int(stats["reassigned"]) - seen_reassigned
                seen_reassigned = int(stats["reassigned"])
                self.reassigned_by_cause[self.cause] += gained
                self.screen.event(f"↻ {gained} job(s) {self.cause} went back to the queue and "
                                  "on to the live workers (attempt + 1)")
            if self.killed_worker is None and done >= total * 0.15:
                self.kill_busiest_worker()
            elif self.killed_worker is not None and not replaced and \
                    states.get(self.killed_worker) == "dead":
                replaced = True
                self.start_worker("w4")
                self.screen.event("started w4 to replace it")
            # One fault at a time, so that each recovery shows on its own.
            if replaced and self.failover_s is None and done >= total * 0.4:
                self.kill_leader()
            elif self.failover_s is not None and self.restarted_after_s is None \
                    and done >= total * 0.6:
                self.restart_old_leader()
            time.sleep(0.2)
        self.screen.end_bar()
        return time.monotonic() - started

    def kill_busiest_worker(self) -> None:
        assert self.client is not None
        workers = [w for w in self.client.workers() if w["state"] == "alive"]
        busiest = max(workers, key=lambda w: w["running"])
        self.killed_worker = busiest["name"]
        self.cause = f"of {busiest['name']}"
        proc = self.workers[busiest["name"]]
        proc.signal(signal.SIGKILL)
        proc.wait(10.0)
        self.screen.event(f"✗ kill -9 {busiest['name']} (pid {proc.pid}) while it runs "
                          f"{busiest['running']} job(s)")

    def kill_leader(self) -> None:
        assert self.client is not None
        before = self.client.stats()
        leader = self.client.leader()
        proc = self.coordinators[leader["id"]]
        proc.signal(signal.SIGKILL)
        proc.wait(10.0)
        self.killed_leader = leader["id"]
        self.screen.event(f"✗ kill -9 the leader c{leader['id']} (pid {proc.pid}) with "
                          f"{before['pending']} pending and {before['running']} running")
        down = time.monotonic()
        self.cause = "running during the failover"

        def next_leader() -> dict[str, Any] | None:
            now = self.client.leader() if self.client is not None else None
            return now if now is not None and now["id"] != leader["id"] else None

        after = wait_until(next_leader, 30.0, what="a new leader")
        self.failover_s = time.monotonic() - down
        self.leaders.append((after["id"], after["epoch"]))
        stats = self.client.stats()
        known = sum(int(stats[s]) for s in ("pending", "running", *TERMINAL))
        if known < len(self.ids):
            raise DemoFailed(f"the new leader knows {known} of {len(self.ids)} jobs")
        self.screen.event(f"★ c{after['id']} leads after {self.failover_s:.1f}s (epoch "
                          f"{after['epoch']}), knowing all {known} job(s); running jobs stay "
                          "on their workers, which follow the new leader by themselves")

    def restart_old_leader(self) -> None:
        assert self.client is not None
        old = self.killed_leader
        down = time.monotonic()
        self.start_coordinator(old, name=f"c{old}-restarted")
        self.screen.event(f"↺ c{old} restarted: it follows and catches up first, then takes "
                          "over (the highest id leads) after its hold-down")

        def leads_again() -> dict[str, Any] | None:
            now = self.client.leader() if self.client is not None else None
            return now if now is not None and now["id"] == old else None

        after = wait_until(leads_again, 30.0, what=f"c{old} to lead again")
        self.restarted_after_s = time.monotonic() - down
        self.leaders.append((after["id"], after["epoch"]))
        self.screen.event(f"★ c{old} leads again after {self.restarted_after_s:.1f}s (epoch "
                          f"{after['epoch']}), nothing lost")

    # -- the end --------------------------------------------------------------------------------

    def summary(self, elapsed_s: float) -> None:
        assert self.client is not None
        section("4. summary")
        records = self.client.wait_records(self.ids, timeout=30.0)
        stats = self.client.stats()
        by_state = collections.Counter(r["state"] for r in records)
        by_worker = collections.Counter(r.get("worker") or "-" for r in records)
        waits: dict[int, list[float]] = collections.defaultdict(list)
        for r in records:
            if r.get("started_at") and r.get("submitted_at") and r["id"] not in \
                    (self.flaky, self.doomed):
                waits[r["priority"]].append(r["started_at"] - r["submitted_at"])
        states = ", ".join(f"{s} {by_state[s]}" for s in ("succeeded", "failed", "cancelled")
                           if by_state[s])
        print(f"  jobs         {len(records)}: {states}")
        causes = "; ".join(f"{n} {cause}" for cause, n in self.reassigned_by_cause.items())
        print(f"  reassigned   {stats.get('reassigned', 0)} job(s) ({causes or 'none seen'}); "
              f"{stats.get('retried', 0)} retried after a failure")
        print(f"  throughput   {len(records) / elapsed_s:.1f} jobs/s over {elapsed_s:.1f}s "
              f"(3 workers x {SLOTS} slots, jobs sleeping 0.2-1.5 s)")
        print("  by worker    " + ", ".join(f"{w} {n}" for w, n in sorted(by_worker.items())))
        print("  queue wait   " + ", ".join(
            f"priority {p}: {statistics.fmean(v):.2f}s" for p, v in sorted(waits.items(),
                                                                           reverse=True)))
        if self.failover_s is not None:
            print(f"  failover     a new leader {self.failover_s:.1f}s after the kill -9; "
                  "leaders " + " -> ".join(f"c{i} (epoch {e})" for i, e in self.leaders))
        if self.restarted_after_s is not None:
            print(f"  rejoin       the old leader led again {self.restarted_after_s:.1f}s after "
                  "its restart (caught up, then its hold-down)")
        self.show_metrics()
        flaky = next(r for r in records if r["id"] == self.flaky)
        doomed = next(r for r in records if r["id"] == self.doomed)
        print(f"  flaky job    {flaky['state']} after {flaky['attempts']} attempts")
        print(f"  doomed job   {doomed['state']} after {doomed['attempts']} attempts: "
              f"{(doomed.get('error') or '').strip()}")
        wrong = [r["id"] for r in records if r["id"] != self.doomed and r["state"] != "succeeded"]
        if wrong:
            raise DemoFailed(f"{len(wrong)} job(s) did not succeed: {', '.join(wrong[:5])}")
        if doomed["state"] != "failed":
            raise DemoFailed(f"the doomed job ended {doomed['state']}, not failed")
        if flaky["attempts"] < 2:
            raise DemoFailed("the flaky job did not need its retry")

    def show_metrics(self) -> None:
        """A few figures of the leader's Prometheus /metrics, as a scraper reads them."""
        from prometheus_client.parser import text_string_to_metric_families

        from tcpsched.testing.http import request

        assert self.client is not None
        leader = self.client.leader()["id"]
        status, _, text = request("GET", f"http://{self.http[leader]}/metrics")
        if status != 200:
            raise DemoFailed(f"GET /metrics on c{leader} answered {status}")
        found = {(s.name, s.labels.get("state", "")): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        print(f"  /metrics     c{leader}: tcpsched_completions_total succeeded="
              f"{found[('tcpsched_completions_total', 'succeeded')]:.0f} failed="
              f"{found[('tcpsched_completions_total', 'failed')]:.0f}, tcpsched_failures_total="
              f"{found[('tcpsched_failures_total', '')]:.0f}, tcpsched_leader_epoch="
              f"{found[('tcpsched_leader_epoch', '')]:.0f} (counted since c{leader} started)")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.group.stop_all()


def _raise_interrupt(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller load (for the tests)")
    parser.add_argument("--dir", default=None, help="keep data and logs here (a temp dir)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    # SIGINT too: a shell starting us in the background may have set it to be ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tcpsched-demo-"))
    demo = Demo(workdir.resolve(), args.quick, args.seed)
    ok = interrupted = False
    try:
        demo.start()
        demo.submit()
        elapsed = demo.run()
        demo.summary(elapsed)
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        demo.screen.end_bar()
        print("\ninterrupted: stopping everything the demo started", file=sys.stderr)
        return 130
    except (DemoFailed, TcpschedError, TimeoutError, subprocess.TimeoutExpired) as exc:
        demo.screen.end_bar()
        print(f"\nerror: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        return 1
    finally:
        # Signals again would interrupt the cleanup itself; let it finish first.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        demo.stop()
        if (ok or interrupted) and args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nstopped every process the demo started. Next: `make cluster` and `make console`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
