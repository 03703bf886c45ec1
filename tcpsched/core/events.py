"""What the asyncio shell tells a core object (events) and what it asks the shell to do
(effects).

Connections are plain integers chosen by the shell; the core never holds a socket. Effects are
carried out in order, except that sends wait for the journal records of the same event-loop
turn to be written (group commit): an acknowledgement never leaves before what it acknowledges
is durable.
"""

from __future__ import annotations

from typing import Any

import attrs

# -- events -------------------------------------------------------------------------------------


@attrs.frozen
class Connected:
    """A connection finished its handshake as `role` ("worker" or "client")."""

    conn: int
    role: str
    peer_name: str
    address: str = ""


@attrs.frozen
class Received:
    conn: int
    msg: Any


@attrs.frozen
class Closed:
    conn: int
    reason: str


@attrs.frozen
class Tick:
    """The timer the core asked for (its next_deadline) has fired."""


Event = Connected | Received | Closed | Tick

# -- effects ------------------------------------------------------------------------------------


@attrs.frozen
class Send:
    conn: int
    msg: Any


@attrs.frozen
class Close:
    conn: int
    reason: str


@attrs.frozen
class Journal:
    """A state change to append to the journal (and, later, replicate) before any send."""

    record: dict[str, Any]


@attrs.frozen
class HigherEpoch:
    """A peer has seen `epoch`, above this coordinator's own: it has been deposed, or it was
    started behind its cluster (a fresh data dir). Its orders are refused from now on. The node
    steps down on this, and its next election announces an epoch above it (alone, at once),
    journaled before any order carries it (core/node.py)."""

    epoch: int
    reason: str


Effect = Send | Close | Journal | HigherEpoch
