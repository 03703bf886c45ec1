"""Callables for the prefetch tests: each run leaves a line in an effects file, so a test can
count how many times a job really ran (a record alone cannot tell a second run)."""

from __future__ import annotations


def record(path: str, token: str) -> str:
    """Append `token` to the file at `path` (one line per run) and return it."""
    with open(path, "a", encoding="utf-8") as effects:
        effects.write(token + "\n")
    return token
