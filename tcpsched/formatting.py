"""Human-readable renderings of records, workers and stats, shared by the CLI and console.

Plain text with aligned columns; `style` lets the console colour states without this module
knowing about terminals.

Two rules hold for everything here. Text that comes from a job, a command or a worker (output,
commands, arguments, names, tags, errors) is shown with its control characters escaped
(`core/printable.py`), so it cannot drive the operator's terminal; only `--json` shows it
exactly. And every function is total: a reply is what a peer sent, so a missing field, a
value of the wrong type or a time that is not a finite number renders as something readable
(often "-"), never as an exception that would end the console.

`json_document` is what `--json` prints: standard JSON, which has no NaN or Infinity, so a
float that is not finite (a job may return one) is written as the string "NaN", "Infinity"
or "-Infinity" (the spellings `float()` and JavaScript's `Number()` read back).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from wcwidth import wcswidth, wcwidth

from tcpsched.core.printable import escape_controls

Styler = Callable[[str, str], str]  # (text, state) -> text

NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}  # and NaN -> "NaN"
OUTPUT_CHARS_SHOWN = 2000


def _plain(text: str, _state: str) -> str:
    return text


def json_safe(value: Any) -> Any:
    """`value` with every float that is not finite replaced by "NaN", "Infinity" or
    "-Infinity", so that it is standard JSON; the same object when there is none."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return "NaN" if value != value else NON_FINITE[value]  # noqa: PLR0124 (NaN test)
    if kind is list or kind is tuple:
        items = [json_safe(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items
    if kind is dict:
        out = {key: json_safe(item) for key, item in value.items()}
        if all(out[key] is item for key, item in value.items()):
            return value
        return out
    return value


def json_document(value: Any) -> str:
    """The JSON document `--json` prints: exact text, non-finite floats as strings."""
    return json.dumps(json_safe(value), indent=2, default=repr, allow_nan=False)


def _json_text(value: Any) -> str:
    # ensure_ascii (the default) writes every control character as a \\u escape.
    try:
        return json.dumps(json_safe(value), default=repr, allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # e.g. a map with bytes keys
        return escape_controls(repr(value))


def text(value: Any) -> str:
    """Any value as one line safe for a terminal: strings with their control characters
    escaped, anything else as compact JSON."""
    if isinstance(value, str):
        return escape_controls(value)
    if value is None:
        return "-"
    return escape_controls(_json_text(value))


def _finite(value: Any) -> float | None:
    """`value` as a finite number of seconds, or None when it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            return None
        return number if math.isfinite(number) else None
    return None


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: CJK and most emoji take two, combining marks none.
    (Control characters are escaped before anything is measured; one that is not counts 1.)"""
    width = wcswidth(text)
    if width >= 0:
        return width
    return sum(max(wcwidth(char), 1) for char in text)


def pad(text: str, width: int) -> str:
    """`text` padded with spaces to `width` columns (ljust counts characters, not columns)."""
    return text + " " * max(width - display_width(text), 0)


def short(value: Any, width: int) -> str:
    """At most `width` columns of `value` on one line, cut with "…"."""
    shown = value if isinstance(value, str) else _json_text(value)
    shown = escape_controls(shown.replace("\n", "⏎"))
    if display_width(shown) <= width:
        return shown
    out, used = [], 0
    for char in shown:
        char_width = max(wcwidth(char), 0)
        if used + char_width > width - 1:
            break
        out.append(char)
        used += char_width
    return "".join(out) + "…"


def age(seconds: Any, now: float | None = None) -> str:
    since = _finite(seconds)
    if since is None:
        return "-"
    delta = max((now if now is not None else time.time()) - since, 0.0)
    if delta < 60:
        return f"{delta:.0f}s"
    if delta < 3600:
        return f"{delta / 60:.0f}m"
    if delta < 86400:
        return f"{delta / 3600:.1f}h"
    return f"{delta / 86400:.1f}d"


def duration(record: dict[str, Any]) -> str:
    start, end = _finite(record.get("started_at")), _finite(record.get("finished_at"))
    if start is None:
        return "-"
    seconds = (end if end is not None else time.time()) - start
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def what(record: dict[str, Any]) -> str:
    """The job as one line: its command, or its call with arguments (escaped)."""
    if record.get("kind") == "shell":
        command = record.get("command")
        return escape_controls(command) if isinstance(command, str) else ""
    raw_args = record.get("args")
    raw_kwargs = record.get("kwargs")
    args = ", ".join(_json_text(a) for a in raw_args) if isinstance(raw_args, list) else ""
    kwargs = ", ".join(f"{escape_controls(str(k))}={_json_text(v)}"
                       for k, v in raw_kwargs.items()) if isinstance(raw_kwargs, dict) else ""
    inner = ", ".join(p for p in (args, kwargs) if p)
    return f"{text(record.get('function'))}({inner})"


def outcome(record: dict[str, Any]) -> str:
    state = record.get("state")
    if state == "succeeded":
        if record.get("kind") == "call":
            return short(record.get("result"), 30)
        return f"exit {text(record.get('exit_code'))}"
    if state in ("failed", "cancelled"):
        return short(record.get("error") or f"exit {text(record.get('exit_code'))}", 40)
    return ""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], states: Sequence[str] = (),
          style: Styler = _plain, state_column: int = -1) -> str:
    """Aligned columns, measured in terminal columns (a CJK character or an emoji takes two)."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = ["  ".join(pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for n, row in enumerate(rows):
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths, strict=True)):
            padded = pad(cell, w)
            if i == state_column and n < len(states):
                padded = style(padded, states[n])
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The items of a reply that should be a list of maps; anything else shown by its text."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    return [item if isinstance(item, dict) else {"id": item} for item in items]


def jobs_table(records: Any, style: Styler = _plain, what_width: int = 40) -> str:
    rows_in = _dicts(records)
    if not rows_in:
        return "(no jobs)"
    now = time.time()
    states = [text(r.get("state")) for r in rows_in]
    rows = [
        [
            text(r.get("id")), state, text(r.get("priority", "")), text(r.get("attempts", "")),
            text(r.get("worker")), duration(r), age(r.get("submitted_at"), now),
            short(what(r), what_width), outcome(r),
        ]
        for r, state in zip(rows_in, states, strict=True)
    ]
    return table(("ID", "STATE", "PRI", "TRIES", "WORKER", "TOOK", "AGE", "JOB", "OUTCOME"),
                 rows, states, style, state_column=1)


def workers_table(workers: Any, style: Styler = _plain) -> str:
    rows_in = _dicts(workers)
    if not rows_in:
        return "(no workers registered)"
    now = time.time()
    states = [text(w.get("state")) for w in rows_in]
    rows = []
    for w, state in zip(rows_in, states, strict=True):
        tags = w.get("tags")
        tags_text = ",".join(text(t) for t in tags) if isinstance(tags, list) else text(tags)
        rows.append([
            text(w.get("name")), state, f"{text(w.get('running'))}/{text(w.get('slots'))}",
            text(w.get("address") or None), tags_text or "-",
            age(w.get("last_heartbeat"), now) + " ago",
        ])
    table_text = table(("NAME", "STATE", "BUSY", "ADDRESS", "TAGS", "LAST BEAT"), rows,
                       states, style, state_column=1)
    # A tripped worker's reason is a sentence: one line under the table each, not a column.
    tripped = [f"{text(w.get('name'))} tripped: {text(w.get('reason'))}"
               for w in rows_in if w.get("reason")]
    return "\n".join([table_text, *tripped])


def explain_text(explained: Any) -> str:
    """`explain`: the job and its state, then one reason a line."""
    if not isinstance(explained, dict):
        return text(explained)
    reasons = explained.get("reasons")
    lines = [f"{text(explained.get('id'))} {text(explained.get('state'))}"]
    lines += [f"  - {text(r)}" for r in (reasons if isinstance(reasons, list) else [reasons])]
    return "\n".join(lines)


def coordinators_table(rows_in: Any, style: Styler = _plain) -> str:
    """`coordinators`: one row per configured coordinator, as the one asked sees them."""
    rows_in = _dicts(rows_in)
    if not rows_in:
        return "(no coordinators)"
    rows = []
    roles = []
    for c in rows_in:
        role = text(c.get("role"))
        roles.append(role)
        reachable = c.get("reachable")
        rows.append([
            text(c.get("id")), text(c.get("address")), role, text(c.get("epoch")),
            text(c.get("last_seq")), text(c.get("commit_seq")), text(c.get("lag")),
            "yes" if reachable is True else ("no" if reachable is False else "-"),
        ])
    return table(("ID", "ADDRESS", "ROLE", "EPOCH", "LAST SEQ", "COMMIT SEQ", "LAG", "REACHABLE"),
                 rows, roles, style, state_column=2)


def record_text(r: Any, style: Styler = _plain) -> str:
    if not isinstance(r, dict):
        return text(r)
    state = text(r.get("state"))
    fields = [
        ("id", text(r.get("id"))), ("state", style(state, state)), ("job", what(r)),
        ("priority", r.get("priority")), ("retries", r.get("retries")),
        ("attempts", r.get("attempts")), ("timeout", r.get("timeout")),
        ("worker", r.get("worker")), ("submitted", _when(r.get("submitted_at"))),
        ("started", _when(r.get("started_at"))), ("finished", _when(r.get("finished_at"))),
        ("took", duration(r)), ("exit code", r.get("exit_code")),
    ]
    if r.get("kind") == "call" and r.get("state") == "succeeded":
        fields.append(("result", _json_text(r.get("result"))))
    if r.get("error"):
        fields.append(("error", r["error"]))
    if r.get("reason") and r.get("reason") != r.get("error"):
        fields.append(("reason", r["reason"]))
    if r.get("after") and isinstance(r["after"], list):
        fields.append(("after", ", ".join(text(p) for p in r["after"])))
    if r.get("group"):
        fields.append(("group", r["group"]))
    lines = [f"{k + ':':<11}{v if k in ('id', 'state', 'job') else text(v)}"
             for k, v in fields]
    for stream in ("stdout", "stderr"):
        body = r.get(stream) or ""
        if not isinstance(body, str):
            body = _json_text(body)
        if body:
            if len(body) > OUTPUT_CHARS_SHOWN:
                body = (body[:OUTPUT_CHARS_SHOWN] + f"\n… (first {OUTPUT_CHARS_SHOWN} of "
                        f"{len(body)} characters; `logs {text(r.get('id'))}` or `--json` "
                        "shows the whole output)")
            lines.append(f"{stream}:")
            lines.extend("  " + escape_controls(line, keep_newlines=True)
                         for line in body.rstrip("\n").split("\n"))
    return "\n".join(lines)


def _when(ts: Any) -> str:
    seconds = _finite(ts)
    if seconds is None:
        return text(ts)
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):  # beyond what the C library can represent
        return f"{seconds:g}"
    return stamp + f".{int(seconds % 1 * 1000):03d}"


def stats_text(stats: Any) -> str:
    if not isinstance(stats, dict) or not stats:
        return text(stats)
    keys = [text(k) for k in stats]
    width = max(len(k) for k in keys) + 1
    return "\n".join(f"{k + ':':<{width}} {text(v)}" for k, v in zip(keys, stats.values(),
                                                                      strict=True))
