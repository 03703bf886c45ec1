"""What text from jobs, commands and workers may reach a terminal or a log line.

Theory of operation: job output, commands, arguments, worker names and tags are written by
whoever submits a job or runs a worker, and a terminal obeys control characters: ESC starts
sequences that set the window title, write the clipboard (OSC 52), clear the screen or hide
the rest of a line, a carriage return or a newline lets text forge what looks like another line,
and bidirectional overrides make text read differently from what it is. So every text view
(CLI tables, the console, log lines) passes such text through `escape_controls`, which shows
each of those characters visibly as a Python-style escape (`\\x1b`, `\\r`, `\\u202e`) and
leaves everything else alone; `--json` keeps the exact text. `name_problem` is the rule for
worker names and tags, checked when a worker starts and again when it registers, so that a
name is always something an operator can read and type.
"""

from __future__ import annotations

import re

NAME_CHARS_MAX = 128
TAG_CHARS_MAX = 64

# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some terminals), line and paragraph
# separators, bidirectional embeddings, overrides and isolates, and lone surrogates (which
# cannot even be written to a UTF-8 stream). Tab and newline are kept only in multi-line text.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_SURROGATES = "\ud800-\udfff"
_UNSAFE_LINE = re.compile(f"[\t\n{_CONTROLS}{_SURROGATES}]")
_UNSAFE_TEXT = re.compile(f"[{_CONTROLS}{_SURROGATES}]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as a visible escape; `keep_newlines` keeps
    newline and tab (for multi-line output), everything else that a terminal would obey is
    escaped either way. Text with nothing to escape comes back as the same object."""
    pattern = _UNSAFE_TEXT if keep_newlines else _UNSAFE_LINE
    if pattern.search(text) is None:
        return text
    return pattern.sub(_visible, text)


def name_problem(what: str, name: object, chars_max: int = NAME_CHARS_MAX) -> str | None:
    """Why `name` cannot be a worker name or tag (`what` says which), or None if it can:
    1 to `chars_max` printable characters, no whitespace, and no comma (tags are given
    comma-separated)."""
    if not isinstance(name, str):
        return f"{what} must be a string"
    if not 0 < len(name) <= chars_max:
        return f"{what} must have 1 to {chars_max} characters"
    for char in name:
        if not char.isprintable() or char.isspace() or char == ",":
            shown = escape_controls(name)
            return (f"{what} '{shown}' holds '{escape_controls(char)}': only printable "
                    "characters, without spaces or commas, are allowed")
    return None


def worker_problem(name: object, tags: object) -> str | None:
    """Why a worker with this name and these tags cannot register, or None if it can."""
    problem = name_problem("worker name", name)
    if problem is not None:
        return problem
    if not isinstance(tags, tuple | list):
        return "worker tags must be a list"
    for tag in tags:
        problem = name_problem("worker tag", tag, TAG_CHARS_MAX)
        if problem is not None:
            return problem
    return None
