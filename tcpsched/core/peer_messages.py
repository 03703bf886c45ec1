"""What coordinators say to each other: the bully election and log replication.

Theory of operation: these travel on `peer` connections, after the same authenticated handshake
as every other role. Each coordinator dials every other one and sends its own messages on the
connection it dialled, so reachability can differ by direction (as real partitions do) and the
election reasons about what each side hears. Every message carries the sender's id (`src`) and
the highest epoch it knows, so any node that sees a higher epoch learns of it at once.

A log position is (epoch, seq) of the last record: positions compare as tuples, epoch first,
which is the "more up to date" order the election relies on.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

NODE_ID_MAX = 1_000_000


def _node_id(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= NODE_ID_MAX:
        raise ValueError(f"{attribute.name} must be within [1, {NODE_ID_MAX}]")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


# -- election -------------------------------------------------------------------------------


@attrs.frozen
class Election:
    """ELECTION: the sender has no leader it can hear and asks who is there."""

    TYPE: ClassVar[str] = "election"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    last_epoch: int = attrs.field(validator=_non_negative)
    last_seq: int = attrs.field(validator=_non_negative)


@attrs.frozen
class Answer:
    """ANSWER: alive, with my epoch, my log position, the leader I hear (0: none) and how many
    peers I hear, so the asker can tell whether a higher id could win a majority."""

    TYPE: ClassVar[str] = "answer"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    last_epoch: int = attrs.field(validator=_non_negative)
    last_seq: int = attrs.field(validator=_non_negative)
    leader: int = attrs.field(validator=_non_negative)
    reach: int = attrs.field(validator=_non_negative)


@attrs.frozen
class Coordinator:
    """COORDINATOR: the sender proposes itself as leader of `epoch`."""

    TYPE: ClassVar[str] = "coordinator"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    last_epoch: int = attrs.field(validator=_non_negative)
    last_seq: int = attrs.field(validator=_non_negative)


@attrs.frozen
class CoordinatorAck:
    """The answer to COORDINATOR: `ok` once the promise is durable; otherwise why not, with my
    promise and position so the proposer learns what it lacks."""

    TYPE: ClassVar[str] = "coordinator_ack"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    ok: bool
    promised_epoch: int = attrs.field(validator=_non_negative)
    last_epoch: int = attrs.field(validator=_non_negative)
    last_seq: int = attrs.field(validator=_non_negative)
    reason: str = ""


ELECTION_MESSAGES: tuple[type, ...] = (Election, Answer, Coordinator, CoordinatorAck)


# -- replication -------------------------------------------------------------------------------


@attrs.frozen
class Append:
    """The leader's records after (prev_epoch, prev_seq), and its commit seq. With no records it
    is the leader's heartbeat. `records` are journal lines exactly as the leader wrote them."""

    TYPE: ClassVar[str] = "append"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    prev_epoch: int = attrs.field(validator=_non_negative)
    prev_seq: int = attrs.field(validator=_non_negative)
    entries: tuple[bytes, ...]
    epochs: tuple[int, ...]
    commit_seq: int = attrs.field(validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if len(self.entries) != len(self.epochs):
            raise ValueError("entries and epochs must have the same length")


@attrs.frozen
class AppendAck:
    """A follower's answer: `ok` with `match_seq`, the last seq it holds durably; or a refusal
    (fenced: my promise is higher; or my log does not hold prev), with my commit seq so the
    leader resends from a point we are sure to share."""

    TYPE: ClassVar[str] = "append_ack"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    ok: bool
    match_seq: int = attrs.field(validator=_non_negative)
    commit_seq: int = attrs.field(validator=_non_negative)


REPLICATION_MESSAGES: tuple[type, ...] = (Append, AppendAck)


@attrs.frozen
class Fetch:
    """A candidate about to announce pulls the entries after `after_seq` it lacks."""

    TYPE: ClassVar[str] = "fetch"
    src: int = attrs.field(validator=_node_id)
    after_seq: int = attrs.field(validator=_non_negative)


@attrs.frozen
class FetchReply:
    """Entries after (prev_epoch, prev_seq), bounded; `more`: ask again from the last one.
    `ok` False: this node's window no longer reaches back that far."""

    TYPE: ClassVar[str] = "fetch_reply"
    src: int = attrs.field(validator=_node_id)
    ok: bool
    prev_epoch: int = attrs.field(validator=_non_negative)
    prev_seq: int = attrs.field(validator=_non_negative)
    entries: tuple[bytes, ...]
    epochs: tuple[int, ...]
    more: bool


SNAPSHOT_CHUNK_BYTES = 1024 * 1024


@attrs.frozen
class InstallSnapshot:
    """One chunk of the leader's snapshot file, for a follower too far behind for its log
    window: the snapshot stands at (snap_epoch, snap_seq); `done` marks the last chunk."""

    TYPE: ClassVar[str] = "install_snapshot"
    src: int = attrs.field(validator=_node_id)
    epoch: int = attrs.field(validator=_non_negative)
    snap_epoch: int = attrs.field(validator=_non_negative)
    snap_seq: int = attrs.field(validator=_non_negative)
    offset: int = attrs.field(validator=_non_negative)
    data: bytes
    done: bool


PEER_MESSAGES: tuple[type, ...] = (*ELECTION_MESSAGES, *REPLICATION_MESSAGES, Fetch, FetchReply,
                                   InstallSnapshot)
