"""FrameDecoder: any bytes in any chunking give messages or RemoteProtocolError, nothing else.

No event loop: the decoder is fed bytes by hand, as h11's tests feed its connection.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.codec import (
    FRAME_BYTES_MAX,
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_LIMITS,
    HEADER,
    VALUE_DEPTH_MAX,
    FrameDecoder,
    encode,
    encode_value,
)
from tcpsched.core.jobs import JobSpec
from tcpsched.errors import LocalProtocolError, RemoteProtocolError

SAMPLE_MESSAGES: list[Any] = [
    m.Hello(version=1, role="client", name="c", nonce=b"n" * 32),
    m.Submit(req_id=1, jobs=(JobSpec(kind="shell", command="echo hi"),
                             JobSpec(kind="call", function="operator:add", args=(1, 2)))),
    m.Reply(req_id=1, value=["a", {"b": [1, 2.5, None, True, b"\x00"]}]),
    m.Heartbeat(running=(m.AttemptRef(job_id="j1", attempt=2),)),
    m.Draining(),
    m.Result(job_id="j", attempt=1, state="failed", exit_code=3, result=None, stdout="o",
             stderr="e", error="exit code 3", started_at=1.0, finished_at=2.0),
]
INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
STREAM = b"".join(encode(msg) for msg in SAMPLE_MESSAGES)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def packed(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


def decode(chunks: list[bytes], **options: Any) -> tuple[list[Any], str | None]:
    """Feed chunks, collecting messages; stop at the first error, which must be remote."""
    decoder = FrameDecoder(**options)
    out: list[Any] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (msg := decoder.next_message()) is not None:
                out.append(msg)
    except RemoteProtocolError as exc:
        return out, str(exc)
    return out, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# -- any input --------------------------------------------------------------------------------


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20))
def test_random_bytes_in_random_chunks_give_messages_or_remote_error(
        data: bytes, cuts: list[int]) -> None:
    """Garbage never raises anything but RemoteProtocolError, however it is chunked."""
    decode(split(data, cuts))


@given(st.binary(max_size=300))
def test_random_msgpack_bodies_give_messages_or_remote_error(body: bytes) -> None:
    """A well-framed body of random bytes is a message or a RemoteProtocolError."""
    decode([frame(body)])


@given(st.integers(0, len(STREAM) - 1), st.integers(0, 255), st.lists(st.integers(), max_size=8))
def test_a_corrupted_valid_stream_gives_messages_or_remote_error(
        where: int, byte: int, cuts: list[int]) -> None:
    """One flipped byte anywhere in a valid stream is never anything but a remote error."""
    data = bytearray(STREAM)
    data[where] = byte
    decode(split(bytes(data), cuts))


@given(st.recursive(
    st.none() | st.booleans() | INTS | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text() | INTS, inner, max_size=4),
    max_leaves=15,
))
def test_valid_msgpack_of_any_shape_gives_a_message_or_remote_error(obj: Any) -> None:
    """Well-formed msgpack that is not a message (wrong shape, types) is a remote error."""
    decode([packed(obj)])


@given(st.sampled_from(m.ALL_MESSAGES), st.dictionaries(
    st.text(max_size=12), st.none() | INTS | st.text(max_size=5) | st.lists(INTS, max_size=3),
    max_size=6))
def test_right_tag_wrong_fields_gives_a_message_or_remote_error(
        cls: type, fields: dict[str, Any]) -> None:
    """A known tag with arbitrary fields either validates fully or is a remote error."""
    body = {**fields, "t": cls.TYPE}  # type: ignore[attr-defined]
    msgs, error = decode([frame(msgpack.packb(body, use_bin_type=True))])
    assert error is not None or type(msgs[0]) is cls


# -- chunking does not matter -----------------------------------------------------------------


@given(st.lists(st.integers(), max_size=30))
def test_any_chunking_of_a_valid_stream_gives_the_same_messages(cuts: list[int]) -> None:
    """However the bytes are split, the same messages come out, in order."""
    assert decode(split(STREAM, cuts)) == (SAMPLE_MESSAGES, None)


@given(st.binary(max_size=64), st.booleans())
def test_byte_by_byte_equals_all_at_once(garbage: bytes, garbage_first: bool) -> None:
    """Feeding one byte at a time yields exactly what feeding everything at once does."""
    data = garbage + STREAM if garbage_first else STREAM + garbage
    assert decode([data[i:i + 1] for i in range(len(data))]) == decode([data])


def test_messages_before_a_bad_frame_are_delivered_when_fed_together() -> None:
    """A good frame followed by a bad header in the same read still yields the good one."""
    good = encode(m.Draining())
    msgs, error = decode([good + HEADER.pack(0)])
    assert msgs == [m.Draining()]
    assert error is not None and "frame length 0" in error


# -- frame limits -----------------------------------------------------------------------------


def test_zero_length_frame_is_rejected_at_the_header() -> None:
    """A frame claiming 0 bytes is refused as soon as its 4-byte header is in."""
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="frame length 0"):
        decoder.feed(HEADER.pack(0))
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("limit", [HANDSHAKE_FRAME_BYTES_MAX, FRAME_BYTES_MAX, 10])
def test_oversized_frame_is_rejected_before_its_body_is_buffered(limit: int) -> None:
    """A header over the limit raises before any body byte is kept, header fed byte by byte."""
    decoder = FrameDecoder(frame_bytes_max=limit)
    header = HEADER.pack(limit + 1)
    for byte in header[:-1]:
        decoder.feed(bytes([byte]))
    with pytest.raises(RemoteProtocolError, match="outside"):
        decoder.feed(header[-1:] + b"x" * 100)
    assert decoder.buffered_bytes == 0


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    """The limit is inclusive: a frame of exactly frame_bytes_max bytes decodes."""
    data = encode(m.Draining())
    decoder = FrameDecoder(frame_bytes_max=len(data) - HEADER.size)
    decoder.feed(data)
    assert decoder.messages() == [m.Draining()]


def test_a_dead_decoder_keeps_raising() -> None:
    """After its first error the decoder refuses everything, even valid frames."""
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(HEADER.pack(0))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode(m.Draining()))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


def test_a_handshake_decoder_leaves_what_follows_its_last_message_untouched() -> None:
    """Without lookahead, bytes after the last message (sealed units, whose length may be over
    the handshake limit) stay buffered and are handed over whole by take_buffered."""
    decoder = FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX, m.HANDSHAKE_TYPES, HANDSHAKE_LIMITS,
                           lookahead=False)
    welcome = m.Welcome(node="c1", epoch=1)
    after = HEADER.pack(HANDSHAKE_FRAME_BYTES_MAX * 10) + b"sealed"
    decoder.feed(encode(welcome) + after)
    assert decoder.next_message() == welcome
    assert decoder.take_buffered() == after
    assert decoder.buffered_bytes == 0 and decoder.next_message() is None


def test_partial_frame_needs_more_bytes() -> None:
    """An incomplete frame yields None and keeps its bytes for later."""
    data = encode(m.Draining())
    decoder = FrameDecoder()
    decoder.feed(data[:-1])
    assert decoder.next_message() is None
    assert decoder.buffered_bytes == len(data) - 1
    decoder.feed(data[-1:])
    assert decoder.next_message() == m.Draining()


# -- shape and type checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([1, 2, 3], "must be a map"),
        ({"x": 1}, "unknown message type"),
        ({"t": "nope"}, "unknown message type"),
        ({"t": 7}, "unknown message type"),
        ({"t": "submit", "req_id": 1}, "missing field 'jobs'"),
        ({"t": "submit", "req_id": "1", "jobs": []}, "expected int"),
        ({"t": "submit", "req_id": True, "jobs": []}, "expected int, got bool"),
        ({"t": "submit", "req_id": 1, "jobs": {}}, "expected array"),
        ({"t": "submit", "req_id": 1, "jobs": [{"kind": "bogus"}]}, "kind must be"),
        ({"t": "submit", "req_id": 1, "jobs": [{"kind": "shell", "command": "x",
                                              "priority": 10**7}]}, "priority"),
        ({"t": "submit", "req_id": 1, "jobs": [7]}, "expected map"),
        ({"t": "reply", "req_id": 1, "value": {"k": {"k": [{}]}, "x": [[[]]]}, "extra": 1},
         None),
        ({"t": "assign", "job_id": "j", "attempt": 1, "epoch": 1, "kind": "call",
          "command": None, "function": "m:f", "args": [], "kwargs": [], "timeout": None},
         "expected map"),
        ({"t": "heartbeat", "running": [{"job_id": 1, "attempt": 1}]}, "expected str"),
    ],
)
def test_wrong_shapes_are_remote_errors(body: Any, reason: str | None) -> None:
    """Each malformed body fails with a reason naming what is wrong (extra keys are ignored)."""
    msgs, error = decode([packed(body)])
    if reason is None:
        assert error is None and len(msgs) == 1
    else:
        assert error is not None and reason in error, error


def test_non_string_map_keys_are_refused() -> None:
    """msgpack maps with integer keys are refused (strict_map_key)."""
    body = msgpack.packb({"t": "reply", "req_id": 1, "value": {1: 2}}, use_bin_type=True)
    assert decode([frame(body)])[1] is not None


def test_ext_types_are_refused() -> None:
    """An ext type anywhere is refused, not handed to user code."""
    body = msgpack.packb({"t": "reply", "req_id": 1, "value": msgpack.ExtType(5, b"x")},
                         use_bin_type=True)
    _, error = decode([frame(body)])
    assert error is not None and "ext" in error


def test_trailing_bytes_inside_a_frame_are_refused() -> None:
    """A frame whose body holds more than one msgpack object is malformed."""
    body = msgpack.packb({"t": "draining"}) + msgpack.packb(1)
    assert decode([frame(body)])[1] is not None


def test_raw_bytes_where_a_string_is_expected_are_refused() -> None:
    """Invalid UTF-8 in a str field is a remote error (raw=False), not a crash."""
    body = b"\x82\xa1t\xa5hello\xa4name\xa2\xff\xfe"
    assert decode([frame(body)])[1] is not None


def test_deeply_nested_values_are_refused() -> None:
    """Free-form values nested deeper than VALUE_DEPTH_MAX are refused."""
    value: Any = 1
    for _ in range(VALUE_DEPTH_MAX + 2):
        value = [value]
    _, error = decode([packed({"t": "reply", "req_id": 1, "value": value})])
    assert error is not None and "deeper" in error


def test_messages_outside_the_allowed_set_are_refused() -> None:
    """A decoder narrowed to the handshake refuses a valid request message."""
    data = encode(m.Workers(req_id=1))
    _, error = decode([data], allowed=m.HANDSHAKE_TYPES)
    assert error is not None and "not allowed" in error


def test_handshake_limits_refuse_long_strings() -> None:
    """With handshake limits, a 2 KiB name is refused by msgpack before validation."""
    body = {"t": "hello", "version": 1, "role": "client", "name": "x" * 2048,
            "nonce": b"n" * 32}
    _, error = decode([packed(body)], limits=HANDSHAKE_LIMITS)
    assert error is not None


def test_ints_for_float_fields_become_floats() -> None:
    """A peer may send an int where a float is declared; it arrives as a float."""
    body = {"t": "registered", "heartbeat_interval": 1, "epoch": 3}
    (msg,), error = decode([packed(body)])
    assert error is None and msg.heartbeat_interval == 1.0
    assert isinstance(msg.heartbeat_interval, float)


# -- encoding ---------------------------------------------------------------------------------


def test_encoding_an_unsendable_value_is_a_local_error() -> None:
    """Encoding an object msgpack cannot carry is our bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        encode(m.Reply(req_id=1, value=object()))
    with pytest.raises(LocalProtocolError):
        encode(m.Reply(req_id=1, value=2**70))


@pytest.mark.parametrize("value", [object(), {1: 2}, {1, 2}, 2**70])
def test_encode_value_refuses_what_a_peer_would_refuse(value: Any) -> None:
    """A job result that could not be decoded on the other side is refused at the worker."""
    with pytest.raises(LocalProtocolError):
        encode_value(value)


def test_encode_value_accepts_plain_values() -> None:
    """Plain JSON-like values (and bytes) are accepted as results."""
    encode_value({"a": [1, 2.5, None, True, "s", b"b"]})
