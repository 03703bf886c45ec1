"""Callables for the live output tests, run by workers in their call processes or threads."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def speak(tag: str, here: str, there: str, lines: int = 200) -> str:
    """Say we run (`here`), wait until the other job runs too (`there`), then print and log
    lines naming `tag`, the two jobs interleaved in one worker."""
    Path(here).touch()
    _wait_for(Path(there))
    for i in range(lines):
        print(f"{tag} {i}")
        if i % 50 == 0:
            print(f"{tag} err {i}", file=sys.stderr)
            logging.getLogger("speak").warning("%s logged %d", tag, i)
        time.sleep(0.001)
    return tag
