"""Logging, configured once per process at its entry point.

Log messages quote what peers chose (worker names and tags, job ids, commands, errors), so the
formatter escapes control characters in the message (`core/printable.py`): a name holding a
newline cannot forge a log line, and an escape sequence cannot drive the terminal of whoever
reads the log. Tracebacks are ours and keep their lines.
"""

from __future__ import annotations

import logging
import sys

from tcpsched.core.printable import escape_controls


class EscapingFormatter(logging.Formatter):
    """A Formatter whose message part is one line with every control character escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def configure(level: str, node: str) -> None:
    shown = escape_controls(node).replace("%", "%%")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        EscapingFormatter(f"%(asctime)s %(levelname)-7s {shown} %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
