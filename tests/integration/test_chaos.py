"""`scripts/chaos.py` end to end: a short seeded run against three real coordinators passes its
own total-queue check and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def processes_under(directory: Path) -> list[str]:
    """Processes whose command line or working directory mentions `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(directory) in cmdline or cwd.startswith(str(directory)):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def test_a_short_chaos_run_loses_nothing_and_stops_everything(tmp_path: Path) -> None:
    """12 s of seeded harm (leader, followers, workers): nothing lost or unexpected, every
    acknowledged job terminal, exit 0, and no coordinator, worker or shell job left running."""
    workdir = tmp_path / "chaos"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--duration", "12", "--seed", "7",
         "--interval", "2", "--settle", "60", "--workdir", str(workdir), "--json"],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT)
    leftovers = processes_under(workdir)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    report = json.loads(run.stdout)
    assert report["lost"] == 0 and report["unexpected"] == 0 and report["not_terminal"] == 0
    assert report["acknowledged"] > 20
    assert report["completed"] + report["failed"] == report["acknowledged"]
    assert sum(report["harm"].values()) >= 3, report["harm"]
    assert not leftovers, leftovers
    assert (workdir / "effects").exists()
