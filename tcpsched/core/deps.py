"""Job dependencies (`after`): a child waits, pending, until every parent has succeeded.

Theory of operation: the journal holds no "released" record. Whether a pending child may run
is a function of the table (all its parents succeeded, or were forgotten: retention forgets
only finished jobs, and a parent that failed had already doomed the child), so followers and a
restarted leader derive exactly what the old leader knew. What must be journaled is the
cancelling of a child whose parent failed or was cancelled: the leader records it as a `cancel`
with `error` naming the parent, in the same step as the parent's end (one group commit), and
each cancel dooms that child's own children in turn (transitively, with a work list, not
recursion, so a chain of any depth is safe).

`Dependencies` is the leader's index: `waiting` (child -> parents not yet succeeded) and
`children` (parent -> waiting children), so a parent's end touches its children only, never the
table. It is rebuilt from the table when a leader starts (`rebuild`); a child whose parent ended
badly while no leader could act on it (a torn journal tail) is doomed then. Parents must exist
when the child is submitted (`resolve_after`), so a cycle cannot be written.

`DependencyTracker` is the scheduler's part, an object `Scheduler` owns (`dependencies`; its
index is `Scheduler.deps`): the hook `_record` calls (`changed`), the cascade, and `retry`
(which brings a failed or cancelled job back to pending as a new attempt and lets it wait on its
parents again). It is given the job table, the queue, the parking reasons, the step's clocks
(`core/sides.py`) and `record`, the scheduler's single `_record` path: every cancel of the
cascade and every retry is journaled through it. `resolve_after` resolves `after` at submit.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core.jobs import RETRYABLE_STATES, JobRecord, JobSpec, JobState
from tcpsched.core.queries import not_found_message, resolve

if TYPE_CHECKING:
    from tcpsched.core.jobqueue import JobQueue
    from tcpsched.core.sides import Record, StepClock
    from tcpsched.core.state import JobTable

log = logging.getLogger(__name__)

AFTER_MAX = 1_000  # parents one job may name
_BAD_ENDS = (JobState.FAILED, JobState.CANCELLED)


def parent_error(parent: JobRecord) -> str:
    """The reason a child of a parent that ended badly is cancelled (it names the parent)."""
    return f"parent {parent.id} {parent.state.value}"


class Dependencies:
    """The leader's index of waiting children; never journaled (derived from the table)."""

    def __init__(self) -> None:
        self.waiting: dict[str, set[str]] = {}  # child -> parents not yet succeeded
        # parent -> children waiting on it (a dict as an ordered set: dropping one is O(1))
        self.children: dict[str, dict[str, None]] = {}

    def reason(self, job_id: str) -> str | None:
        """What a waiting child waits on (the record's `reason`), or None."""
        parents = self.waiting.get(job_id)
        if not parents:
            return None
        return f"waiting on parents: {', '.join(sorted(parents))}"

    def add(self, job: JobRecord, table: JobTable) -> JobRecord | None:
        """Index a pending job on its parents. Returns a parent that ended badly (the job is
        then doomed and not indexed), else None; a job with no unmet parent is not indexed."""
        unmet = set()
        for parent_id in job.spec.after:
            parent = table.get(parent_id)
            if parent is None or parent.state is JobState.SUCCEEDED:
                continue  # forgotten parents had succeeded (see the module's docstring)
            if parent.state in _BAD_ENDS:
                return parent
            unmet.add(parent_id)
        if unmet:
            self.waiting[job.id] = unmet
            for parent_id in unmet:
                self.children.setdefault(parent_id, {})[job.id] = None
        return None

    def drop(self, job_id: str) -> None:
        """A waiting child left pending some other way (cancelled by a user)."""
        parents = self.waiting.pop(job_id, None)
        for parent_id in parents or ():
            siblings = self.children.get(parent_id)
            if siblings is not None:
                siblings.pop(job_id, None)
                if not siblings:
                    del self.children[parent_id]

    def settled(self, parent: JobRecord) -> tuple[list[str], list[str]]:
        """A parent ended: (children now free to run, children to cancel). O(its children)."""
        kids = self.children.pop(parent.id, None)
        if not kids:
            return [], []
        if parent.state is JobState.SUCCEEDED:
            released = []
            for child in kids:
                parents = self.waiting.get(child)
                if parents is None:
                    continue
                parents.discard(parent.id)
                if not parents:
                    del self.waiting[child]
                    released.append(child)
            return released, []
        doomed = [child for child in kids if child in self.waiting]
        for child in doomed:
            self.drop(child)
        return [], doomed

    def rebuild(self, table: JobTable, jobs: Iterable[JobRecord]
                ) -> list[tuple[str, JobRecord]]:
        """Index every pending job of `jobs` (the table's, or those of them with `after`)
        that has parents (a leader starts); returns the (child, bad parent) pairs to cancel
        now."""
        self.waiting.clear()
        self.children.clear()
        doomed = []
        for job in jobs:
            if job.state is JobState.PENDING and job.spec.after:
                bad = self.add(job, table)
                if bad is not None:
                    doomed.append((job.id, bad))
        return doomed


def resolve_after(table: JobTable, specs: tuple[JobSpec, ...]
                  ) -> tuple[tuple[JobSpec, ...], str | None]:
    """The specs with `after` turned into full job ids (a key or id prefix names a parent as
    it does everywhere), or the one-line reason one names no job. Parents must exist now."""
    out = []
    resolved: dict[tuple[str, ...], tuple[str, ...]] = {}  # a `map` names the same parents
    for spec in specs:
        if not spec.after:
            out.append(spec)
            continue
        ids = resolved.get(spec.after)
        if ids is None:
            if len(spec.after) > AFTER_MAX:
                return specs, (f"a job may wait on at most {AFTER_MAX} parents, not "
                               f"{len(spec.after)}")
            found: list[str] = []
            for ref in spec.after:
                parent = resolve(table, ref)
                if parent is None:
                    return specs, ("unknown parent: " + not_found_message(table, ref)
                                   + "; a parent must exist when its child is submitted")
                if parent.id not in found:
                    found.append(parent.id)
            ids = resolved[spec.after] = tuple(found)
        out.append(spec if ids == spec.after else attrs.evolve(spec, after=ids))
    return tuple(out), None


class DependencyTracker:
    """The scheduler's dependency logic (see the module docstring for what it is given)."""

    def __init__(self, *, table: JobTable, queue: JobQueue, parked: dict[str, str],
                 clock: StepClock, record: Record) -> None:
        self.table = table
        self.queue = queue
        self.parked = parked
        self._clock = clock
        self._record = record
        self.deps = Dependencies()
        # (child, reason) to cancel: children of a parent that ended badly
        self.doomed: collections.deque[tuple[str, str]] = collections.deque()
        self._cascading = False

    @property
    def _now(self) -> float:
        return self._clock.now

    @property
    def _wall(self) -> float:
        return self._clock.wall

    def rebuild(self, jobs: Iterable[JobRecord]) -> None:
        """At start: index waiting children, take them out of the queue `_recover` built, and
        doom those whose parent ended badly (cancelled at the first step)."""
        for child, parent in self.deps.rebuild(self.table, jobs):
            self.doomed.append((child, parent_error(parent)))
        for child in self.deps.waiting:
            self.queue.remove(child)
        for child, _ in self.doomed:
            self.queue.remove(child)

    def _push_ready(self, job: JobRecord) -> None:
        """Queue a pending job that may run now (a released child, a retried job), honouring
        what is left of its delay."""
        left_s = job.not_before - self._wall if job.not_before > 0 else 0.0
        self.queue.push(job.id, job.spec.priority, job.seq,
                        self._now + left_s if left_s > 0 else 0.0)

    def changed(self, record: dict[str, Any], job: JobRecord) -> None:
        """The hook `_record` calls after a record changed `job`."""
        state = job.state
        if state is JobState.PENDING:
            if record["op"] in ("submit", "retry") and job.spec.after:
                bad = self.deps.add(job, self.table)
                if bad is not None:
                    self.doomed.append((job.id, parent_error(bad)))
        elif state.is_terminal:
            if job.id in self.deps.waiting:
                self.deps.drop(job.id)
            if job.id in self.deps.children:
                released, doomed = self.deps.settled(job)
                for child_id in released:
                    child = self.table.jobs[child_id]
                    log.info("job=%s released: its parents succeeded", child_id)
                    self._push_ready(child)
                reason = parent_error(job)
                self.doomed.extend((child_id, reason) for child_id in doomed)
        self.cascade()

    def cascade(self) -> None:
        """Cancel doomed children, one at a time; each cancel may doom more (transitively)."""
        if self._cascading:
            return
        self._cascading = True
        try:
            while self.doomed:
                child_id, reason = self.doomed.popleft()
                child = self.table.get(child_id)
                if child is None or child.state is not JobState.PENDING:
                    continue
                self.queue.remove(child_id)
                self.parked.pop(child_id, None)
                log.info("job=%s cancelled: %s", child_id, reason)
                self._record({"op": "cancel", "id": child_id, "at": self._wall,
                              "error": reason})
        finally:
            self._cascading = False

    def retry_problem(self, job: JobRecord) -> str | None:
        """Why `job` cannot be retried now, or None."""
        if job.state not in RETRYABLE_STATES:
            return (f"job {job.id} is {job.state.value}; only failed or cancelled jobs can be "
                    "retried")
        for parent_id in job.spec.after:
            parent = self.table.get(parent_id)
            if parent is not None and parent.state in _BAD_ENDS:
                return (f"job {job.id} waits on parent {parent_id}, which is "
                        f"{parent.state.value}: retry the parent first")
        return None

    def retry(self, job: JobRecord) -> JobRecord:
        """Requeue a failed or cancelled job (see `retry_problem`) as a new attempt. A child
        waits on its parents again; a job with no unmet parent goes to the queue."""
        new = self._record({"op": "retry", "id": job.id, "at": self._wall})
        assert new is not None
        if new.id not in self.deps.waiting and new.state is JobState.PENDING:
            self._push_ready(new)
        log.info("job=%s retried: attempt %d next", job.id, new.attempts + 1)
        return new
