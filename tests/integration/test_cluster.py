"""scripts/cluster.py (`make cluster/status/stop`) and scripts/demo.py (`make demo`), run as a
user runs them: as separate processes, with their own ports, checked through pids."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.testing.http import get
from tcpsched.testing.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120.0


def script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an unreaped dead process keeps its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, found through /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A cluster directory that is always stopped at teardown, whatever the test did."""
    path = tmp_path / "run"
    try:
        yield path
    finally:
        script("cluster.py", "stop", "--dir", str(path), "--grace", "2", cwd=tmp_path)


pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc")


def test_start_status_stop_touch_exactly_their_processes(run_dir: Path, tmp_path: Path) -> None:
    """start leaves a coordinator and its workers running after it returns; status shows
    them; stop ends exactly those pids, and an unrelated process survives."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        port, http_port = free_port(), free_port()
        started = script("cluster.py", "start", "--dir", str(run_dir), "--workers", "2",
                         "--slots", "2", "--port", str(port), "--policy", "random",
                         "--coordinators", "1", "--http-port", str(http_port),
                         cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout and "tcpsched.console" in started.stdout
        assert f"dashboard: http://127.0.0.1:{http_port}/" in started.stdout
        assert get(f"http://127.0.0.1:{http_port}/api/stats")["policy"] == "random"
        pids = {p.stem: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}
        assert set(pids) == {"c1", "w1", "w2"}
        assert all(is_running(pid) for pid in pids.values())

        again = script("cluster.py", "start", "--dir", str(run_dir), "--workers", "2",
                       "--slots", "2", "--port", str(port), "--policy", "random",
                         "--coordinators", "1",
                       cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stdout, again.stderr
        assert {p.stem: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")} == pids

        status = script("cluster.py", "status", "--dir", str(run_dir), "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert {p["name"]: p["pid"] for p in report["processes"]} == pids
        assert all(p["alive"] for p in report["processes"])
        assert sorted(w["name"] for w in report["workers"]) == ["w1", "w2"]
        assert report["stats"]["policy"] == "random"
        shown = script("cluster.py", "addresses", "--dir", str(run_dir), "--coordinators", "1",
                       cwd=tmp_path)
        assert shown.stdout.strip() == f"127.0.0.1:{port}"

        stopped = script("cluster.py", "stop", "--dir", str(run_dir), cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert not any(is_running(pid) for pid in pids.values())
        assert not list((run_dir / "pids").glob("*.pid"))
        assert bystander.poll() is None
        after = script("cluster.py", "status", "--dir", str(run_dir), cwd=tmp_path)
        assert after.returncode == 1 and "no cluster" in after.stdout
    finally:
        bystander.kill()
        bystander.wait()


def test_start_after_kill_9_restarts_just_that_member(run_dir: Path, tmp_path: Path) -> None:
    """After kill -9 of the coordinator, start starts only it again, at once on the same port
    (its TIME_WAIT sockets do not count as busy), leaves the workers alone, and stop tracks
    the new process; restart NAME replaces one member; output into a closed pipe is quiet."""
    port = free_port()
    common = ("--dir", str(run_dir), "--workers", "2", "--slots", "1", "--port", str(port),
              "--coordinators", "1", "--http-port", "0")
    started = script("cluster.py", "start", *common, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    pids = {p.stem: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}
    pidfd = os.pidfd_open(pids["c1"])
    try:
        os.kill(pids["c1"], signal.SIGKILL)
        # Not our child, so not ours to wait for: its pidfd turns readable once it has ended.
        assert select.select([pidfd], [], [], TIMEOUT_S)[0]
    finally:
        os.close(pidfd)
    again = script("cluster.py", "start", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "started c1;" in again.stdout
    now = {p.stem: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}
    assert now["w1"] == pids["w1"] and now["w2"] == pids["w2"]
    assert now["c1"] != pids["c1"] and is_running(now["c1"])

    restarted = script("cluster.py", "restart", "w2", "--dir", str(run_dir), "--grace", "5",
                       cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr
    w2 = int((run_dir / "pids" / "w2.pid").read_text())
    assert w2 != now["w2"] and is_running(w2) and not is_running(now["w2"])

    # `make cluster | head -1`: a reader that leaves early gets no traceback.
    piped = subprocess.run(f"{sys.executable} {ROOT / 'scripts' / 'cluster.py'} start "
                           f"{' '.join(common)} | head -c 1", shell=True, cwd=tmp_path,
                           capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr

    stopped = script("cluster.py", "stop", "--dir", str(run_dir), "--grace", "5", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(is_running(pid) for pid in (now["c1"], now["w1"], w2))


def test_stop_leaves_a_reused_pid_alone(run_dir: Path, tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another program is removed, not signalled."""
    port = free_port()
    started = script("cluster.py", "start", "--dir", str(run_dir), "--workers", "1",
                     "--port", str(port), cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    real = int((run_dir / "pids" / "w1.pid").read_text())
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run_dir / "pids" / "w1.pid").write_text(f"{stranger.pid}\n")
        stopped = script("cluster.py", "stop", "--dir", str(run_dir), "--grace", "5",
                         cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert stranger.poll() is None
        assert not (run_dir / "pids" / "w1.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()
        with contextlib.suppress(ProcessLookupError):  # the real w1, orphaned by the test
            os.kill(real, signal.SIGKILL)


def test_demo_exits_0_and_leaves_nothing_running(tmp_path: Path) -> None:
    """The short demo runs through, exits 0, and every process it started is gone."""
    seen: set[int] = set()
    with subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo.py"), "--quick",
                           "--dir", str(tmp_path / "demo")], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as demo:
        try:
            assert demo.stdout is not None
            output = []
            for line in demo.stdout:  # each line is a moment to look at its children
                output.append(line)
                seen |= descendants(demo.pid)
            output_code = demo.wait(TIMEOUT_S)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    assert output_code == 0, "".join(output)
    assert "summary" in "".join(output)
    assert seen, "the demo started no process we could see"
    assert not [pid for pid in seen if is_running(pid)]
