"""A full disk never costs an acknowledged job: real coordinators on small tmpfs mounts made by
the test (size and inode limits), filled up, then given room and restarted.

Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests skip and say so. Every mount is
unmounted at teardown, after every process the test started has been stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.client import Client
from tcpsched.errors import TcpschedError, UnavailableError
from tcpsched.testing.processes import Proc, ProcessGroup, free_port, wait_until
from tests.conftest import connect

REQUEST_S = 20.0  # one submit; a hang (the old bug) fails the test instead of stalling it
EXIT_S = 30.0
BIG_COMMAND = "true " + "x" * 60_000  # 60 KB: a journal line spans many pages


class Mounts:
    """Small tmpfs mounts for one test: mount, remount with other limits, fill, unmount."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, name: str, size: str = "2m", inodes: int | None = None) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); run as root to test a "
                        "full disk")
        path = self.root / name
        path.mkdir()
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes is not None else "")
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                  capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            pytest.skip("no mount command here; cannot make a small tmpfs")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        self.mounted.append(path)
        return path

    def remount(self, path: Path, size: str, inodes: int | None = None) -> None:
        options = f"remount,size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        subprocess.run(["mount", "-o", options, str(path)], check=True, timeout=30)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30,
                                  check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                               check=False)
        self.mounted.clear()


@pytest.fixture
def mounts(procs: ProcessGroup, tmp_path: Path) -> Iterator[Mounts]:
    """Tmpfs mounts, unmounted at teardown once every process of `procs` has stopped."""
    made = Mounts(tmp_path)
    try:
        yield made
    finally:
        procs.stop_all()
        made.unmount_all()


def fill_blocks(directory: Path) -> Path:
    """Write a file until the filesystem has no block left; returns it (delete it for room)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk[:size])
    return filler


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files until the filesystem has no inode left; returns them."""
    made = []
    filler = directory / "inode-filler"
    filler.mkdir()
    made.append(filler)
    for index in range(100_000):
        path = filler / str(index)
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made.append(path)
    raise AssertionError("the filesystem never ran out of inodes")


def start(procs: ProcessGroup, data_dir: Path, name: str, port: int,
          extra: tuple[str, ...] = ()) -> tuple[Proc, str]:
    return procs.coordinator(port=port, name=name,
                             extra=["--data-dir", str(data_dir), *extra])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcpsched", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def check_lines(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcpsched.coordinator", "--check",
                           "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, check=False)


def assert_stopped_cleanly(proc: Proc) -> None:
    """Exit 1 after one CRITICAL line naming the cause, and no traceback."""
    assert proc.wait(EXIT_S) == 1, proc.log()
    log = proc.log()
    assert "Traceback" not in log and "exception" not in log.lower(), log
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1 and "No space left on device" in critical[0], log


async def submit(client: Client, command: str) -> str:
    async with asyncio.timeout(REQUEST_S):
        return await client.submit_shell(command)


def submit_until_refused(address: str, command: str, count: int
                         ) -> tuple[list[str], TcpschedError | None]:
    """Submit `command` up to `count` times, one at a time: (acknowledged ids, the error that
    ended it, if one did). Every submit is bounded, so a hang fails instead of stalling."""

    async def run() -> tuple[list[str], TcpschedError | None]:
        acknowledged: list[str] = []
        async with Client(address, connect_timeout=15) as client:
            for _ in range(count):
                try:
                    acknowledged.append(await submit(client, command))
                except TcpschedError as exc:
                    return acknowledged, exc
        return acknowledged, None

    return asyncio.run(run())


def test_disk_full_during_submits_acknowledges_only_what_is_on_disk(
        procs: ProcessGroup, mounts: Mounts) -> None:
    """60 KB submits fill a 2 MiB disk: the submit that meets the full disk gets a clear
    error (no id), the coordinator stops with one line, and after the disk grows and it
    restarts, every acknowledged job is there and the journal has no torn line."""
    data = mounts.mount("data", size="2m")
    port = free_port()
    first, address = start(procs, data, "c1-first", port)
    connect(address).close()
    acknowledged, refusal = submit_until_refused(address, BIG_COMMAND, 200)  # 12 MB > 2 MiB
    assert isinstance(refusal, UnavailableError), refusal
    assert "No space left on device" in str(refusal) and "not acknowledged" in str(refusal)
    assert 10 < len(acknowledged) < 40
    assert_stopped_cleanly(first)

    mounts.remount(data, size="16m")
    checked = check_lines(data)
    assert checked.returncode == 0 and "warning" not in checked.stdout, checked.stdout
    assert f"jobs: {len(acknowledged)} " in checked.stdout, checked.stdout
    _, address = start(procs, data, "c1-second", port)
    with connect(address) as client:
        present = {record["id"] for record in client.list(limit=1000)}
    assert set(acknowledged) == present


def test_a_write_refused_on_a_full_disk_gets_one_clear_error_and_never_an_id(
        procs: ProcessGroup, mounts: Mounts) -> None:
    """With the disk filled behind the coordinator's back, a CLI submit prints one error line
    (exit 3, nothing on stdout), the coordinator exits 1, and once space is freed the restart
    holds exactly the jobs acknowledged before."""
    data = mounts.mount("data", size="2m")
    port = free_port()
    first, address = start(procs, data, "c1-first", port)
    with connect(address) as client:
        before = [client.submit_shell(f"echo {i}") for i in range(3)]
    filler = fill_blocks(data)

    refused = run_cli("--coordinators", address, "submit", "--shell", BIG_COMMAND)
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert "No space left on device" in refused.stderr and "not acknowledged" in refused.stderr
    assert_stopped_cleanly(first)

    filler.unlink()
    _, address = start(procs, data, "c1-second", port)
    with connect(address) as client:
        assert sorted(record["id"] for record in client.list(limit=100)) == sorted(before)


def test_inode_exhaustion_at_compaction_never_hangs_a_submit(
        procs: ProcessGroup, mounts: Mounts) -> None:
    """With no inode left, compaction cannot start its next segment: submits go on being
    acknowledged (the journal keeps them in the current segment), the failure is logged,
    compaction succeeds once inodes are free again, and a restart holds every job."""
    data = mounts.mount("data", size="8m", inodes=64)
    port = free_port()
    first, address = start(procs, data, "c1-first", port, ("--compact-records", "5"))
    connect(address).close()
    fillers = fill_inodes(data)
    acknowledged, refusal = submit_until_refused(address, "echo full", 20)
    assert refusal is None and len(acknowledged) == 20
    with connect(address) as client:
        stats = client.stats()
        assert stats["pending"] == 20 and stats["journal_seq"] >= 20
        assert stats["compactions"] == 0 and stats["compaction_failures"] >= 1
        assert "No space left on device" in stats["compaction_error"]
        assert "compaction failed" in first.log() and "No space left on device" in first.log()

        for path in reversed(fillers):
            path.rmdir() if path.is_dir() else path.unlink()
        more, refusal = submit_until_refused(address, "echo room", 10)
        assert refusal is None and len(more) == 10
        # The snapshot is written in a thread, and the figures are published at a flush: wait
        # for its log line, then one more submit publishes them.
        wait_until(lambda: "compacted:" in first.log(), 30, what="a compaction with inodes")
        last, refusal = submit_until_refused(address, "echo last", 1)
        assert refusal is None
        acknowledged += more + last
        stats = client.stats()
        assert stats["compactions"] >= 1 and stats["compaction_error"] is None
    assert procs.stop(first) == 0
    assert "Traceback" not in first.log()

    _, address = start(procs, data, "c1-second", port, ("--compact-records", "5"))
    with connect(address) as client:
        assert {record["id"] for record in client.list(limit=100)} == set(acknowledged)


def test_disk_full_while_compacting_stops_cleanly_and_loses_nothing(
        procs: ProcessGroup, mounts: Mounts) -> None:
    """Frequent compaction on a 2 MiB disk filled by 60 KB submits: whatever runs out first
    (snapshot, segment or journal write), no submit hangs, the refused one gets a clear
    error, and every acknowledged job is there after the restart."""
    data = mounts.mount("data", size="2m")
    port = free_port()
    first, address = start(procs, data, "c1-first", port, ("--compact-records", "3"))
    connect(address).close()
    acknowledged, refusal = submit_until_refused(address, BIG_COMMAND, 200)  # 12 MB > 2 MiB
    assert isinstance(refusal, UnavailableError) and "No space left" in str(refusal), refusal
    assert_stopped_cleanly(first)
    assert not list(data.glob("*.tmp"))

    mounts.remount(data, size="16m")
    _, address = start(procs, data, "c1-second", port)
    with connect(address) as client:
        assert {record["id"] for record in client.list(limit=1000)} == set(acknowledged)


def test_start_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(
        procs: ProcessGroup, mounts: Mounts) -> None:
    """A coordinator started on a full disk cannot journal its new epoch (the election
    promise): it exits 1 before it listens, with one error line naming the cause, without a
    traceback, and leaves no `*.tmp` behind."""
    data = mounts.mount("data", size="1m")
    fill_blocks(data)
    proc, _ = start(procs, data, "c1", free_port())
    assert proc.wait(EXIT_S) == 1
    log = proc.log()
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert len(errors) == 1, log
    assert "No space left on device" in errors[0] and "journal" in errors[0], errors
    assert "listening on" not in log and "Traceback" not in log, log
    assert not list(data.glob("*.tmp")), sorted(p.name for p in data.iterdir())

