"""Data directories of many queued jobs, written with the real storage code (for the restart
benchmark and the restart tests): a snapshot of most of them and a journal tail of the rest.

Submitting a million jobs over the wire would measure the network, not recovery; writing the
files with `JobTable`, `write_snapshot` and `encode_line` gives exactly what a coordinator
leaves, in a fraction of the time.
"""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path
from typing import Any

from tcpsched.core.jobs import JobRecord, JobSpec
from tcpsched.core.records import job_to_dict
from tcpsched.core.state import JobTable
from tcpsched.runtime.journal_lines import encode_line, segment_name
from tcpsched.runtime.snapshot import write_snapshot


def queued_job_ids(jobs: int, seed: int = 1) -> list[str]:
    """The ids `build_data_dir(..., jobs, seed=seed)` gives its jobs, in submission order."""
    return [record["job"]["id"] for record in _submits(jobs, seed, 0.0)]


def _submits(jobs: int, seed: int, now: float) -> Any:
    rng = random.Random(seed)
    for i in range(jobs):
        spec = JobSpec(kind="call", function="operator:add", args=(i, 1),
                       key=f"{rng.getrandbits(128):032x}")
        job = JobRecord(id=f"{rng.getrandbits(48):012x}", seq=i + 1, spec=spec,
                        submitted_at=now + i * 1e-6)
        yield {"op": "submit", "job": job_to_dict(job)}


def build_data_dir(data_dir: Path, jobs: int, journal_share: float = 0.1, seed: int = 1
                   ) -> float:
    """Write `jobs` queued call jobs (`operator:add`, two integer arguments, an idempotency key
    each) into the new directory `data_dir`, `journal_share` of them as journal records after
    the snapshot; returns the seconds it took."""
    started = time.perf_counter()
    in_snapshot = jobs - round(jobs * journal_share)
    records = _submits(jobs, seed, time.time())
    data_dir.mkdir(parents=True)
    was_enabled = gc.isenabled()
    gc.disable()  # only allocations: collections would walk them all again and again
    try:
        table = JobTable()
        for _ in range(in_snapshot):
            table.apply(next(records))
        write_snapshot(data_dir, in_snapshot, table.image())
        del table
        with open(data_dir / segment_name(in_snapshot + 1), "wb") as f:
            for seq, record in enumerate(records, in_snapshot + 1):
                f.write(encode_line(seq, record))
    finally:
        if was_enabled:
            gc.enable()
    return time.perf_counter() - started
