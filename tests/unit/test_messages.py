"""Every wire message survives encode -> FrameDecoder unchanged; validators reject bad fields.

The strategies are built from the attrs fields and annotations of each class in
`ALL_MESSAGES`, so a message added later is covered without touching this file; fields whose
validators narrow the type (names, nonces, slots, states) get a narrowed strategy in
`FIELD_OVERRIDES`.
"""

from __future__ import annotations

import string
import types
import typing
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.client_specs import UNPACKABLE_BYTES, size_bound
from tcpsched.core import messages as m
from tcpsched.core.codec import HEADER, FrameDecoder, encode
from tcpsched.core.jobs import PRIORITY_MAX, PRIORITY_MIN, RETRIES_MAX, JobSpec
from tcpsched.errors import RemoteProtocolError

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False)  # in free-form values; typed float fields are finite
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=40)
NAMES = st.text(min_size=1, max_size=m.NAME_CHARS_MAX)
NONCES = st.binary(min_size=m.NONCE_BYTES, max_size=m.NONCE_BYTES)
NON_NEGATIVE = st.integers(min_value=0, max_value=2**63 - 1)

# Free-form values as they come back from msgpack: lists (never tuples), str-keyed maps.
VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | TEXT | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=20,
)

_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
FUNCTIONS = st.builds(lambda mod, fn: f"{mod}:{fn}", _IDENT, _IDENT)
COMMANDS = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")
TAGS = st.lists(st.text(min_size=1, max_size=64), max_size=3).map(tuple)
SECONDS = st.floats(min_value=0.001, max_value=365 * 86400)
ENVS = st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
                       st.text(max_size=20).filter(lambda v: "\0" not in v), max_size=3)
CWDS = st.none() | st.text(min_size=1, max_size=40).filter(lambda v: "\0" not in v)


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    """Any JobSpec that passes validation, shell or call."""
    common: dict[str, Any] = dict(
        priority=draw(st.integers(PRIORITY_MIN, PRIORITY_MAX)),
        retries=draw(st.integers(0, RETRIES_MAX)),
        timeout=draw(st.none() | SECONDS),
        delay=draw(st.just(0.0) | SECONDS),
        tags=draw(TAGS),
        key=draw(st.none() | st.text(min_size=1, max_size=128)),
        after=draw(st.lists(TEXT, max_size=3).map(tuple)),
        env=draw(ENVS),
        cwd=draw(CWDS),
    )
    if draw(st.booleans()):
        return JobSpec(kind="shell", command=draw(COMMANDS), **common)
    return JobSpec(
        kind="call",
        function=draw(FUNCTIONS),
        args=tuple(draw(st.lists(VALUES, max_size=4))),
        kwargs=draw(st.dictionaries(TEXT, VALUES, max_size=4)),
        **common,
    )


FIELD_OVERRIDES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (m.Hello, "role"): st.sampled_from(m.ROLES),
    (m.Hello, "name"): NAMES,
    (m.Hello, "nonce"): NONCES,
    (m.Challenge, "nonce"): NONCES,
    (m.Welcome, "epoch"): NON_NEGATIVE,
    (m.ListJobs, "limit"): NON_NEGATIVE,
    (m.GroupRequest, "group"): NAMES,
    (m.GroupRequest, "limit"): NON_NEGATIVE,
    (m.Children, "limit"): NON_NEGATIVE,
    (m.Retry, "group"): st.none() | NAMES,
    (m.Register, "name"): NAMES,
    (m.Register, "slots"): st.integers(1, 10_000),
    (m.Register, "allow_call"): st.lists(FUNCTIONS | _IDENT, max_size=3).map(
        lambda entries: tuple(e for e in entries if "__" not in e)),  # no dunder entries
    (m.Registered, "frame_bytes_max"): NON_NEGATIVE,
    (m.Registered, "array_items_max"): NON_NEGATIVE,
    (m.Registered, "map_items_max"): NON_NEGATIVE,
    (m.Result, "state"): st.sampled_from(("succeeded", "failed", "cancelled")),
    (m.ErrorReply, "kind"): st.sampled_from(m.ERROR_KINDS),
    (m.AttemptRef, "attempt"): NON_NEGATIVE,
    (m.Register, "epoch_seen"): NON_NEGATIVE,
    (m.Register, "prefetch"): st.integers(0, 1000),
    (m.Kill, "epoch"): NON_NEGATIVE,
    (m.ResultAck, "epoch"): NON_NEGATIVE,
    (m.Fenced, "epoch"): NON_NEGATIVE,
    (m.Fenced, "order_epoch"): NON_NEGATIVE,
    (m.Redirect, "epoch"): NON_NEGATIVE,
    (m.Heartbeat, "held"): NON_NEGATIVE,
    (m.Assign, "env"): ENVS,
    (m.Assign, "cwd"): CWDS,
    # live output (issue 13)
    (m.Output, "attempt"): NON_NEGATIVE,
    (m.Output, "stdout_offset"): NON_NEGATIVE,
    (m.Output, "stderr_offset"): NON_NEGATIVE,
    (m.Tail, "stdout_offset"): NON_NEGATIVE,
    (m.Tail, "stderr_offset"): NON_NEGATIVE,
    (m.Tail, "wait"): st.floats(0.0, m.FOLLOW_WAIT_S_MAX),
}
FIELD_OVERRIDES.update({  # schedules (issue 12)
    (m.ScheduleAdd, "name"): NAMES,
    (m.ScheduleShow, "name"): NAMES,
    (m.ScheduleShow, "count"): NON_NEGATIVE,
    (m.ScheduleChange, "name"): NAMES,
    (m.ScheduleChange, "action"): st.sampled_from(m.SCHEDULE_ACTIONS),
})


def strategy_for_hint(hint: Any) -> st.SearchStrategy[Any]:
    """A strategy for one annotation, as the codec understands annotations."""
    if hint is Any:
        return VALUES
    simple = {int: INT64, float: FINITE_FLOATS, str: TEXT, bytes: st.binary(max_size=64),
              bool: st.booleans()}
    if hint in simple:
        return simple[hint]
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return st.none() | strategy_for_hint(options[0])
    if origin is tuple:
        return st.lists(strategy_for_hint(typing.get_args(hint)[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(TEXT, VALUES, max_size=4)
    if hint is JobSpec:
        return job_specs()
    if attrs.has(hint):
        return strategy_for_class(hint)
    raise TypeError(f"no strategy for {hint!r}")


def strategy_for_class(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: FIELD_OVERRIDES[(cls, f.name)] if (cls, f.name) in FIELD_OVERRIDES
        else strategy_for_hint(hints[f.name])
        for f in attrs.fields(cls)
    }
    return st.builds(cls, **fields)


def roundtrip(msg: Any) -> Any:
    decoder = FrameDecoder()
    decoder.feed(encode(msg))
    (back,) = decoder.messages()
    assert decoder.buffered_bytes == 0
    return back


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_roundtrips(cls: type, data: st.DataObject) -> None:
    """Each message class in ALL_MESSAGES comes out of the decoder equal to what was encoded."""
    msg = data.draw(strategy_for_class(cls))
    back = roundtrip(msg)
    assert type(back) is cls
    assert back == msg


@given(st.lists(st.sampled_from(m.ALL_MESSAGES).flatmap(strategy_for_class), max_size=8))
def test_a_stream_of_messages_roundtrips_in_order(msgs: list[Any]) -> None:
    """Several frames back to back come out as the same messages in the same order."""
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode(msg) for msg in msgs))
    assert decoder.messages() == msgs


def test_message_types_are_unique_and_grouped() -> None:
    """Every TYPE tag is distinct, and every phase set only holds known messages."""
    tags = [cls.TYPE for cls in m.ALL_MESSAGES]  # type: ignore[attr-defined]
    assert len(tags) == len(set(tags))
    known = set(m.ALL_MESSAGES)
    for group in (m.HANDSHAKE_TYPES, m.CLIENT_REQUESTS, m.WORKER_TO_COORDINATOR,
                  m.COORDINATOR_TO_WORKER, m.COORDINATOR_TO_CLIENT):
        assert group <= known


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (m.Hello, dict(version=1, role="admin", name="x", nonce=b"n" * 32)),
        (m.Hello, dict(version=1, role="client", name="", nonce=b"n" * 32)),
        (m.Hello, dict(version=1, role="client", name="x" * 129, nonce=b"n" * 32)),
        (m.Hello, dict(version=1, role="client", name="x", nonce=b"short")),
        (m.Welcome, dict(node="c1", epoch=-1)),
        (m.ListJobs, dict(req_id=1, limit=-5)),
        (m.Register, dict(name="w", slots=0)),
        (m.Register, dict(name="w", slots=10_001)),
        (m.Register, dict(name="w", slots=1, prefetch=1001)),
        (m.Register, dict(name="w", slots=1, prefetch=-1)),
        (m.Result, dict(job_id="j", attempt=1, state="running", exit_code=None, result=None,
                        stdout="", stderr="", error=None, started_at=0.0, finished_at=0.0)),
        (m.Heartbeat, dict(running=[{"job_id": "j", "attempt": -1}])),
        (m.Status, dict(req_id=1, job_ids=("j",) * (m.IDS_PER_REQUEST_MAX + 1))),
    ],
)
def test_validators_reject_out_of_range_fields_on_the_wire(cls: type, fields: dict[str, Any]
                                                           ) -> None:
    """A field outside its validator's range is a RemoteProtocolError when decoded."""
    body = {"t": cls.TYPE, **fields}  # type: ignore[attr-defined]
    payload = msgpack.packb(body, use_bin_type=True)
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(len(payload)) + payload)
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()


def test_printable_names_are_accepted() -> None:
    """A plain worker name of the maximum length is a valid Register."""
    name = (string.ascii_letters * 3)[: m.NAME_CHARS_MAX]
    assert roundtrip(m.Register(name=name, slots=4)) == m.Register(name=name, slots=4)


@given(st.lists(job_specs(), min_size=1, max_size=5))
def test_client_size_bound_is_never_below_the_encoded_size(specs: list[JobSpec]) -> None:
    """The client's cheap size bound (used to skip a second encoding) is a true upper bound."""
    bound = sum(size_bound(spec) for spec in specs)
    size = len(encode(m.Submit(req_id=2**63 - 1, jobs=tuple(specs))))
    assert size <= 64 + bound < UNPACKABLE_BYTES
