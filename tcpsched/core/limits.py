"""The limits on what an authenticated peer may send: one definition for every process.

Theory of operation: a coordinator decodes what workers and clients send with these limits
(its `--max-frame`, `--max-array-items`, `--max-map-items` flags default to them), and a frame
over any of them closes the connection. A worker must never send such a frame: it would be
refused, the worker would reconnect and send it again, for ever. So the coordinator tells each
worker the limits it enforces (`Registered`), and the worker checks every result against them
before it sends it (`codec.peer_refusal`), turning one that would be refused into a failed
attempt. The defaults live here, so the coordinator, the worker and the codec cannot drift.
"""

from __future__ import annotations

import attrs

FRAME_BYTES_MAX = 16 * 1024 * 1024
ARRAY_ITEMS_MAX = 200_000
MAP_ITEMS_MAX = 100_000


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1")


@attrs.frozen
class WireLimits:
    """What a coordinator accepts from an authenticated peer (strings and bytes may fill a
    whole frame; arrays and maps are capped by count, as each item costs a pointer)."""

    frame_bytes_max: int = attrs.field(default=FRAME_BYTES_MAX, validator=_positive)
    array_items_max: int = attrs.field(default=ARRAY_ITEMS_MAX, validator=_positive)
    map_items_max: int = attrs.field(default=MAP_ITEMS_MAX, validator=_positive)
