"""Human-readable renderings of records, workers and stats, shared by the CLI and console.

Plain text with aligned columns; `style` lets the console colour states without this module
knowing about terminals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

Styler = Callable[[str, str], str]  # (text, state) -> text


def _plain(text: str, _state: str) -> str:
    return text


def short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def age(seconds: float | None, now: float | None = None) -> str:
    if seconds is None:
        return "-"
    delta = max((now if now is not None else time.time()) - seconds, 0.0)
    if delta < 60:
        return f"{delta:.0f}s"
    if delta < 3600:
        return f"{delta / 60:.0f}m"
    if delta < 86400:
        return f"{delta / 3600:.1f}h"
    return f"{delta / 86400:.1f}d"


def duration(record: dict[str, Any]) -> str:
    start, end = record.get("started_at"), record.get("finished_at")
    if start is None:
        return "-"
    seconds = (end if end is not None else time.time()) - start
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def what(record: dict[str, Any]) -> str:
    if record.get("kind") == "shell":
        return record.get("command") or ""
    args = ", ".join(json.dumps(a) for a in record.get("args") or [])
    kwargs = ", ".join(f"{k}={json.dumps(v)}" for k, v in (record.get("kwargs") or {}).items())
    inner = ", ".join(p for p in (args, kwargs) if p)
    return f"{record.get('function')}({inner})"


def outcome(record: dict[str, Any]) -> str:
    state = record.get("state")
    if state == "succeeded":
        if record.get("kind") == "call":
            return short(record.get("result"), 30)
        return f"exit {record.get('exit_code')}"
    if state in ("failed", "cancelled"):
        return short(record.get("error") or f"exit {record.get('exit_code')}", 40)
    return ""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], states: Sequence[str] = (),
          style: Styler = _plain, state_column: int = -1) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for n, row in enumerate(rows):
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(w)
            if i == state_column and n < len(states):
                padded = style(padded, states[n])
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def jobs_table(records: Sequence[dict[str, Any]], style: Styler = _plain,
               what_width: int = 40) -> str:
    if not records:
        return "(no jobs)"
    now = time.time()
    rows = [
        [
            r["id"], r["state"], str(r.get("priority", "")), str(r.get("attempts", "")),
            r.get("worker") or "-", duration(r), age(r.get("submitted_at"), now),
            short(what(r), what_width), outcome(r),
        ]
        for r in records
    ]
    return table(("ID", "STATE", "PRI", "TRIES", "WORKER", "TOOK", "AGE", "JOB", "OUTCOME"),
                 rows, [r["state"] for r in records], style, state_column=1)


def workers_table(workers: Sequence[dict[str, Any]], style: Styler = _plain) -> str:
    if not workers:
        return "(no workers registered)"
    now = time.time()
    rows = [
        [
            w["name"], w["state"], f"{w['running']}/{w['slots']}", w.get("address") or "-",
            ",".join(w.get("tags") or []) or "-", age(w.get("last_heartbeat"), now) + " ago",
        ]
        for w in workers
    ]
    return table(("NAME", "STATE", "BUSY", "ADDRESS", "TAGS", "LAST BEAT"), rows,
                 [w["state"] for w in workers], style, state_column=1)


def record_text(r: dict[str, Any], style: Styler = _plain) -> str:
    fields = [
        ("id", r["id"]), ("state", style(r["state"], r["state"])), ("job", what(r)),
        ("priority", r.get("priority")), ("retries", r.get("retries")),
        ("attempts", r.get("attempts")), ("timeout", r.get("timeout")),
        ("worker", r.get("worker")), ("submitted", _when(r.get("submitted_at"))),
        ("started", _when(r.get("started_at"))), ("finished", _when(r.get("finished_at"))),
        ("took", duration(r)), ("exit code", r.get("exit_code")),
    ]
    if r.get("kind") == "call" and r.get("state") == "succeeded":
        fields.append(("result", json.dumps(r.get("result"), default=repr)))
    if r.get("error"):
        fields.append(("error", r["error"]))
    if r.get("reason"):
        fields.append(("reason", r["reason"]))
    lines = [f"{k + ':':<11}{'-' if v is None else v}" for k, v in fields]
    for stream in ("stdout", "stderr"):
        text = r.get(stream) or ""
        if text:
            body = text if len(text) <= 2000 else text[:2000] + f"\n… ({len(text)} chars)"
            lines.append(f"{stream}:")
            lines.extend("  " + line for line in body.rstrip("\n").splitlines())
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def stats_text(stats: dict[str, Any]) -> str:
    width = max(len(k) for k in stats) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in stats.items())
