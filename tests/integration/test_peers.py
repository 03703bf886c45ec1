"""Three peer coordinators and two workers, real processes on loopback, killed with real signals.

The highest id leads; a killed leader is replaced by the next one and nothing acknowledged is
lost; a restarted highest id catches up, holds down, and leads again; a leader stopped past the
election timeout steps down when it wakes, and its orders are refused; all three killed at
once and restarted keep every acknowledged job. Shell jobs append their id to an effects file,
so how often each ran is read from disk, not from what the coordinators say.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tcpsched.client_sync import SyncClient
from tcpsched.errors import TcpschedError
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until

TIMING = ["--election-timeout", "0.6", "--hold-down", "1.0", "--heartbeat-interval", "0.2",
          "--heartbeat-timeout", "1.5"]
WAIT_S = 60.0


def start_group(procs: ProcessGroup, extra: list[str] | None = None):  # type: ignore[no-untyped-def]
    group = procs.group(3, extra=[*TIMING, *(extra or [])])
    addresses = ",".join(address for _, address in group.values())
    return group, addresses


def leader_id(addresses: str) -> int:
    with SyncClient(addresses, connect_timeout=5.0) as client:
        return int(client.leader()["id"])


def wait_leader(addresses: str, node_id: int, timeout: float = 20.0) -> None:
    def check() -> bool:
        try:
            return leader_id(addresses) == node_id
        except TcpschedError:
            return False

    wait_until(check, timeout, what=f"coordinator {node_id} to lead")


class Submitter:
    """Submits shell jobs that append their number to `effects` until stopped; remembers
    every submit that was acknowledged (the id the coordinator answered with)."""

    def __init__(self, addresses: str, effects: Path) -> None:
        self.addresses = addresses
        self.effects = effects
        self.acknowledged: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        with SyncClient(self.addresses, connect_timeout=20.0) as client:
            while not self._stop.is_set():
                n += 1
                try:
                    job_id = client.submit_shell(f"echo {n} >> {self.effects}")
                except TcpschedError as exc:
                    self.errors.append(str(exc))
                    continue
                self.acknowledged[job_id] = n

    def wait_count(self, count: int, timeout: float = WAIT_S) -> None:
        wait_until(lambda: len(self.acknowledged) >= count, timeout,
                   what=f"{count} acknowledged submits")

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(60)
        return dict(self.acknowledged)


def check_effects(addresses: str, acknowledged: dict[str, int], effects: Path) -> Counter[int]:
    """Every acknowledged job succeeded; the effects file shows each of them ran."""
    with SyncClient(addresses, connect_timeout=20.0) as client:
        records = client.gather(list(acknowledged), timeout=WAIT_S)
    assert [r["state"] for r in records] == ["succeeded"] * len(records)
    runs = Counter(int(line) for line in effects.read_text().split())
    for n in acknowledged.values():
        assert runs[n] >= 1, n
    return runs


def test_killed_leader_is_replaced_and_keeps_every_acknowledged_job(procs: ProcessGroup,
                                                                     tmp_path: Path) -> None:
    """kill -9 of leader 3 during submits: 2 leads within 2 s, every acknowledged job is there
    and runs; restarted, 3 catches up and leads again with the same jobs."""
    group, addresses = start_group(procs)
    for name in ("w1", "w2"):
        procs.worker(addresses, name, slots=4)
    wait_leader(addresses, 3)
    with SyncClient(addresses) as client:
        wait_for_workers(client, ["w1", "w2"])
    effects = tmp_path / "effects"
    submitter = Submitter(addresses, effects).start()
    submitter.wait_count(50)
    killed_at = time.monotonic()
    group[3][0].signal(signal.SIGKILL)
    wait_leader(addresses, 2, timeout=10.0)
    failover_s = time.monotonic() - killed_at
    before = len(submitter.acknowledged)
    submitter.wait_count(before + 50)
    acknowledged = submitter.stop()
    assert failover_s < 2.0, failover_s
    check_effects(addresses, acknowledged, effects)

    procs.peer(3, {i: a for i, (_, a) in group.items()}, TIMING, name="c3-restarted")
    wait_leader(addresses, 3)
    with SyncClient(addresses) as client:
        records = [client.status(job_id) for job_id in acknowledged]
    assert {r["id"] for r in records} == set(acknowledged)
    assert all(r["state"] == "succeeded" for r in records)


def test_stopped_leader_steps_down_when_it_wakes(procs: ProcessGroup, tmp_path: Path) -> None:
    """SIGSTOP the leader past the election timeout: the highest of the others leads; SIGCONT:
    the woken one finds a higher epoch, steps down (its hold-down keeps it from taking over
    again during the test), and no job runs twice. Whoever leads first (3, or 2 when 3 came
    up late on a loaded machine and the hold-down keeps it from taking over) is the one
    stopped."""
    group, addresses = start_group(procs, ["--hold-down", "30"])
    for name in ("w1", "w2"):
        procs.worker(addresses, name, slots=2)
    first = wait_until(lambda: leader_id(addresses), 20.0, what="a leader")
    successor = max(i for i in group if i != first)
    effects = tmp_path / "effects"
    submitter = Submitter(addresses, effects).start()
    submitter.wait_count(20)
    group[first][0].signal(signal.SIGSTOP)
    try:
        wait_leader(addresses, successor, timeout=15.0)
        submitter.wait_count(len(submitter.acknowledged) + 20)
    finally:
        group[first][0].signal(signal.SIGCONT)
    wait_until(lambda: "stops leading" in group[first][0].log(), 15.0,
               what="the woken leader to step down")
    submitter.wait_count(len(submitter.acknowledged) + 20)
    acknowledged = submitter.stop()
    assert leader_id(addresses) == successor
    runs = check_effects(addresses, acknowledged, effects)
    assert sum(runs.values()) >= len(acknowledged)


def test_a_stopped_follower_wakes_following_the_same_leader(procs: ProcessGroup) -> None:
    """SIGSTOP a follower past the election timeout, then SIGCONT: on waking, its election
    timer is due before it has read what the leader sent meanwhile. It reads first, so it
    neither calls the leader lost nor starts an election, and the epoch stays."""
    group, addresses = start_group(procs)
    first, follower = 3, 2  # the one that would lead next, were the leader lost
    wait_leader(addresses, first)
    with SyncClient(addresses, connect_timeout=5.0) as client:
        epoch = client.stats()["epoch"]
    proc = group[follower][0]
    wait_until(lambda: f"became follower of {first}" in proc.log(), 20.0,
               what=f"coordinator {follower} to follow {first}")
    proc.signal(signal.SIGSTOP)
    try:
        time.sleep(2.5 * float(TIMING[TIMING.index("--election-timeout") + 1]))  # the stall
    finally:
        proc.signal(signal.SIGCONT)
    with SyncClient(addresses, connect_timeout=5.0) as client:
        # The leader hears it again once it has read and answered what waited for it.
        wait_until(lambda: client.coordinators()[follower - 1]["reachable"], 15.0,
                   what="the woken follower to be heard again")
        stats = client.stats()
    assert (stats["leader"], stats["epoch"]) == (first, epoch)
    log = proc.log()
    assert "lost leader" not in log
    assert "own loop stalled" in log
    assert "became candidate" not in log.split("own loop stalled", 1)[1]


def test_all_coordinators_killed_during_submits_keep_every_acknowledged_job(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """kill -9 all three while submits stream in; restarted, every acknowledged job is there."""
    group, addresses = start_group(procs)
    procs.worker(addresses, "w1", slots=4)
    wait_leader(addresses, 3)
    effects = tmp_path / "effects"
    submitter = Submitter(addresses, effects).start()
    submitter.wait_count(60)
    for proc, _ in group.values():
        proc.signal(signal.SIGKILL)
    for proc, _ in group.values():
        proc.wait(10)
    acknowledged = submitter.stop()
    members = {i: a for i, (_, a) in group.items()}
    for i in members:
        procs.peer(i, members, TIMING, name=f"c{i}-restarted")
    wait_leader(addresses, 3)
    check_effects(addresses, acknowledged, effects)


def test_a_follower_behind_the_leaders_window_gets_its_snapshot(procs: ProcessGroup,
                                                                tmp_path: Path) -> None:
    """A follower down while the others compact has nothing to catch up from but the leader's
    snapshot: it is sent, installed, and the follower ends up with every job."""
    group, addresses = start_group(procs, ["--compact-records", "30"])
    wait_leader(addresses, 3)
    members = {i: a for i, (_, a) in group.items()}
    assert procs.stop(group[1][0]) == 0
    with SyncClient(addresses) as client:
        ids = client.map("operator:pos", range(200), batch_size=5)
    # Restart the leader too, so its log window holds only what followed its last snapshot.
    assert procs.stop(group[3][0]) == 0
    procs.peer(3, members, TIMING, name="c3-restarted")
    wait_leader(addresses, 3)
    with SyncClient(addresses) as client:
        ids += client.map("operator:pos", range(10), batch_size=5)
    follower, _ = procs.peer(1, members, TIMING, name="c1-restarted")
    wait_until(lambda: "installed the snapshot of leader 3" in follower.log(), WAIT_S,
               what="the follower to install the leader's snapshot")
    with SyncClient(addresses) as client:
        total = len(client.list(limit=1000))
        # Once the follower acknowledges entries past the snapshot, it is caught up.
        wait_until(lambda: client.submit_call("operator:pos", 1), WAIT_S, what="a submit")
    assert total == len(ids)
    for proc in list(procs.procs):
        procs.stop(proc)
    check = subprocess.run([sys.executable, "-m", "tcpsched.coordinator", "--check",
                            "--data-dir", str(procs.workdir / "c1")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert f"jobs: {len(ids) + 1} " in check.stdout, check.stdout


def test_coordinators_command_shows_the_group(procs: ProcessGroup) -> None:
    """`coordinators` (CLI, --json) lists every member with its role, epoch, log position,
    lag and reachability; the leader sees its followers caught up."""
    _, addresses = start_group(procs)
    wait_leader(addresses, 3)
    with SyncClient(addresses) as client:
        client.map("operator:pos", range(20), batch_size=5)

    def caught_up() -> list | None:  # type: ignore[type-arg]
        result = subprocess.run(
            [sys.executable, "-m", "tcpsched", "--coordinators", addresses, "--json",
             "coordinators"], capture_output=True, text=True, check=False, env=procs.env)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        return rows if all(r["lag"] == 0 for r in rows) else None

    rows = wait_until(caught_up, WAIT_S, what="followers caught up")
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert [r["role"] for r in rows] == ["follower", "follower", "leader"]
    assert all(r["reachable"] for r in rows)
    assert len({r["epoch"] for r in rows}) == 1
    table = subprocess.run([sys.executable, "-m", "tcpsched", "--coordinators", addresses,
                            "coordinators"], capture_output=True, text=True, check=True,
                           env=procs.env).stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "ADDRESS", "ROLE"]
    assert "leader" in table
