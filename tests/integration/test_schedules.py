"""Cron and interval schedules with real processes: a schedule fires every tick once across a
killed leader, and the CLI adds, shows, pauses, resumes and removes schedules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tcpsched.client_sync import SyncClient
from tcpsched.core.jobs import JobSpec
from tcpsched.core.schedules import tick_key
from tcpsched.testing.processes import ProcessGroup, wait_for_workers, wait_until
from tests.integration.test_peers import start_group, wait_leader

WAIT_S = 30.0


def fired(client: SyncClient, name: str) -> int:
    return int(client.schedule_show(name)["fired"])


def test_every_second_fires_each_tick_once_across_a_leader_kill(procs: ProcessGroup,
                                                                tmp_path: Path) -> None:
    """kill -9 of the leader while a schedule fires every second: the next leader goes on
    from the last fired tick; every tick is fired once or folded into the fire after the
    gap (none twice), and each fire is one job keyed NAME@TICK."""
    group, addresses = start_group(procs)
    procs.worker(addresses, "w1", slots=4)
    wait_leader(addresses, 3)
    with SyncClient(addresses, connect_timeout=20.0) as client:
        wait_for_workers(client, ["w1"])
        client.schedule_add("tick", JobSpec(kind="shell", command="true"), every=1.0)
        wait_until(lambda: fired(client, "tick") >= 3, WAIT_S, what="3 fires")
        group[3][0].signal(signal.SIGKILL)
        wait_leader(addresses, 2)
        before = fired(client, "tick")
        wait_until(lambda: fired(client, "tick") >= before + 3, WAIT_S,
                   what="3 fires after the failover")
        client.schedule_pause("tick")
        shown = client.schedule_show("tick", count=0)
        jobs = [j for j in client.list(limit=100_000) if str(j.get("key", "")).startswith(
            "tick@")]
        records = client.gather([j["id"] for j in jobs], timeout=WAIT_S)
    keys = [j["key"] for j in jobs]
    assert len(keys) == len(set(keys)) == shown["fired"]
    anchor = float(int(shown["created_at"]) + 1)  # --every counts from the next whole second
    ticks = round(shown["last_tick"] - anchor)
    assert shown["fired"] + shown["skipped"] + shown["missed"] == ticks
    assert shown["skipped"] == 0
    fired_ticks = {run["tick_at"] for run in shown["runs"] if run["job"] is not None}
    assert {tick_key("tick", t) for t in fired_ticks} <= set(keys)
    assert all(r["state"] == "succeeded" for r in records)


def run_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TCPSCHED_")}
    return subprocess.run([sys.executable, "-m", "tcpsched", "--coordinators", address, *args],
                          capture_output=True, text=True, timeout=60, env=clean, check=False)


def cli_json(address: str, *args: str) -> Any:
    done = run_cli(address, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_adds_shows_pauses_resumes_and_removes(procs: ProcessGroup) -> None:
    """`schedule add/show/list/pause/resume/remove` through the CLI: show gives next fire
    times and last runs with their states; a paused schedule has no next fire; removed, it is
    gone (exit 2 for show); a bad cron is one line and exit 2."""
    _, address = procs.coordinator()
    procs.worker(address, "w1")
    with SyncClient(address, connect_timeout=20.0) as client:
        wait_for_workers(client, ["w1"])
    added = cli_json(address, "schedule", "add", "beat", "--every", "1", "--no-overlap",
                     "--shell", "echo beat")
    assert added["name"] == "beat" and added["no_overlap"] is True and len(added["next"]) == 1
    paris = cli_json(address, "schedule", "add", "paris", "--cron", "0 9 * * MON-FRI",
                     "--tz", "Europe/Paris", "--shell", "true")
    assert paris["next"][0].endswith(("T08:00:00Z", "T07:00:00Z"))  # 09:00 CET or CEST

    def succeeded_run() -> bool:
        runs = cli_json(address, "schedule", "show", "beat")["runs"]
        return any(run["state"] == "succeeded" for run in runs)

    wait_until(succeeded_run, WAIT_S, what="a run of beat that succeeded")
    text = run_cli(address, "schedule", "show", "beat", "--next", "3")
    assert text.returncode == 0, text.stderr
    assert "next fires:" in text.stdout and "last runs (newest first):" in text.stdout
    assert "succeeded" in text.stdout
    assert len(cli_json(address, "schedule", "show", "beat", "--next", "3")["next"]) == 3

    paused = cli_json(address, "schedule", "pause", "beat")
    assert paused["paused"] is True and paused["next"] == []
    assert "paused" in run_cli(address, "schedule", "list").stdout
    count = cli_json(address, "schedule", "show", "beat")["fired"]
    resumed = cli_json(address, "schedule", "resume", "beat")
    assert resumed["paused"] is False
    wait_until(lambda: cli_json(address, "schedule", "show", "beat")["fired"] > count,
               WAIT_S, what="a fire after resume")

    assert cli_json(address, "schedule", "remove", "beat")["removed"] is True
    assert [s["name"] for s in cli_json(address, "schedule", "list")] == ["paris"]
    gone = run_cli(address, "schedule", "show", "beat")
    assert gone.returncode == 2 and gone.stderr.strip() == "error: no schedule named 'beat'"
    bad = run_cli(address, "schedule", "add", "bad", "--cron", "* * *", "--shell", "true")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "bad cron expression" in bad.stderr
