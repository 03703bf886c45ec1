"""Callables for the `--allow-call` tests: a module that, like most, imports other modules.

A worker started with `--allow-call tests.integration.allowed_tasks` must run `double` and
nothing reachable through the imports below (`os.system`, or `system` imported from os).
"""

from __future__ import annotations

import os
from os import system

__all__ = ["double", "os", "system"]


def double(x: int) -> int:
    return 2 * x
