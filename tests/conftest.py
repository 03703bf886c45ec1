"""Shared fixtures: real processes on loopback, always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpsched.client_sync import SyncClient
from tcpsched.testing.processes import ProcessGroup, wait_until


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessGroup]:
    """A process group whose every process is stopped at teardown, pass or fail."""
    group = ProcessGroup(tmp_path / "run")
    try:
        yield group
    finally:
        group.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(group.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def connect(address: str, timeout: float = 15.0, **options: object) -> SyncClient:
    """A SyncClient once the coordinator at `address` answers."""
    client = SyncClient(address, connect_timeout=timeout, **options)  # type: ignore[arg-type]
    wait_until(client.leader, timeout, what=f"coordinator at {address}")
    return client


from hypothesis import HealthCheck, settings  # noqa: E402

# Two shared cores: wall-clock deadlines would make property tests flaky, not stricter.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("default")
