"""What reaches a terminal: control characters escaped in every text view, JSON kept exact
and standard, renderers that never raise whatever a peer sent, log lines that stay one line."""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched import formatting
from tcpsched.console_text import colour, json_text, one_line, screen_safe
from tcpsched.core.printable import escape_controls, name_problem, worker_problem
from tcpsched.logsetup import EscapingFormatter

# What a hostile job prints: set the title, write the clipboard (OSC 52), clear the screen,
# hide the rest of the line, pass raw text through prompt_toolkit (\001...\002), forge a line.
HOSTILE = ("ok\x1b]0;OWNED\x07\x1b]52;c;aGk=\x07\x1b[2J\x1b[8mhidden\x01\x1b]0;RAW\x07\x02"
           "\rFAKE\u202egnp.exe\x9b1m")
RAW_CONTROLS = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))]


def _assert_inert(text: str, newlines: bool = True) -> None:
    """No character a terminal would obey (newline and tab allowed where `newlines`)."""
    for char in text:
        if newlines and char in "\n\t":
            continue
        assert char not in RAW_CONTROLS and char not in "\u2028\u2029\u202e\n\t", repr(text)


def _record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "abcdef012345", "state": "succeeded", "kind": "shell", "command": "true",
        "args": [], "kwargs": {}, "priority": 0, "retries": 0, "attempts": 1, "timeout": None,
        "tags": [], "after": [], "worker": "w1", "submitted_at": 1.7e9, "started_at": 1.7e9,
        "finished_at": 1.7e9 + 1, "exit_code": 0, "result": None, "stdout": "", "stderr": "",
        "error": None,
    }  # fmt: skip
    return {**base, **fields}


def test_escape_controls_shows_every_control_character_visibly() -> None:
    """ESC, BEL, CR, C1, \\001/\\002 and bidi overrides come out as visible escapes."""
    shown = escape_controls(HOSTILE)
    _assert_inert(shown, newlines=False)
    assert "\\x1b]0;OWNED\\x07" in shown and "\\x1b]52;c;" in shown and "\\x1b[2J" in shown
    assert "\\x01" in shown and "\\x02" in shown and "\\rFAKE" in shown
    assert "\\u202e" in shown and "\\x9b" in shown
    assert escape_controls("a\nb\tc", keep_newlines=True) == "a\nb\tc"
    assert escape_controls("a\nb") == "a\\nb"
    plain = "plain text, ünïcode and emoji 🙂"
    assert escape_controls(plain) is plain


def test_status_text_neutralises_job_output_and_errors() -> None:
    """`status` shows stdout, stderr, error and the command with their escapes visible."""
    record = _record(command=f"printf '{HOSTILE}'", stdout=HOSTILE + "\nline two\n",
                     stderr=HOSTILE, error=HOSTILE, state="failed")
    text = formatting.record_text(record)
    _assert_inert(text)
    assert "\\x1b]0;OWNED" in text and "line two" in text
    assert text.count("\n") == len(text.splitlines()) - 1  # no hidden line breaks (\r, \u2028)


def test_list_and_wait_tables_neutralise_commands_arguments_and_outcomes() -> None:
    """The jobs table (list, wait) escapes commands, call arguments, keys and results."""
    records = [
        _record(command="echo \x1b[8mhidden"),
        _record(kind="call", command=None, function="builtins:str", args=["\x1b]0;x\x07"],
                kwargs={"k\x1b[2J": 1}, result="\x1b]52;c;aGk=\x07"),
        _record(state="failed", error="boom\x1b[2J\nforged", worker="w\x1b[31m"),
    ]
    table = formatting.jobs_table(records)
    _assert_inert(table)
    assert table.count("\n") == len(records)  # one line per job plus the header
    assert "\\x1b[8m" in table and "\\x1b[31m" in table


def test_workers_table_neutralises_names_tags_and_addresses() -> None:
    """A worker name with a newline or escapes stays on its row, visibly escaped."""
    workers = [{"name": "evil\n2024-01-01 INFO forged\x1b]0;t\x07", "state": "alive",
                "running": 0, "slots": 1, "address": "127.0.0.1:1\x1b[2J",
                "tags": ["gpu\x1b[8m", "x"], "last_heartbeat": 1.7e9}]
    table = formatting.workers_table(workers)
    _assert_inert(table)
    assert table.count("\n") == 1 and "evil\\n2024" in table and "gpu\\x1b[8m,x" in table


def test_json_keeps_the_exact_text() -> None:
    """--json is the exact text (control characters as JSON escapes, which parse back)."""
    value = {"stdout": HOSTILE, "name": "a\nb"}
    document = formatting.json_document(value)
    _assert_inert(document)
    assert json.loads(document) == value


def _strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_are_documented_strings_in_json() -> None:
    """NaN, Infinity and -Infinity become the strings "NaN", "Infinity", "-Infinity"; the
    document parses with a parser that refuses the non-standard constants."""
    value = [_record(kind="call", result=math.nan, args=[math.inf, [-math.inf], {"x": 1.5}])]
    parsed = _strict(formatting.json_document(value))
    assert parsed[0]["result"] == "NaN"
    assert parsed[0]["args"] == ["Infinity", ["-Infinity"], {"x": 1.5}]
    assert _strict(json_text({"r": math.nan})) == {"r": "NaN"}
    assert formatting.json_safe(value[0]["kwargs"]) is value[0]["kwargs"]


def test_a_record_with_non_finite_or_odd_times_renders() -> None:
    """started_at=inf (what a hostile worker once sent) and other odd times render as text."""
    for odd in (math.inf, -math.inf, math.nan, 1e300, -1e300, 10**400, "soon", [1], True):
        record = _record(submitted_at=odd, started_at=odd, finished_at=odd)
        assert "started:" in formatting.record_text(record)
        assert formatting.jobs_table([record])


PEER_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
FIELDS = ("id", "state", "kind", "command", "function", "args", "kwargs", "priority",
          "attempts", "timeout", "worker", "submitted_at", "started_at", "finished_at",
          "exit_code", "result", "stdout", "stderr", "error", "name", "running", "slots",
          "address", "tags", "last_heartbeat")


@given(st.dictionaries(st.sampled_from(FIELDS), PEER_VALUES) | PEER_VALUES)
def test_renderers_never_raise_and_never_emit_controls(reply: Any) -> None:
    """Whatever a peer puts in a reply, every renderer returns inert text."""
    for rendered in (formatting.record_text(reply, colour), formatting.jobs_table(reply),
                     formatting.jobs_table([reply]), formatting.workers_table([reply]),
                     formatting.workers_table(reply), formatting.stats_text(reply)):
        _assert_inert(screen_safe(rendered))
        _assert_inert(rendered.replace("\x1b[", ""))  # only our colour codes hold ESC
    formatting.json_document(reply)


def test_screen_safe_keeps_only_our_colour_codes() -> None:
    """The console's last guard passes SGR colours and escapes every other sequence."""
    ours = colour("succeeded", "succeeded")
    assert screen_safe(ours) == ours
    shown = screen_safe("a\x1b]0;t\x07\x01raw\x02\x1b[2J" + ours)
    assert shown.endswith(ours) and "\\x1b]0;t\\x07\\x01raw\\x02" in shown


def test_console_error_lines_are_one_inert_line() -> None:
    """An error quoting a peer's text is one line without control characters."""
    line = one_line(ValueError("no job 'x\x1b]0;t\x07\nforged'"))
    _assert_inert(line, newlines=False)


def test_log_messages_stay_on_one_line() -> None:
    """A name holding a newline and escapes cannot forge a log line or drive a terminal;
    a traceback keeps its lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.display")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("closing %s: %s", "evil\nWARNING forged line\x1b]0;t\x07", "bad")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING closing evil\\nWARNING forged line\\x1b]0;t\\x07: bad"
    assert not any(line.startswith("WARNING forged") for line in lines)
    assert "Traceback (most recent call last):" in lines


@pytest.mark.parametrize("name", ["w\n1", "w 1", "w\x1b[2J", "a,b", "", "x" * 129, "w\u202e"])
def test_bad_worker_names_are_refused(name: str) -> None:
    """Names with controls, whitespace or commas, empty or too long, are refused clearly."""
    problem = name_problem("worker name", name)
    assert problem is not None and problem.startswith("worker name")
    _assert_inert(problem, newlines=False)


def test_good_worker_names_and_tags_pass() -> None:
    """Ordinary host-pid names, unicode names and tags are accepted."""
    assert worker_problem("build-host.example-1234", ("gpu", "ssd")) is None
    assert worker_problem("wörker_1@rack:3", ()) is None
    assert worker_problem("w1", ("gpu\x1b",)) is not None


def test_table_columns_align_by_display_width() -> None:
    """CJK characters and emoji take two terminal columns: the next column still starts at
    the same column on every row, and a cut cell fits its width."""
    rows = [["日本語", "a"], ["ab", "b"], ["😀😀", "c"], ["plain text", "d"]]
    lines = formatting.table(("NAME", "X"), rows).splitlines()
    starts = {formatting.display_width(line[:-1]) for line in lines[1:]}
    assert len(starts) == 1
    assert formatting.display_width(formatting.short("日本語日本語日本語", 7)) <= 7


def test_status_says_how_to_see_cut_output() -> None:
    """A record whose output is cut names `logs JOB` and --json as the way to the rest."""
    text = formatting.record_text({"id": "abcd12345678", "state": "succeeded", "kind": "shell",
                                   "command": "yes", "stdout": "y\n" * 5000})
    assert "`logs abcd12345678` or `--json` shows the whole output" in text
