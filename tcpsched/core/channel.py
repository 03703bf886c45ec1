"""Authenticated framing after a token handshake: every write carries a MAC, in order.

Theory of operation: the token's challenge-response (`core/auth.py`) proves who is at each end
of a connection, but on its own it protects only the handshake: a relay on the path could pass
it through and then insert, replay, drop or reorder frames. So once a token handshake is done
(and TLS, which gives integrity by itself, is not in use), each side derives two keys from the
token and both handshake nonces (`auth.session_keys`), one per direction, and from then on
sends only *sealed units*:

    [4-byte big-endian length N][N bytes: one or more whole frames][16-byte tag]
    tag = HMAC-SHA256(direction key, 8-byte big-endian unit counter || length || payload)[:16]

The counter is implicit: each side counts the units it sends and receives from 0, so a
replayed, dropped or reordered unit is verified against the wrong counter and fails like a
tampered one; no counter travels on the wire. The MAC is per unit, not per message: a
connection coalesces every frame of one event-loop turn into one write, so a burst of
thousands of small messages costs one HMAC (`Sealer.seal` packs frames into units of up to
`UNIT_PAYLOAD_TARGET` bytes; a bigger frame travels alone in its own unit). The keys are never
the token itself, and differ per connection and per direction, so a unit sealed for one
direction or one connection is useless in any other.

`Opener` works like `FrameDecoder`: `feed(data)` returns the verified payload bytes (to be fed
to the connection's `FrameDecoder`, which checks the frames inside as before), or raises
`RemoteProtocolError` exactly where a unit fails; it is dead after its first error. A unit's
length is checked on its 4 header bytes, so it never buffers more than one unit plus one read.
Tags are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence

from tcpsched.errors import RemoteProtocolError

HEADER = struct.Struct(">I")
COUNTER = struct.Struct(">Q")
TAG_BYTES = 16  # a truncated HMAC-SHA256: 128 bits are plenty for an online forgery
KEY_BYTES = 32
# Frames are packed into one unit while it stays under this; the receiver accepts units up to
# max(this, its frame limit) plus a header, so any one frame the sender may send fits.
UNIT_PAYLOAD_TARGET = 256 * 1024
_DIGEST = "sha256"


def unit_payload_max(frame_bytes_max: int) -> int:
    """The largest unit payload a receiver with this frame limit accepts: a unit is either
    frames totalling at most `UNIT_PAYLOAD_TARGET` or one frame (its header included)."""
    return max(frame_bytes_max, UNIT_PAYLOAD_TARGET) + HEADER.size


def _tag(key: bytes, counter: int, unit: bytes | bytearray | memoryview) -> bytes:
    # hmac.digest is OpenSSL's one-shot HMAC: the cheapest per call from Python.
    return hmac.digest(key, COUNTER.pack(counter) + unit, _DIGEST)[:TAG_BYTES]


class Sealer:
    """Our direction of a sealed channel: frames in, sealed units out, counting units."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        self._key = key
        self.units = 0  # units sealed so far: the counter of the next one

    def seal(self, frames: Sequence[bytes]) -> bytes:
        """Whole frames, in order, as one or more sealed units (one per `UNIT_PAYLOAD_TARGET`
        bytes of small frames; a bigger frame alone)."""
        out: list[bytes] = []
        batch: list[bytes] = []
        batch_bytes = 0
        for frame in frames:
            if batch and batch_bytes + len(frame) > UNIT_PAYLOAD_TARGET:
                out.append(self._unit(b"".join(batch)))
                batch, batch_bytes = [], 0
            batch.append(frame)
            batch_bytes += len(frame)
        if batch:
            out.append(self._unit(batch[0] if len(batch) == 1 else b"".join(batch)))
        return out[0] if len(out) == 1 else b"".join(out)

    def _unit(self, payload: bytes) -> bytes:
        if not payload:
            raise ValueError("a unit needs a payload")  # a programming error here
        unit = HEADER.pack(len(payload)) + payload
        tag = _tag(self._key, self.units, unit)
        self.units += 1
        return unit + tag


class Opener:
    """The peer's direction: bytes in (any chunking), verified payload bytes out."""

    def __init__(self, key: bytes, frame_bytes_max: int) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        self._key = key
        self.payload_bytes_max = unit_payload_max(frame_bytes_max)
        self.units = 0  # units verified so far: the counter of the next one
        self._buffer = bytearray()
        self._need: int | None = None  # payload length of the unit being read, once known
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def configure(self, frame_bytes_max: int) -> None:
        """Follow the connection's frame limit once its role is known."""
        self.payload_bytes_max = unit_payload_max(frame_bytes_max)

    def feed(self, data: bytes | bytearray) -> bytes:
        """Buffer `data`; return the payload of every unit it completes (b"" if none), or
        raise RemoteProtocolError at the first unit that is too long or fails its tag."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        out: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    break
                (length,) = HEADER.unpack_from(self._buffer)
                if not 1 <= length <= self.payload_bytes_max:
                    self._die(f"sealed unit length {length} outside "
                              f"[1, {self.payload_bytes_max}]")
                self._need = length
            end = HEADER.size + self._need
            if len(self._buffer) < end + TAG_BYTES:
                break
            view = memoryview(self._buffer)
            try:
                expected = _tag(self._key, self.units, view[:end])
                ok = hmac.compare_digest(expected, view[end : end + TAG_BYTES])
                payload = bytes(view[HEADER.size : end])
            finally:
                view.release()  # the buffer cannot be resized while a view is held
            if not ok:
                self._die(f"unit {self.units} failed authentication (bad MAC: tampered, "
                          "forged, replayed, reordered or a unit before it dropped)")
            del self._buffer[: end + TAG_BYTES]
            self._need = None
            self.units += 1
            out.append(payload)
        return b"".join(out) if len(out) != 1 else out[0]

    def _die(self, why: str) -> None:
        self._error = RemoteProtocolError(why)
        self._buffer.clear()
        raise self._error
