"""`encode` with a packer reused per connection (`codec.new_packer`): the same frames as a
fresh packer, and a message that cannot be packed leaves the packer fit for the next."""

from __future__ import annotations

import pytest

from tcpsched.core import messages as m
from tcpsched.core.codec import encode, new_packer
from tcpsched.errors import LocalProtocolError


def test_a_reused_packer_makes_the_same_frames() -> None:
    """Frame bytes do not depend on whether the packer is fresh or reused."""
    packer = new_packer()
    msgs = [m.ResultAck(job_id="abcd1234abcd", attempt=2, epoch=7),
            m.Heartbeat(running=(m.AttemptRef(job_id="j1", attempt=1),), held=1),
            m.Reply(req_id=3, value={"ids": ["a", "b"], "n": 1.5})]
    assert [encode(msg, packer=packer) for msg in msgs] == [encode(msg) for msg in msgs]


def test_a_failed_pack_leaves_the_packer_reset() -> None:
    """After a value msgpack refuses, the next message encodes exactly as with a new packer."""
    packer = new_packer()
    with pytest.raises(LocalProtocolError):
        encode(m.Reply(req_id=1, value=[1, 2, object()]), packer=packer)
    ack = m.ResultAck(job_id="j1", attempt=1, epoch=1)
    assert encode(ack, packer=packer) == encode(ack)
