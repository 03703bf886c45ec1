"""How the console turns results into terminal text: ANSI colours, truncation, one-line errors.

Kept apart from the REPL so the rules for what reaches the screen (a state's colour, at most
`--max-lines` lines with a note, an error as one line, colour codes stripped for `Outcome`s)
sit in one place and stay pure functions of their input, with no prompt_toolkit in sight.
"""

from __future__ import annotations

import re
from typing import Any

from tcpsched import formatting
from tcpsched.core.printable import escape_controls

_COLOURS = {
    "pending": "33", "running": "36;1", "succeeded": "32", "failed": "31;1",
    "cancelled": "35", "alive": "32", "suspect": "33", "draining": "36", "dead": "31;1",
}  # fmt: skip


def colour(text: str, state: str) -> str:
    """The formatting.Styler of the console: states in ANSI colour."""
    code = _COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def truncate(text: str, max_lines: int) -> str:
    """At most `max_lines` lines, with a note saying how many were left out."""
    lines = text.split("\n")
    if max_lines <= 0 or len(lines) <= max_lines:
        return text
    hidden = len(lines) - max_lines
    return "\n".join([*lines[:max_lines],
                      f"… {hidden} more line(s) not shown (see --json, or narrow with --limit)"])


def one_line(exc: BaseException) -> str:
    """An error as the one line a user sees (control characters escaped: it may quote what
    a peer chose)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return escape_controls(text.lstrip(": "))


def json_text(value: Any) -> str:
    """A command's value as the JSON document `--json` prints (see formatting.json_document:
    exact text, control characters as JSON escapes, non-finite floats as strings)."""
    return formatting.json_document(value)


# What the console itself puts in its text: colour codes (SGR) and newlines. Anything else that
# a terminal would obey, or that prompt_toolkit's ANSI() would pass through raw (text between
# \001 and \002), is escaped by `screen_safe` before it is drawn.
_OUR_CODES = re.compile(r"\x1b\[[0-9;]*m")


def screen_safe(text: str) -> str:
    """`text` with our colour codes kept and every other control character escaped: the last
    guard before ANSI(), whatever a renderer upstream forgot to escape."""
    if "\x1b" not in text:
        return escape_controls(text, keep_newlines=True)
    out, start = [], 0
    for match in _OUR_CODES.finditer(text):
        out.append(escape_controls(text[start:match.start()], keep_newlines=True))
        out.append(match.group())
        start = match.end()
    out.append(escape_controls(text[start:], keep_newlines=True))
    return "".join(out)


def plain(text: str) -> str:
    """`text` without ANSI colour codes."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("\x1b[", i):
            end = text.find("m", i)
            if end != -1:
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)

