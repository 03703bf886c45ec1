"""Sealed units (core/channel.py) without sockets: what a relay after the handshake cannot do.

Each test pins one rule: whole frames round-trip in any chunking (byte by byte equals all at
once), and a tampered byte anywhere, a forged, replayed, dropped or reordered unit, a unit
sealed for the other direction or another connection, and an oversized length are each a
RemoteProtocolError at the unit where they happen; many small frames share one MAC.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import auth
from tcpsched.core import messages as m
from tcpsched.core.channel import (
    HEADER,
    TAG_BYTES,
    UNIT_PAYLOAD_TARGET,
    Opener,
    Sealer,
    unit_payload_max,
)
from tcpsched.core.codec import FRAME_BYTES_MAX, FrameDecoder, encode
from tcpsched.errors import RemoteProtocolError

TOKEN = b"correct horse battery staple"
KEYS = auth.session_keys(TOKEN, b"d" * m.NONCE_BYTES, b"l" * m.NONCE_BYTES)


def pair(frame_bytes_max: int = FRAME_BYTES_MAX) -> tuple[Sealer, Opener]:
    return Sealer(KEYS.dialer_to_listener), Opener(KEYS.dialer_to_listener, frame_bytes_max)


def units_of(sealer: Sealer, batches: list[list[bytes]]) -> list[bytes]:
    """One sealed write per batch, as a connection makes one per event-loop turn."""
    return [sealer.seal(batch) for batch in batches]


def test_frames_round_trip_through_one_write() -> None:
    """Frames sealed in one write come out of the opener as the same bytes, in order."""
    sealer, opener = pair()
    frames = [encode(m.Stats(req_id=i)) for i in range(5)]
    assert opener.feed(sealer.seal(frames)) == b"".join(frames)
    assert sealer.units == opener.units == 1


def test_many_small_frames_share_one_mac() -> None:
    """A burst of 10,000 small frames costs one unit per UNIT_PAYLOAD_TARGET bytes, not one
    MAC per message."""
    sealer, opener = pair()
    frames = [encode(m.Heartbeat(running=())) for _ in range(10_000)]
    total = sum(map(len, frames))
    wire = sealer.seal(frames)
    assert sealer.units == -(-total // UNIT_PAYLOAD_TARGET)
    assert len(wire) == total + sealer.units * (HEADER.size + TAG_BYTES)
    assert opener.feed(wire) == b"".join(frames)


def test_a_frame_over_the_target_travels_alone() -> None:
    """A frame bigger than the unit target gets a unit of its own, which a receiver with
    that frame limit accepts."""
    sealer, opener = pair()
    big = HEADER.pack(UNIT_PAYLOAD_TARGET * 2) + b"x" * (UNIT_PAYLOAD_TARGET * 2)
    small = encode(m.Stats(req_id=1))
    wire = sealer.seal([small, big, small])
    assert sealer.units == 3
    assert opener.feed(wire) == small + big + small


@pytest.mark.parametrize("position", ["header", "payload", "tag"])
def test_a_tampered_byte_is_refused(position: str) -> None:
    """One flipped bit in a unit's length, payload or tag fails that unit."""
    sealer, opener = pair()
    unit = bytearray(sealer.seal([encode(m.Stats(req_id=1))]))
    index = {"header": 3, "payload": HEADER.size + 2, "tag": len(unit) - 1}[position]
    unit[index] ^= 0x01
    with pytest.raises(RemoteProtocolError):
        opener.feed(bytes(unit))


@given(st.data())
def test_any_tampered_byte_is_refused(data: st.DataObject) -> None:
    """Whatever byte of a sealed stream is changed, to whatever value, the opener yields
    only the units before it: at the changed unit it raises, or (a length made longer)
    waits for more."""
    sealer, opener = pair()
    writes = data.draw(st.lists(st.lists(st.binary(min_size=1, max_size=64), min_size=1,
                                         max_size=4), min_size=2, max_size=4))
    units = units_of(sealer, writes)
    wire = bytearray(b"".join(units))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    hit, start = 0, 0
    while start + len(units[hit]) <= index:
        start += len(units[hit])
        hit += 1
    intact = b"".join(b"".join(batch) for batch in writes[:hit])
    try:
        out = opener.feed(bytes(wire))
    except RemoteProtocolError:
        return
    assert out == intact and index < start + HEADER.size  # only a longer length waits


def test_a_forged_unit_is_refused() -> None:
    """A frame inserted by someone without the key, shaped like a unit, fails."""
    sealer, opener = pair()
    opener.feed(sealer.seal([encode(m.Stats(req_id=1))]))
    forged = encode(m.Assign(job_id="0123456789ab", attempt=1, epoch=1, kind="shell",
                             command="id > f", function=None, args=(), kwargs={},
                             timeout=None))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        opener.feed(forged + b"\x00" * TAG_BYTES)


def test_a_replayed_unit_is_refused() -> None:
    """The same unit twice: the second is checked against the next counter and fails."""
    sealer, opener = pair()
    first, _second = units_of(sealer, [[b"\x00\x00\x00\x01\xc0"], [b"\x00\x00\x00\x01\xc0"]])
    opener.feed(first)
    with pytest.raises(RemoteProtocolError, match="unit 1 failed authentication"):
        opener.feed(first)


def test_a_dropped_unit_is_noticed_at_the_next() -> None:
    """Unit 1 never arrives: unit 2 is checked as unit 1 and fails."""
    sealer, opener = pair()
    first, _dropped, third = units_of(sealer, [[b"a"], [b"b"], [b"c"]])
    opener.feed(first)
    with pytest.raises(RemoteProtocolError, match="unit 1 failed"):
        opener.feed(third)


def test_reordered_units_are_refused() -> None:
    """Units 1 and 2 swapped: the first to arrive fails."""
    sealer, opener = pair()
    first, second, third = units_of(sealer, [[b"a"], [b"b"], [b"c"]])
    opener.feed(first)
    with pytest.raises(RemoteProtocolError):
        opener.feed(third + second)


def test_units_do_not_cross_directions_or_connections() -> None:
    """A unit sealed dialer->listener fails as listener->dialer, and under another
    connection's keys (other nonces), even with the same token."""
    unit = Sealer(KEYS.dialer_to_listener).seal([b"hello"])
    with pytest.raises(RemoteProtocolError):
        Opener(KEYS.listener_to_dialer, FRAME_BYTES_MAX).feed(unit)
    other = auth.session_keys(TOKEN, b"D" * m.NONCE_BYTES, b"l" * m.NONCE_BYTES)
    with pytest.raises(RemoteProtocolError):
        Opener(other.dialer_to_listener, FRAME_BYTES_MAX).feed(unit)
    assert len({KEYS.dialer_to_listener, KEYS.listener_to_dialer, other.dialer_to_listener,
                TOKEN}) == 4


def test_an_oversized_length_is_refused_on_its_header() -> None:
    """A unit length over the limit fails as soon as its 4 bytes are in, before any body
    is buffered; a zero length fails too."""
    _sealer, opener = pair(frame_bytes_max=1024)
    limit = unit_payload_max(1024)
    with pytest.raises(RemoteProtocolError, match="outside"):
        opener.feed(HEADER.pack(limit + 1))
    assert opener.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match="outside"):
        pair()[1].feed(HEADER.pack(0))


def test_the_opener_is_dead_after_its_first_error() -> None:
    """After a bad unit, even a good one is refused: the connection is over."""
    sealer, opener = pair()
    good = sealer.seal([b"a"])
    with pytest.raises(RemoteProtocolError):
        opener.feed(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(RemoteProtocolError):
        opener.feed(Sealer(KEYS.dialer_to_listener).seal([b"a"]))


@given(frames=st.lists(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6),
                       min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_in_any_chunking(frames: list[list[bytes]], seed: int) -> None:
    """Writes of random frames, cut at random places: the payload comes out whole and in
    order, and byte by byte gives the same as all at once."""
    sealer = Sealer(KEYS.listener_to_dialer)
    wire = b"".join(units_of(sealer, frames))
    expected = b"".join(b"".join(batch) for batch in frames)
    rng = random.Random(seed)
    opener = Opener(KEYS.listener_to_dialer, FRAME_BYTES_MAX)
    out, i = [], 0
    while i < len(wire):
        step = rng.randint(1, 64)
        out.append(opener.feed(wire[i : i + step]))
        i += step
    assert b"".join(out) == expected
    one_by_one = Opener(KEYS.listener_to_dialer, FRAME_BYTES_MAX)
    assert b"".join(one_by_one.feed(wire[j : j + 1]) for j in range(len(wire))) == expected
    assert opener.units == one_by_one.units == len(frames) and opener.buffered_bytes == 0


@given(st.lists(st.integers(0, 2**31), min_size=1, max_size=50))
def test_messages_survive_sealing_into_the_decoder(req_ids: list[int]) -> None:
    """Messages encoded, sealed, opened and decoded are the messages sent."""
    sealer, opener = pair()
    sent = [m.Stats(req_id=r) for r in req_ids]
    decoder = FrameDecoder()
    decoder.feed(opener.feed(sealer.seal([encode(msg) for msg in sent])))
    assert decoder.messages() == sent


def test_bad_keys_are_a_programming_error() -> None:
    """Keys of the wrong length are refused at construction."""
    with pytest.raises(ValueError):
        Sealer(b"short")
    with pytest.raises(ValueError):
        Opener(b"short", FRAME_BYTES_MAX)
