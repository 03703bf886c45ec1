"""A coordinator restarted on a data directory of 20,000 queued jobs (snapshot + journal tail,
written with the real storage code) recovers every one of them, fields intact."""

from __future__ import annotations

from tcpsched.testing.datadirs import build_data_dir, queued_job_ids
from tcpsched.testing.processes import ProcessGroup, free_port
from tests.conftest import connect

JOBS = 20_000
PAGE = 5_000


def test_restart_with_twenty_thousand_jobs_recovers_every_job(procs: ProcessGroup) -> None:
    """Every job of the snapshot and of the journal tail is back, pending, with its arguments."""
    build_data_dir(procs.workdir / "c1", JOBS, journal_share=0.1)
    expected = queued_job_ids(JOBS)
    _proc, address = procs.coordinator(port=free_port(), extra=["--log-level", "warning"])
    client = connect(address, timeout=120)
    stats = client.stats()
    assert (stats["pending"], stats["running"], stats["submitted"]) == (JOBS, 0, JOBS)
    seen: dict[str, dict[str, object]] = {}
    after = None
    while True:
        page, after = client.list_page("pending", PAGE, after)
        seen.update((record["id"], record) for record in page)
        if after is None:
            break
    assert set(seen) == set(expected)
    # Newest first: the last job came from the journal tail, the first from the snapshot.
    for index in (0, JOBS - JOBS // 10 - 1, JOBS - JOBS // 10, JOBS - 1):
        record = seen[expected[index]]
        assert (record["function"], record["args"], record["state"]) == (
            "operator:add", [index, 1], "pending")
    client.close()
