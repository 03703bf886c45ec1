"""Callables for the isolation and job-environment tests, run by workers in their call
processes (or threads). Each does one thing a test can observe from outside."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path


def pid() -> int:
    """The pid of the process running the call."""
    return os.getpid()


def spin(pid_file: str) -> None:
    """Record our pid, then burn CPU forever: only killing the process ends this."""
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        pass


def burn(rounds: int) -> int:
    """CPU-bound pure Python work: holds the GIL throughout."""
    total = 0
    for i in range(rounds):
        total = (total + i * i) % 1_000_003
    return total


def hog(mib: int) -> int:
    """Allocate `mib` MiB at once (touching it), past any small memory limit."""
    block = bytearray(mib * 1024 * 1024)
    return len(block)


def chatty() -> int:
    """print() to stdout and stderr, and a warning through logging."""
    print("to stdout")
    print("to stderr", file=sys.stderr)
    logging.getLogger("chatty").warning("logged %d", 42)
    return 7


async def async_pid(delay: float) -> int:
    """A coroutine function: awaited by whoever runs it, then says where it ran."""
    await asyncio.sleep(delay)
    return os.getpid()


def wait_for_file(path: str) -> str:
    """Block (a thread cannot be interrupted) until `path` exists."""
    gate = Path(path)
    while not gate.exists():
        import time

        time.sleep(0.02)
    return "opened"
