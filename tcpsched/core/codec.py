"""Framing and msgpack: messages to bytes, and bytes (in any chunking) back to messages.

Theory of operation: a frame is a 4-byte unsigned big-endian length N (1 <= N <= the frame
limit) followed by N bytes of msgpack, a map whose "t" names the message type. `encode` does one
message. `FrameDecoder` works like h11's connection: `feed(data)` buffers bytes, `next_message()`
returns one message, or None when it needs more bytes, or raises `RemoteProtocolError` exactly
where the bad input is parsed. The length is checked as soon as the 4 header bytes are in, before
the body is buffered, so a peer cannot make us hold more than one frame plus one read.
After a token handshake without TLS the bytes on the wire are sealed units of frames
(`core/channel.py`); the connection verifies them and feeds only the verified payload here.
A handshake decoder is made with `lookahead=False`, so that what follows its last message
stays buffered untouched and can be taken (`take_buffered`) to be read as sealed units.

Every field is checked against the annotation in `core/messages.py` (compiled once per class
into a list of checkers) and the attrs validators run on construction. Free-form values (job
arguments, results) may hold only nil, bool, int, float, str, bytes, lists and str-keyed maps,
nested at most `VALUE_DEPTH_MAX` deep. No ext types, no raw bytes for strings, no non-str keys.
"""

from __future__ import annotations

import math
import struct
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs
import msgpack

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobSpec
from tcpsched.core.limits import ARRAY_ITEMS_MAX, FRAME_BYTES_MAX, MAP_ITEMS_MAX, WireLimits
from tcpsched.core.peer_messages import PEER_MESSAGES
from tcpsched.core.wirecompile import compile_structure, compile_unstructure
from tcpsched.errors import LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")
HANDSHAKE_FRAME_BYTES_MAX = 4096
VALUE_DEPTH_MAX = 32
VALUE_BYTES_MAX = FRAME_BYTES_MAX - 4 * 1024 * 1024  # room for the rest of a Result


@attrs.frozen
class UnpackLimits:
    """msgpack limits; an array of N items costs ~N*8 bytes of pointers, hence the caps."""

    str_bytes_max: int = FRAME_BYTES_MAX
    bin_bytes_max: int = FRAME_BYTES_MAX
    array_items_max: int = ARRAY_ITEMS_MAX
    map_items_max: int = MAP_ITEMS_MAX

    @classmethod
    def from_wire_limits(cls, limits: WireLimits) -> UnpackLimits:
        """How a coordinator unpacks what an authenticated peer sends (see core/limits.py)."""
        return cls(str_bytes_max=limits.frame_bytes_max, bin_bytes_max=limits.frame_bytes_max,
                   array_items_max=limits.array_items_max, map_items_max=limits.map_items_max)


HANDSHAKE_LIMITS = UnpackLimits(
    str_bytes_max=1024, bin_bytes_max=256, array_items_max=16, map_items_max=16
)

_Checker = Callable[[Any], Any]


def _fail(what: str) -> typing.NoReturn:
    raise RemoteProtocolError(what)


def check_value(value: Any, depth: int = 0) -> Any:
    """Check a free-form value (args, kwargs, results); returns it unchanged."""
    if depth > VALUE_DEPTH_MAX:
        _fail(f"value nested deeper than {VALUE_DEPTH_MAX}")
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        for item in value:
            check_value(item, depth + 1)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                _fail("map keys must be strings")
            check_value(item, depth + 1)
        return value
    _fail(f"value of type {type(value).__name__} is not allowed")


def limit_problem(value: Any, limits: UnpackLimits) -> str | None:
    """Why a decoder with `limits` would refuse `value`, or None: the sender's side of the
    array and map item limits, so a sender can refuse a value that would otherwise get its
    connection closed (and closed again on every resend). Strings and bytes are bounded by
    the frame limit, which the sender checks when it encodes."""
    kind = type(value)
    if kind is list or kind is tuple:
        if len(value) > limits.array_items_max:
            return (f"an array of {len(value)} items, over the limit of "
                    f"{limits.array_items_max}")
        for item in value:
            problem = limit_problem(item, limits)
            if problem is not None:
                return problem
    elif kind is dict:
        if len(value) > limits.map_items_max:
            return f"a map of {len(value)} items, over the limit of {limits.map_items_max}"
        for item in value.values():
            problem = limit_problem(item, limits)
            if problem is not None:
                return problem
    return None


def limits_cannot_bind(packed_bytes: int, limits: UnpackLimits) -> bool:
    """True when a value that packs to `packed_bytes` cannot hold an array or map over the
    item limits (an array item takes at least a byte, a map item two), so `limit_problem`
    need not walk it."""
    return packed_bytes <= min(limits.array_items_max, 2 * limits.map_items_max)


def _scalar(kind: type) -> _Checker:
    def check(value: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, float) and not math.isfinite(value):
            # Every float field is a time or a duration. A NaN deadline never compares as due
            # (a timer re-armed at NaN spins forever) and an infinite time is no date to show.
            _fail(f"expected a finite number, got {value!r}")
        if kind is int and isinstance(value, bool):
            _fail("expected int, got bool")
        if not isinstance(value, kind):
            _fail(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def _build_checker(hint: Any) -> _Checker:
    if hint is Any:
        return check_value
    if hint in (int, float, str, bytes, bool):
        return _scalar(hint)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _build_checker(options[0])

        def check_optional(value: Any) -> Any:
            return None if value is None else inner(value)

        return check_optional
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        item = _build_checker(item_hint)

        def check_tuple(value: Any) -> Any:
            if not isinstance(value, list | tuple):
                _fail(f"expected array, got {type(value).__name__}")
            return tuple([item(v) for v in value])  # a list comprehension beats a generator

        return check_tuple
    if origin is dict:

        def check_map(value: Any) -> Any:
            if not isinstance(value, dict):
                _fail(f"expected map, got {type(value).__name__}")
            return check_value(value)

        return check_map
    if attrs.has(hint):
        return lambda value: _structure(hint, value)
    raise TypeError(f"no checker for {hint!r}")  # a programming error in messages.py


@attrs.frozen
class _Shape:
    cls: type
    fields: tuple[tuple[str, _Checker, bool], ...]  # name, checker, has default


_SHAPES: dict[type, _Shape] = {}
_STRUCTURERS: dict[type, Callable[[Any], Any]] = {}  # generated from the shape (wirecompile.py)


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        hints = typing.get_type_hints(cls)
        fields = tuple(
            (f.name, _build_checker(hints[f.name]), f.default is not attrs.NOTHING)
            for f in attrs.fields(cls)
        )
        shape = _SHAPES[cls] = _Shape(cls, fields)
    return shape


def _structure(cls: type, obj: Any) -> Any:
    structure = _STRUCTURERS.get(cls)
    if structure is None:
        shape = _shape(cls)
        structure = _STRUCTURERS[cls] = compile_structure(cls, shape.fields, _fail,
                                                          RemoteProtocolError)
    return structure(obj)


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}  # attrs field names per class, or None
# Generated per attrs class (wirecompile.py); None where its hints cannot be read.
_UNSTRUCTURERS: dict[type, Callable[[Any], dict[str, Any]] | None] = {}


_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})  # msgpack takes these as they are


def _unstructure(value: Any) -> Any:
    # Runs for every field of every message sent, so the attrs lookup is cached per class,
    # and plain values (most fields) return before any lookup.
    cls = type(value)
    if cls in _PLAIN:
        return value
    compiled = _UNSTRUCTURERS.get(cls)
    if compiled is not None:
        return compiled(value)
    if cls not in _UNSTRUCTURERS and attrs.has(cls):
        compiled = _unstructurer(cls)
        if compiled is not None:
            return compiled(value)
    try:
        names = _FIELD_NAMES[cls]
    except KeyError:
        names = tuple(f.name for f in attrs.fields(cls)) if attrs.has(cls) else None
        _FIELD_NAMES[cls] = names
    if names is not None:
        return {name: _unstructure(getattr(value, name)) for name in names}
    if isinstance(value, tuple):
        return [_unstructure(v) for v in value]
    return value


_WIRE_MESSAGES = (*m.ALL_MESSAGES, *PEER_MESSAGES)
_BY_TYPE: dict[str, type] = {cls.TYPE: cls for cls in _WIRE_MESSAGES}  # type: ignore[attr-defined]
for _cls in (*_WIRE_MESSAGES, JobSpec, m.AttemptRef):
    _shape(_cls)  # compile every checker at import, so a bad annotation fails loudly and early
    _STRUCTURERS[_cls] = compile_structure(_cls, _SHAPES[_cls].fields, _fail,
                                           RemoteProtocolError)


def _unstructurer(cls: type) -> Callable[[Any], dict[str, Any]] | None:
    try:
        compiled = compile_unstructure(cls, _unstructure, _nested_unstructurer)
    except (NameError, TypeError, AttributeError):
        compiled = None  # hints that name what is not importable here: the generic walk
    _UNSTRUCTURERS[cls] = compiled
    return compiled


def _nested_unstructurer(cls: type) -> Callable[[Any], Any]:
    return _unstructurer(cls) or _unstructure


def to_wire(msg: Any) -> dict[str, Any]:
    compiled = _UNSTRUCTURERS.get(type(msg)) or _unstructurer(type(msg))
    body = compiled(msg) if compiled is not None else _unstructure(msg)
    body["t"] = msg.TYPE
    return body


def from_wire(obj: Any, allowed: frozenset[type] | None = None) -> Any:
    """Turn one unpacked msgpack object into a message, or raise RemoteProtocolError."""
    if not isinstance(obj, dict):
        _fail(f"a message must be a map, got {type(obj).__name__}")
    tag = obj.get("t")
    cls = _BY_TYPE.get(tag) if isinstance(tag, str) else None
    if cls is None:
        _fail(f"unknown message type {tag!r:.40}")
    if allowed is not None and cls not in allowed:
        _fail(f"message {tag!r} is not allowed here")
    return _structure(cls, obj)


def new_packer() -> msgpack.Packer:
    """A packer for `encode`, made once per connection rather than once per message."""
    return msgpack.Packer(use_bin_type=True)


def encode(msg: Any, frame_bytes_max: int = FRAME_BYTES_MAX,
           packer: msgpack.Packer | None = None) -> bytes:
    """One message as a complete frame; LocalProtocolError if it cannot be one. `packer`
    (from `new_packer`) is reused if given; a failed pack leaves it reset for the next."""
    try:
        if packer is None:
            body = msgpack.packb(to_wire(msg), use_bin_type=True)
        else:
            try:
                body = packer.pack(to_wire(msg))
            except BaseException:
                packer.reset()
                raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from None
    if len(body) > frame_bytes_max:
        # The peer would refuse it and drop the connection; better to fail here, loudly.
        raise LocalProtocolError(
            f"{type(msg).__name__} is {len(body)} bytes, over the frame limit {frame_bytes_max}"
        )
    return HEADER.pack(len(body)) + body


def encode_value(value: Any) -> bytes:
    """Check that a free-form value can be sent (a worker checks a job's result this way)."""
    try:
        check_value(value)
        packed = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, RemoteProtocolError) as exc:
        raise LocalProtocolError(str(exc)) from None
    if len(packed) > VALUE_BYTES_MAX:
        raise LocalProtocolError(f"value is {len(packed)} bytes, over {VALUE_BYTES_MAX}")
    return packed


def peer_refusal(msg: Any, limits: WireLimits, allowed: frozenset[type] | None = None
                 ) -> str | None:
    """Why a peer that decodes with `limits` would refuse `msg` (and drop the connection), or
    None if it would take it: the same unpacking and checks as its `FrameDecoder`.

    A body of N bytes holds no array or map of more than N items and no string longer than the
    frame, so a small body is judged by its length alone and only a big one is unpacked again.
    """
    try:
        body = msgpack.packb(to_wire(msg), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"it cannot be encoded: {exc}"
    if len(body) > limits.frame_bytes_max:
        return (f"it is {len(body)} bytes, over the coordinator's frame limit "
                f"{limits.frame_bytes_max} (--max-frame)")
    if len(body) <= min(limits.array_items_max, limits.map_items_max):
        return None
    decoder = FrameDecoder(limits.frame_bytes_max, allowed, UnpackLimits.from_wire_limits(limits))
    try:
        from_wire(decoder._unpack(body), allowed)
    except RemoteProtocolError as exc:
        return _explain_refusal(to_wire(msg), limits) or str(exc)
    return None


def _explain_refusal(value: Any, limits: WireLimits) -> str | None:
    """The first array or map over its limit in `value`, in words (None if none is)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            if len(item) > limits.array_items_max:
                return (f"it holds an array of {len(item)} items, over the coordinator's limit "
                        f"of {limits.array_items_max} (--max-array-items)")
            stack.extend(item)
        elif isinstance(item, dict):
            if len(item) > limits.map_items_max:
                return (f"it holds a map of {len(item)} items, over the coordinator's limit "
                        f"of {limits.map_items_max} (--max-map-items)")
            stack.extend(item.values())
    return None


def _no_ext(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(f"ext type {code} is not allowed")


class FrameDecoder:
    """Bytes in, messages out. One decoder per connection; dead after its first error."""

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        allowed: frozenset[type] | None = None,
        limits: UnpackLimits | None = None,
        *,
        lookahead: bool = True,
    ) -> None:
        """`lookahead`: check the next frame's header as soon as a message is delivered (an
        oversized one is refused before more is read); off for a handshake decoder, whose
        next bytes may be sealed units rather than frames."""
        self.frame_bytes_max = frame_bytes_max
        self.allowed = allowed
        self.limits = limits or UnpackLimits()
        self.lookahead = lookahead
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def configure(
        self, frame_bytes_max: int, allowed: frozenset[type] | None, limits: UnpackLimits
    ) -> None:
        """Widen (or narrow) what is accepted, e.g. once the handshake is done."""
        self.frame_bytes_max = frame_bytes_max
        self.allowed = allowed
        self.limits = limits

    def take_buffered(self) -> bytes:
        """Everything buffered and not yet decoded, which is then gone from here: at the end of
        a handshake, the first sealed bytes (see `core/channel.py`)."""
        if self._error is not None:
            raise self._error
        data = bytes(self._buffer)
        self._buffer.clear()
        self._need = None
        return data

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data
        if self.lookahead and self._need is None:
            self._check_header()

    def _check_header(self) -> None:
        if self._need is None and len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if not 1 <= length <= self.frame_bytes_max:
                self._error = RemoteProtocolError(
                    f"frame length {length} outside [1, {self.frame_bytes_max}]"
                )
                self._buffer.clear()
                raise self._error
            self._need = length

    def next_message(self) -> Any | None:
        """One message, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        # _check_header's own first test, asked here: this runs twice per message received.
        need = self._need
        if need is None:
            if len(self._buffer) < HEADER.size:
                return None
            self._check_header()
            need = self._need
            assert need is not None  # a full header is a length, or _check_header raised
        end = HEADER.size + need
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        self._need = None
        try:
            obj = self._unpack(body)
            msg = from_wire(obj, self.allowed)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        if self.lookahead:
            try:
                self._check_header()  # refuse an oversized next frame before more is read
            except RemoteProtocolError:
                pass  # the decoder is dead now and the next call raises; deliver this first
        return msg

    def messages(self) -> list[Any]:
        """Every complete message buffered so far (stops at, and raises, the first bad one)."""
        out = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out

    def _unpack(self, body: bytes) -> Any:
        lim = self.limits
        try:
            return msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=True,
                use_list=True,
                ext_hook=_no_ext,
                timestamp=0,
                max_str_len=lim.str_bytes_max,
                max_bin_len=lim.bin_bytes_max,
                max_array_len=lim.array_items_max,
                max_map_len=lim.map_items_max,
                max_ext_len=0,
            )
        except RemoteProtocolError:
            raise
        except Exception as exc:  # msgpack raises a zoo of types for bad input
            raise RemoteProtocolError(f"bad msgpack: {type(exc).__name__}: {exc}"[:200]) from None
