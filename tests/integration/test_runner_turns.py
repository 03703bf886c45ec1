"""The runner's end of turn for a node core, in process on the real event loop: the turn's
Append and the sends the node released are written before the fsync, what the flush releases
after it."""

from __future__ import annotations

import asyncio
from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.events import Effect, Journal, Received, Send
from tcpsched.core.node_events import EndOfTurn, Flushed, ToPeer
from tcpsched.runtime.runner import Runner

CLIENT, WORKER = 1, 2


class Order:
    """One list of what happened, in order, shared by the fakes."""

    def __init__(self) -> None:
        self.events: list[str] = []


class RecordingConnection:
    def __init__(self, name: str, order: Order) -> None:
        self.peer = name
        self.name = name
        self.order = order
        self.queued: list[Any] = []

    def send(self, msg: Any) -> None:
        self.queued.append(msg)

    def flush(self) -> None:
        if self.queued:
            self.order.events.append(f"write {self.name} " + ",".join(
                type(q).__name__ for q in self.queued))
            self.queued.clear()

    def close(self, reason: str = "", abort: bool = False) -> None:
        self.order.events.append(f"close {self.name}")


class Journal_:
    def __init__(self, order: Order) -> None:
        self.order = order
        self.seq = 0

    def append(self, record: dict[str, Any]) -> None:
        self.seq += 1

    def flush(self) -> None:
        self.order.events.append("fsync")

    def maybe_compact(self) -> None:
        pass


class NodeLike:
    """Like a node core: a message releases an Assign already committed and logs a record;
    the end of turn ships an Append; the flush releases the reply that record gates."""

    wants_flush = False
    wants_turn = False

    def step(self, event: Any, now: float, wall: float | None = None) -> list[Effect]:
        if isinstance(event, Received):
            return [Send(WORKER, m.ResultAck(job_id="j0", attempt=1, epoch=1)),
                    Journal({"op": "forget", "ids": []})]
        if isinstance(event, EndOfTurn):
            return [ToPeer(3, "append")]
        if isinstance(event, Flushed):
            return [Send(CLIENT, m.Reply(req_id=1, value="done"))]
        return []

    def next_deadline(self) -> float | None:
        return None


async def test_the_append_and_released_sends_leave_before_the_fsync() -> None:
    """Order of one turn: the Append to the follower and the node's released order to a
    worker are written, then the fsync, then the reply the flush released."""
    order = Order()
    connections = {CLIENT: RecordingConnection("client", order),
                   WORKER: RecordingConnection("worker", order)}
    peer_queue: list[Any] = []

    def peer_flush() -> None:
        if peer_queue:
            order.events.append("write peer " + ",".join(peer_queue))
            peer_queue.clear()

    runner = Runner(NodeLike(), Journal_(order), connections,  # type: ignore[arg-type]
                    peer_send=lambda peer, msg: peer_queue.append(msg), peer_flush=peer_flush)
    runner.feed(Received(CLIENT, "a request"))
    await asyncio.sleep(0)  # the end of turn runs
    for conn in connections.values():
        conn.flush()  # the connection's own end-of-turn write
    assert order.events == ["write peer append", "write worker ResultAck", "fsync",
                            "write client Reply"]
    runner.stop()
