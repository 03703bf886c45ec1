"""The Dask side of `scripts/bench.py --compare dask`: the same work on Dask distributed.

`dask.distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)` on
127.0.0.1 (no dashboard), started for one measurement and closed after it, so that it costs
nothing while tcpsched is measured in the same run. Throughput is `Client.map(abs, range(n))`
then `gather` (as ours: `SyncClient.map` + `gather` of `builtins:abs`); latency is one
`submit(abs, i).result()` at a time. `pure=False` so Dask runs every call rather than reusing
a result by its key. `distributed` comes from the `bench` extra (`pip install -e '.[bench]'`);
without it `unavailable()` says why and bench.py skips the comparison.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from typing import Any

DASK_WORKERS = 2
DASK_THREADS = 1
DASK_START_S = 120.0


def unavailable() -> str | None:
    """Why Dask cannot be measured here, or None if it can."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        return (f"dask.distributed is not installed ({exc}); `pip install -e '.[bench]'` or "
                "`make bench` installs it")
    return None


@contextlib.contextmanager
def dask_client() -> Iterator[Any]:
    """A LocalCluster of 2 worker processes x 1 thread and a client on it; closed after."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        cluster = LocalCluster(n_workers=DASK_WORKERS, threads_per_worker=DASK_THREADS,
                               processes=True, host="127.0.0.1", dashboard_address=None,
                               silence_logs=logging.ERROR)
    try:
        client = Client(cluster, timeout=DASK_START_S)
        try:
            client.wait_for_workers(DASK_WORKERS, timeout=DASK_START_S)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def throughput(client: Any, jobs: int) -> float:
    """jobs/s of `map(abs, range(jobs))` + `gather`, results checked."""
    client.submit(abs, -1, pure=False).result()  # warm: the first task ships the function
    start = time.perf_counter()
    futures = client.map(abs, range(jobs), pure=False)
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    if list(results) != list(range(jobs)):
        raise RuntimeError("dask: results do not match the submitted arguments")
    return jobs / elapsed


def latency_ms(client: Any, samples: int) -> list[float]:
    """Sorted ms of `samples` sequential submit -> result round trips."""
    for i in range(min(20, samples)):
        client.submit(abs, i, pure=False).result()
    out = []
    for i in range(samples):
        start = time.perf_counter()
        if client.submit(abs, -i, pure=False).result() != i:
            raise RuntimeError("dask: a wrong result")
        out.append((time.perf_counter() - start) * 1000.0)
    return sorted(out)
