"""Callables for the routing, backpressure and breaker tests: each run leaves one line."""

from __future__ import annotations

import os


def record(path: str, item: int) -> int:
    """Append `item` to `path` (one short write with O_APPEND: lines never interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{item}\n".encode())
    finally:
        os.close(fd)
    return item
