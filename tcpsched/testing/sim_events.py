"""The typed events of the cluster simulation's one heap (`tcpsched.testing.sim`).

Every event is a small frozen value; the driver dispatches on its type. Events that belong to
one life of a process carry that life, so whatever was scheduled before a crash is ignored
after it. The simulated workers schedule their own events by kind name (`WorkerEvent`), which
keeps their shell (`sim_worker.py`) independent of this list.
"""

from __future__ import annotations

from typing import Any

import attrs

# -- coordinators ---------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class NodeTimer:
    node: int
    life: int
    deadline: float  # on the node's own clock: a re-armed timer makes this one stale


@attrs.frozen(slots=True)
class NodeEndOfTurn:
    node: int
    life: int


@attrs.frozen(slots=True)
class NodeSynced:
    """A background fsync of the node's disk ended: the first `target` writes are durable."""

    node: int
    life: int
    target: int


@attrs.frozen(slots=True)
class NodeRestart:
    node: int


@attrs.frozen(slots=True)
class NodeResume:
    node: int
    life: int


@attrs.frozen(slots=True)
class PeerDeliver:
    src: int
    dst: int
    msg: Any


@attrs.frozen(slots=True)
class PeerDown:
    """`dst`'s connection from `src` closed (`src` died, or the direction was cut)."""

    src: int
    dst: int


# -- client and worker connections, at the coordinator's end ------------------------------------


@attrs.frozen(slots=True)
class NodeConnected:
    conn: int


@attrs.frozen(slots=True)
class NodeReceive:
    conn: int
    msg: Any


@attrs.frozen(slots=True)
class NodeClosed:
    conn: int


# -- clients --------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ClientSubmit:
    client: str


@attrs.frozen(slots=True)
class ClientReceive:
    client: str
    conn: int
    msg: Any


@attrs.frozen(slots=True)
class ClientClosed:
    client: str
    conn: int


@attrs.frozen(slots=True)
class ClientTimeout:
    client: str
    req_id: int


@attrs.frozen(slots=True)
class ClientRetry:
    client: str


# -- faults and phases ------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Fault:
    """Draw one fault from the seed (only during the fault phase)."""


@attrs.frozen(slots=True)
class Heal:
    """End the partition of this generation (a later partition replaced it otherwise)."""

    generation: int


@attrs.frozen(slots=True)
class Scripted:
    """A named scenario's step: call `action` (a method name of the scenario) now."""

    action: str


@attrs.frozen(slots=True)
class WorkerEvent:
    """An event of the simulated workers, dispatched by kind name (see sim_worker.py)."""

    kind: str
    payload: Any
