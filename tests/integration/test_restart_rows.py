"""A coordinator restarted on a snapshot block and a journal tail of plain submits (jobs kept as
rows, queued as one run) serves them like any jobs: status, cancel, dispatch, new submits."""

from __future__ import annotations

from tcpsched.testing.datadirs import build_data_dir, queued_job_ids
from tcpsched.testing.processes import ProcessGroup, free_port
from tests.conftest import connect

JOBS = 300  # 270 in one snapshot block, 30 in the journal tail
WAIT_S = 60.0


def test_jobs_restarted_as_rows_run_cancel_and_keep_their_order(procs: ProcessGroup) -> None:
    """Every recovered job runs once with its own arguments (a cancelled one does not), a job
    submitted after the restart runs too, and one worker slot takes them in submission order."""
    build_data_dir(procs.workdir / "c1", JOBS, journal_share=0.1)
    ids = queued_job_ids(JOBS)
    _proc, address = procs.coordinator(port=free_port(), extra=["--log-level", "warning"])
    client = connect(address, timeout=60)
    try:
        assert client.status(ids[3])["args"] == [3, 1]
        assert client.cancel(ids[5])["state"] == "cancelled"
        assert client.cancel(ids[JOBS - 2])["state"] == "cancelled"  # from the journal tail
        later = client.submit_call("operator:add", 20, 22)
        procs.worker(address, "w1", slots=1, extra=["--prefetch", "0"])
        records = client.wait_records([*ids, later], timeout=WAIT_S)
    finally:
        client.close()
    by_id = {record["id"]: record for record in records}
    cancelled = {ids[5], ids[JOBS - 2]}
    for index, job_id in enumerate(ids):
        record = by_id[job_id]
        if job_id in cancelled:
            assert record["state"] == "cancelled" and record["started_at"] is None
        else:
            assert (record["state"], record["result"]) == ("succeeded", index + 1)
    assert (by_id[later]["state"], by_id[later]["result"]) == ("succeeded", 42)
    started = sorted((by_id[job_id]["started_at"], job_id) for job_id in ids
                     if job_id not in cancelled)
    assert [job_id for _, job_id in started] == [j for j in ids if j not in cancelled]
