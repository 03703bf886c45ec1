"""Fuzzing the decoder: whatever bytes arrive, only messages or RemoteProtocolError come out.

h11's oracle, applied to `FrameDecoder`: every input is either decoded into valid messages, or
needs more bytes, or raises `RemoteProtocolError`; never another exception, never a hang, never
more buffered than one frame plus one read, and the chunking of the input never changes the
outcome. A plain seeded loop mutates valid frames (bit flips, truncation, random lengths,
splices, deep nesting, huge maps, invalid UTF-8, wrong shapes, unknown types) for well over
100,000 inputs per run, kept small so the run takes seconds; hypothesis adds shrinking on
top. No event loop here. The last test checks that nothing in tcpsched can unpickle.
"""

from __future__ import annotations

import ast
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

import tcpsched
from tcpsched.core import messages as m
from tcpsched.core.codec import (
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_LIMITS,
    HEADER,
    FrameDecoder,
    UnpackLimits,
    encode,
)
from tcpsched.core.jobs import JobSpec
from tcpsched.errors import RemoteProtocolError

SEED = int(os.environ.get("TCPSCHED_FUZZ_SEED", "20261122"))
FUZZ_FRAME_BYTES_MAX = 64 * 1024  # small limits keep every input cheap
FUZZ_LIMITS = UnpackLimits(str_bytes_max=4096, bin_bytes_max=4096, array_items_max=512,
                           map_items_max=256)
CORPUS: list[Any] = [
    m.Hello(version=1, role="worker", name="w1", nonce=b"\x01" * 32),
    m.Challenge(nonce=b"\x02" * 32),
    m.Auth(mac=b"\x03" * 32),
    m.Welcome(node="c1", epoch=3, proof=b"\x04" * 32),
    m.Refused(code="auth", reason="no"),
    m.Submit(req_id=7, jobs=(
        JobSpec(kind="shell", command="echo hi", priority=3, retries=1, key="k"),
        JobSpec(kind="call", function="operator:add", args=(1, 2), kwargs={"x": [1.5, None]}),
    )),
    m.Wait(req_id=8, job_ids=("a1", "b2"), timeout=2.5),
    m.ListJobs(req_id=9, state="failed", limit=3),
    m.Register(name="w", slots=2, tags=("gpu",), running=(m.AttemptRef("j", 1),)),
    m.Heartbeat(running=(m.AttemptRef(job_id="j1", attempt=2),)),
    m.Result(job_id="j", attempt=1, state="succeeded", exit_code=0, result={"a": [1, b"x"]},
             stdout="o", stderr="", error=None, started_at=1.0, finished_at=2.0),
    m.Assign(job_id="j", attempt=1, epoch=1, kind="call", command=None, function="m:f",
             args=(1, "a"), kwargs={}, timeout=None),
    m.Reply(req_id=1, value=[{"id": "x", "state": "pending"}]),
    m.Draining(),
]
VALID_FRAMES = [encode(msg) for msg in CORPUS]


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


# -- the oracle ---------------------------------------------------------------------------------


def outcome(data: bytes, chunks: list[int], decoder: FrameDecoder) -> tuple[list[Any], bool]:
    """Feed `data` cut at `chunks`; returns (messages, ended in a protocol error). Anything
    but a message, None or RemoteProtocolError escapes and fails the test."""
    out: list[Any] = []
    pos = 0
    cuts = [*chunks, len(data)]
    try:
        for cut in cuts:
            piece = data[pos:cut]
            pos = max(pos, cut)
            if piece:
                decoder.feed(piece)
                assert decoder.buffered_bytes <= HEADER.size + decoder.frame_bytes_max + len(
                    piece)
            while (msg := decoder.next_message()) is not None:
                assert isinstance(msg, m.ALL_MESSAGES)
                out.append(repr(msg))  # repr: a NaN in a free-form value equals itself
    except RemoteProtocolError:
        # Dead after its first error: it must keep saying so, not resume mid-stream.
        for again in (lambda: decoder.feed(b"\x00"), decoder.next_message):
            try:
                again()
            except RemoteProtocolError:
                continue
            raise AssertionError("decoder resumed after a protocol error") from None
        return out, True
    return out, False


def check(data: bytes, rng: random.Random, make: Callable[[], FrameDecoder]) -> bool:
    """Whole versus a random chunking versus byte-by-byte must agree; returns 'error'."""
    whole = outcome(data, [], make())
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
    assert outcome(data, cuts, make()) == whole
    if len(data) <= 64 and rng.random() < 0.25:
        assert outcome(data, list(range(1, len(data))), make()) == whole
    return whole[1]


def wide() -> FrameDecoder:
    return FrameDecoder(FUZZ_FRAME_BYTES_MAX, None, FUZZ_LIMITS)


def narrow() -> FrameDecoder:
    return FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX, m.HANDSHAKE_TYPES, HANDSHAKE_LIMITS)


# -- the mutators ---------------------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A small random msgpack value: wrong shapes for every field."""
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-9, 99)])
    if kind == 3:
        return rng.choice([0.0, -1.5, float("inf"), float("nan"), 1e308])
    if kind == 4:
        return rng.choice(["", "x", "ünï", "a" * 40, "hello", "worker", "client"])
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 16, 31, 32, 33]))
    if kind == 6:
        return rng.choice([t.TYPE for t in m.ALL_MESSAGES] + ["nope", ""])
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["t", "req_id", "jobs", "name", "nonce", "mac", "version", "role", "value", "job_id",
            "attempt", "kind", "command", "args", "slots", "running", "state", "proof", "z"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def wrong_shape(rng: random.Random) -> bytes:
    """A valid message with one field replaced by a random value, or a random map."""
    wire = msgpack.unpackb(rng.choice(VALID_FRAMES)[4:], raw=False)
    if rng.random() < 0.8 and len(wire) > 1:
        wire[rng.choice([k for k in wire if k != "t"])] = random_value(rng)
    else:
        wire = random_value(rng)
    return _frame(msgpack.packb(wire, use_bin_type=True))


def deep(rng: random.Random) -> bytes:
    depth = rng.choice([31, 32, 33, 100, 1000, 5000])
    inner = b"\x91" * depth + b"\xc0"  # [[[...nil...]]]
    if rng.random() < 0.5:
        body = msgpack.packb({"t": "reply", "req_id": 1}, use_bin_type=True)
        body = b"\x83" + body[1:] + b"\xa5value" + inner  # {"t","req_id","value": deep}
    else:
        body = inner
    return _frame(body)


def huge_container(rng: random.Random) -> bytes:
    """Headers that claim more items or bytes than follow (or than any limit allows)."""
    count = rng.choice([2**16, 2**31, 2**32 - 1, 513, 257])
    header = rng.choice([b"\xdf", b"\xdd", b"\xdb", b"\xc6"]) + struct.pack(">I", count)
    return _frame(header + rng.randbytes(rng.randrange(16)))


def bad_utf8(rng: random.Random) -> bytes:
    text = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b"])
    key_or_value = rng.random() < 0.5
    body = b"\x82\xa1t" + bytes([0xA0 | len(text)]) + text if key_or_value else (
        b"\x81" + bytes([0xA0 | len(text)]) + text + b"\xc0")
    return _frame(body)


def unknown_or_ext(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        obj = {"t": rng.choice(["pickle", "exec", "HELLO", "hello\x00", 1, None])}
        return _frame(msgpack.packb(obj, use_bin_type=True))
    # fixext 1, ext 8, timestamp (-1) where a value goes
    ext = rng.choice([b"\xd4\x05\x00", b"\xc7\x01\x07\x00", b"\xd6\xff\x00\x00\x00\x01"])
    return _frame(b"\x82\xa1t\xa5reply\xa5value" + ext)


def mutate(rng: random.Random) -> bytes:
    """One malformed (or occasionally still valid) input built from the corpus."""
    base = bytearray(b"".join(rng.choice(VALID_FRAMES) for _ in range(rng.randrange(1, 3))))
    op = rng.randrange(12)
    if op == 0:  # flip bytes
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(base))
            base[i] ^= 1 << rng.randrange(8)
        return bytes(base)
    if op == 1:  # truncate
        return bytes(base[: rng.randrange(len(base))])
    if op == 2:  # random length header
        length = rng.choice([0, 1, 2, 3, len(base) - 5, 2**31, 2**32 - 1,
                             FUZZ_FRAME_BYTES_MAX + 1, rng.randrange(2**32)])
        return struct.pack(">I", length % 2**32) + bytes(base[4:])
    if op == 3:  # garbage appended or prepended
        junk = rng.randbytes(rng.randrange(1, 24))
        return bytes(base) + junk if rng.random() < 0.5 else junk + bytes(base)
    if op == 4:  # random bytes overwrite a slice
        i = rng.randrange(len(base))
        base[i : i + 4] = rng.randbytes(4)
        return bytes(base)
    if op == 5:
        return rng.randbytes(rng.randrange(0, 48))
    if op == 6:
        return wrong_shape(rng)
    if op == 7:
        return deep(rng)
    if op == 8:
        return huge_container(rng)
    if op == 9:
        return bad_utf8(rng)
    if op == 10:
        return unknown_or_ext(rng)
    # a valid frame whose body has trailing bytes inside the declared length
    body = bytes(base[4 : 4 + HEADER.unpack_from(base)[0]]) + rng.randbytes(rng.randrange(1, 5))
    return _frame(body)


def inputs(count: int, seed: int) -> Iterator[tuple[bytes, random.Random]]:
    rng = random.Random(seed)
    for _ in range(count):
        yield mutate(rng), rng


# -- the tests ------------------------------------------------------------------------------------


def test_fuzz_loop_wide_decoder() -> None:
    """75,000 mutated inputs to an authenticated decoder: messages or RemoteProtocolError."""
    errors = sum(check(data, rng, wide) for data, rng in inputs(75_000, SEED))
    assert errors > 50_000  # the mutators do produce malformed input, mostly


def test_fuzz_loop_handshake_decoder() -> None:
    """30,000 mutated inputs to a handshake decoder: only the small handshake is decoded."""
    for data, rng in inputs(30_000, SEED + 1):
        msgs, _error = outcome(data, [rng.randrange(len(data) + 1)], narrow())
        assert all(msg.split("(")[0] in _HANDSHAKE_NAMES for msg in msgs)


def test_valid_stream_survives_the_oracle() -> None:
    """The oracle itself: the unmutated corpus decodes to exactly the corpus, any chunking."""
    data = b"".join(VALID_FRAMES)
    rng = random.Random(SEED)
    assert outcome(data, [], wide()) == ([repr(msg) for msg in CORPUS], False)
    assert not check(data, rng, wide)


def test_length_is_refused_before_the_body_arrives() -> None:
    """A huge declared length fails on its 4 header bytes, before anything is buffered."""
    decoder = narrow()
    try:
        decoder.feed(struct.pack(">I", 2**32 - 1))
    except RemoteProtocolError as exc:
        assert "frame length" in str(exc)
    else:
        raise AssertionError("a 4 GiB frame header was accepted")
    assert decoder.buffered_bytes == 0


@settings(max_examples=1500)
@given(st.binary(max_size=96), st.lists(st.integers(0, 96), max_size=4))
def test_hypothesis_random_bytes(data: bytes, cuts: list[int]) -> None:
    """Random bytes in a random chunking: messages or RemoteProtocolError, same as whole."""
    assert outcome(data, sorted(cuts), wide()) == outcome(data, [], wide())


@settings(max_examples=1500)
@given(st.integers(0, len(VALID_FRAMES) - 1), st.integers(0, 2**32 - 1), st.binary(max_size=8),
       st.integers(0, 200))
def test_hypothesis_mutated_frames(index: int, length: int, patch: bytes, at: int) -> None:
    """A valid frame with a random length and a random patch: no other exception escapes."""
    data = bytearray(VALID_FRAMES[index])
    data[0:4] = struct.pack(">I", length)
    data[at : at + len(patch)] = patch
    outcome(bytes(data), [], wide())
    outcome(bytes(data), [], narrow())


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from([t.TYPE for t in m.ALL_MESSAGES]),
       st.dictionaries(st.sampled_from(["req_id", "jobs", "name", "nonce", "job_id", "value",
                                        "attempt", "running", "slots", "mac", "role"]),
                       json_like, max_size=5))
def test_hypothesis_wrong_shapes(tag: str, fields: dict[str, Any]) -> None:
    """Valid msgpack maps of every type with random fields: a valid message or an error."""
    data = _frame(msgpack.packb({"t": tag, **fields}, use_bin_type=True))
    msgs, error = outcome(data, [], wide())
    assert error or (len(msgs) == 1 and msgs[0].startswith(_CLASS_BY_TAG[tag] + "("))


_CLASS_BY_TAG = {t.TYPE: t.__name__ for t in m.ALL_MESSAGES}
_HANDSHAKE_NAMES = {t.__name__ for t in m.HANDSHAKE_TYPES}


# -- no unpickling, anywhere ---------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
                  "jsonpickle"}
PACKAGE = Path(tcpsched.__file__).parent


def test_no_module_imports_a_deserialiser_of_code() -> None:
    """No tcpsched source imports pickle, marshal or shelve (or their cousins)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif (isinstance(node, ast.Call) and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                      "import_module", "__import__")):
                names = [str(node.args[0].value)]
            offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} {n}"  # type: ignore[attr-defined]
                          for n in names if n.split(".")[0] in UNSAFE_MODULES]
    assert offenders == []


def test_importing_every_module_loads_no_pickle() -> None:
    """Importing all of tcpsched (in a fresh interpreter) leaves pickle and shelve unloaded."""
    script = (
        "import importlib, pkgutil, sys, tcpsched\n"
        "for info in pkgutil.walk_packages(tcpsched.__path__, 'tcpsched.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in ('pickle', '_pickle', 'shelve', 'dill', 'cloudpickle')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
