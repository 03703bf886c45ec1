"""The worker's end of a call child's socket hands each reply to the call waiting for it."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from tcpsched.runtime import callchild
from tcpsched.runtime.callpool import _BadReply, _ChildProtocol


def frame(value: object) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return callchild.HEADER.pack(len(body)) + body


def test_a_reply_resolves_the_waiting_future_at_once() -> None:
    """A reply that arrives while a call waits resolves that call's future in data_received."""
    async def main() -> None:
        protocol = _ChildProtocol(1 << 20)
        answer = protocol.expect()
        data = frame({"ok": True, "n": 1})
        protocol.data_received(data[:3])
        assert not answer.done()
        protocol.data_received(data[3:])
        assert answer.result() == {"ok": True, "n": 1}

    asyncio.run(main())


def test_replies_before_a_waiter_are_kept_in_order() -> None:
    """Frames that arrive in one read before anyone waits are handed out in order."""
    async def main() -> None:
        protocol = _ChildProtocol(1 << 20)
        protocol.data_received(frame({"n": 1}) + frame({"n": 2}))
        assert protocol.expect().result() == {"n": 1}
        assert await protocol.next_message() == {"n": 2}
        assert not protocol.expect().done()

    asyncio.run(main())


def test_end_of_file_and_bad_frames_are_final() -> None:
    """After end of file every read sees None; after a bad frame every read sees the error."""
    async def main() -> None:
        eof = _ChildProtocol(1 << 20)
        waiting = eof.expect()
        eof.connection_lost(None)
        assert waiting.result() is None
        assert eof.expect().result() is None
        bad = _ChildProtocol(16)
        bad.data_received(frame({"n": 1}) + callchild.HEADER.pack(1000))
        assert bad.expect().result() == {"n": 1}
        assert isinstance(bad.expect().result(), _BadReply)
        bad.data_received(frame({"n": 2}))  # nothing after a bad frame is read
        with pytest.raises(_BadReply):
            await bad.next_message()

    asyncio.run(main())


def test_a_read_of_exactly_one_frame_is_checked_like_any_other() -> None:
    """A read that is one whole frame (the common case) gives the same map, or the same
    refusal, as a frame split over reads: bad msgpack and non-maps are _BadReply."""
    async def main() -> None:
        whole = _ChildProtocol(1 << 20)
        whole.data_received(frame({"ok": True, "result": b"\x05"}))
        assert whole.expect().result() == {"ok": True, "result": b"\x05"}
        whole.data_received(frame({"n": 2}) + frame({"n": 3}))  # two frames: the buffer
        assert [whole.expect().result() for _ in range(2)] == [{"n": 2}, {"n": 3}]
        assert not whole.expect().done()
        for body, why in ((b"\xc1", "bad msgpack"), (msgpack.packb([1, 2]), "not a map")):
            bad = _ChildProtocol(1 << 20)
            bad.data_received(callchild.HEADER.pack(len(body)) + body)
            refusal = bad.expect().result()
            assert isinstance(refusal, _BadReply) and why in str(refusal)
        big = _ChildProtocol(8)
        big.data_received(frame({"text": "more than eight bytes"}))
        assert isinstance(big.expect().result(), _BadReply)

    asyncio.run(main())
