"""Logging, configured once per process at its entry point."""

from __future__ import annotations

import logging
import sys


def configure(level: str, node: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)-7s {node} %(name)s: %(message)s",
        stream=sys.stderr,
    )
