"""What the leader knows of its workers, and the pure rules for reading it.

Theory of operation: the leader keeps one `WorkerEntry` per worker name it has seen, alive or
dead; `running` maps each job id the worker runs to the attempt it runs, and is the leader's
side of the worker's own list. The failure detector owns liveness (alive, suspect, dead); an
entry adds what the detector does not know: slots, tags, draining, what it agrees to run
(`capabilities`), which process holds the name (`incarnation`), and when it died. A dead
entry is kept a while so `workers` can show it, then the scheduler drops it.

When a worker registers or heartbeats it reports the attempts it runs. An attempt is kept only
if the job table agrees that it is that job's current attempt on that worker (`is_current`);
any other is stale and the worker is told to kill it. The scheduler acts on what these helpers
find (kills, lost attempts, requeues); nothing here changes the job table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core.capabilities import Capabilities
from tcpsched.core.detector import ALIVE, DEAD
from tcpsched.core.jobs import JobState
from tcpsched.core.prefetch import JobTime, lookahead_places

if TYPE_CHECKING:
    from tcpsched.core import messages as m
    from tcpsched.core.detector import FailureDetector
    from tcpsched.core.jobs import JobRecord
    from tcpsched.core.state import JobTable

DRAINING = "draining"


@attrs.define
class WorkerEntry:
    """What the leader knows of one worker; `running` maps job id to the attempt it runs."""

    name: str
    conn: int | None
    slots: int
    tags: tuple[str, ...]
    address: str
    registered_at: float
    running: dict[str, int] = attrs.field(factory=dict)
    draining: bool = False
    dead_at: float | None = None
    # The last heartbeat heard before it was declared dead: the detector forgets a dead
    # worker, and its row must keep showing when it was last heard of, not when it was judged.
    last_heartbeat_at: float | None = None
    incarnation: str = ""  # the worker process's random id (see messages.Register)
    capabilities: Capabilities = attrs.field(factory=Capabilities)
    # For reconciling heartbeats (workerside): when each attempt in `running` was assigned
    # (absent: reported at registration), and how many heartbeats in a row have left it out.
    assigned_at: dict[str, float] = attrs.field(factory=dict)
    unreported: dict[str, int] = attrs.field(factory=dict)
    held: int = 0  # slots its last heartbeat said stopped work still holds (messages.Heartbeat)
    prefetch: int = 0  # attempts it keeps waiting beyond its slots (core/prefetch.py)
    # Set while the leader handles one of its results: only then are its prefetch places
    # filled, from the head of the queue as it stands (core/prefetch.py says why).
    lookahead_open: bool = False
    # Its recent jobs' run times, which size its lookahead (core/prefetch.py).
    job_time: JobTime = attrs.field(factory=JobTime)

    def free_slots(self) -> int:
        """Places for one more assignment: its free slots, and while its lookahead is open
        the prefetch places that cover a round trip of its work."""
        places = self.slots
        if self.lookahead_open:
            places += lookahead_places(self.prefetch, self.slots, self.job_time.average_s)
        return places - len(self.running) - self.held

    def is_saturated(self) -> bool:
        """Every slot is taken: an attempt assigned now waits in its lookahead."""
        return len(self.running) + self.held >= self.slots


def is_current(job: JobRecord | None, attempt: int, worker: str) -> bool:
    """Whether `attempt` is the running attempt of `job` on `worker`, as the table says."""
    return (
        job is not None and job.state is JobState.RUNNING and job.attempts == attempt
        and job.worker == worker
    )  # fmt: skip


def name_conflict(old: WorkerEntry | None, conn: int, incarnation: str,
                  detector: FailureDetector) -> str | None:
    """Why a Register for `old.name` on `conn` must be refused, or None.

    A name belongs to one worker process at a time. The same process reconnecting (same
    incarnation) takes its name back at once, even while its old connection still looks open
    here. Another process may take the name only once its holder is no longer alive: its
    connection closed (a restart under the same name), or its heartbeats stopped. Two live
    processes under one name would each take the other's place on every reconnect, and run
    jobs twice; the second is refused instead.
    """
    if old is None or old.conn is None or old.conn == conn:
        return None
    if incarnation and incarnation == old.incarnation:
        return None
    if detector.state(old.name) != ALIVE:
        return None
    return (f"worker name {old.name!r} is in use by a live worker at {old.address or '?'}; "
            "give this one another --name, or stop that one first")


def worker_state(entry: WorkerEntry, detector: FailureDetector) -> str:
    """The detector's verdict, except that a live worker that drains shows as draining."""
    state = detector.state(entry.name)
    if state != DEAD and entry.draining:
        return DRAINING
    return state


def worker_rows(workers: dict[str, WorkerEntry], detector: FailureDetector,
                wall_offset_s: float = 0.0) -> list[dict[str, Any]]:
    """The `workers` reply: one row per known worker, by name. The leader keeps times on its
    monotonic clock; `wall_offset_s` (Unix time minus that clock) makes them Unix times."""
    return [
        {
            "name": entry.name,
            "address": entry.address,
            "slots": entry.slots,
            "running": min(len(entry.running) + entry.held, entry.slots),
            "held": entry.held,
            "prefetch": entry.prefetch,
            "prefetched": max(len(entry.running) + entry.held - entry.slots, 0),
            "tags": list(entry.tags),
            "state": worker_state(entry, detector),
            "last_heartbeat": _wall(
                detector.last_heartbeat(name) or entry.last_heartbeat_at or entry.dead_at,
                wall_offset_s),
            "allow_shell": entry.capabilities.allow_shell,
            "allow_call": list(entry.capabilities.allow_call),
        }
        for name, entry in sorted(workers.items())
    ]


def _wall(monotonic_s: float | None, offset_s: float) -> float | None:
    return None if monotonic_s is None else monotonic_s + offset_s


def sort_reported(
    name: str, reported: tuple[m.AttemptRef, ...], previous: dict[str, int], table: JobTable,
) -> tuple[dict[str, int], list[m.AttemptRef]]:
    """Split the attempts a registering worker reports into those it keeps and those to kill.

    It keeps an attempt only if the table says it is current on this worker and the leader
    believed so before (`previous`: what its last life ran, empty if it was dead or new).
    """
    keep: dict[str, int] = {}
    kill = []
    for ref in reported:
        if is_current(table.get(ref.job_id), ref.attempt, name) \
                and previous.get(ref.job_id) == ref.attempt:
            keep[ref.job_id] = ref.attempt
        else:
            kill.append(ref)
    return keep, kill


def stale_reported(entry: WorkerEntry, reported: tuple[m.AttemptRef, ...], table: JobTable,
                   ) -> list[m.AttemptRef]:
    """Attempts a heartbeat reports that the worker must kill.

    A job just assigned may race a heartbeat, so an attempt the entry does not list yet is
    killed only if it is not the job's current attempt on this worker.
    """
    return [
        ref for ref in reported
        if entry.running.get(ref.job_id) != ref.attempt
        and not is_current(table.get(ref.job_id), ref.attempt, entry.name)
    ]

