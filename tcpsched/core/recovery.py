"""How a new leader rebuilds what it derives from the table: the queue, the dependency and
group indexes, and placeholders for the workers that held running jobs.

Nothing here is journaled: it is all a function of the table (and the two clocks), so every
node that takes over derives the same.
"""

from __future__ import annotations

import itertools
import operator
from typing import TYPE_CHECKING, Any

from tcpsched.core.jobmap import stored_values
from tcpsched.core.jobs import JobState
from tcpsched.core.workers import WorkerEntry

if TYPE_CHECKING:
    from tcpsched.core.deps import DependencyTracker
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.groups import GroupIndex
    from tcpsched.core.jobqueue import JobQueue
    from tcpsched.core.state import JobTable


def recover(*, table: JobTable, queue: JobQueue, dependencies: DependencyTracker,
            groups: GroupIndex, workers: dict[str, WorkerEntry], detector: FailureDetector,
            now: float, wall: float) -> None:
    """Rebuild the queue from the table; running jobs wait for their worker to come back.

    A worker that held running jobs when the leader stopped gets `heartbeat_timeout_s` to
    re-register with them; until then it is a suspect placeholder, and then it is dead and
    its jobs are requeued like any lost worker's.
    """
    # Finish times and delays come back in wall-clock time: from here on they are on
    # this process's monotonic clock.
    to_monotonic_s = now - wall
    table.rebase_finished(to_monotonic_s)
    # A restarted table keeps its plain snapshot rows as rows until they are read
    # (core/jobmap.py): a row is [id, seq, state, submitted_at, kind, target, args, priority,
    # key] with every other field at its default (no delay, no dependency, no group, no
    # worker), so it is queued straight from the row, and the passes below that read more
    # than a row holds take the records only.
    stored = stored_values(table.jobs)
    rows = [r for r in stored if type(r) is tuple]
    # The passes over a million jobs are skipped where the counts show them empty.
    jobs = [] if len(rows) == len(stored) else [
        j for j in stored if type(j) is not tuple] if rows else stored
    del stored
    pending_state = JobState.PENDING
    pending_text = pending_state.value
    # Comprehensions that build the queue's heap entries directly (`JobQueue.load_entries`):
    # over a million jobs they cost half what a loop does. The delayed pass is skipped when
    # the first shows every pending job ready.
    ready_rows = rows if not jobs and table.counts[pending_state] == len(rows) else [
        r for r in rows if r[2] == pending_text]
    in_run = 0
    if _one_run(ready_rows):
        # The common restart: queued jobs of one priority, in seq order (snapshot order),
        # queued as they are instead of as a heap entry each.
        queue.load_run(ready_rows, ready_rows[0][7], table.seq_of)
        ready = []
        in_run = len(ready_rows)
    else:
        ready = [(-r[7], r[1], r[0]) for r in ready_rows]
    del ready_rows
    ready += [(-j.spec.priority, j.seq, j.id)
              for j in jobs if j.state is pending_state and j.not_before <= 0.0]
    delayed = [] if in_run + len(ready) == table.counts[pending_state] else [
        (j.not_before + to_monotonic_s, j.seq, j.id, j.spec.priority)
        for j in jobs if j.state is pending_state and j.not_before > 0.0]
    queue.load_entries(ready, delayed)
    # One pass finds the jobs either index needs (most jobs have neither).
    linked = [j for j in jobs if j.spec.after or j.spec.group is not None]
    dependencies.rebuild(linked)
    groups.rebuild(linked)
    if not table.counts[JobState.RUNNING]:
        return
    for job in jobs:
        if job.state is JobState.RUNNING and job.worker is not None:
            entry = workers.get(job.worker)
            if entry is None:
                entry = workers[job.worker] = WorkerEntry(
                    name=job.worker, conn=None, slots=1, tags=(), address="",
                    registered_at=now,
                )  # fmt: skip
                detector.watch(job.worker, now, connected=False)
            entry.running[job.id] = job.attempts
            entry.slots = max(entry.slots, len(entry.running))


def _one_run(rows: list[tuple[Any, ...]]) -> bool:
    """Whether stored rows may be queued as one run (`JobQueue.load_run`): one priority, and
    seqs ascending."""
    if not rows:
        return False
    priorities = list(map(_priority, rows))
    if priorities.count(priorities[0]) != len(priorities):
        return False
    seqs = list(map(_seq, rows))
    return all(map(operator.lt, seqs, itertools.islice(seqs, 1, None)))


_priority = operator.itemgetter(7)
_seq = operator.itemgetter(1)
