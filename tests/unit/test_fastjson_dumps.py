"""`fastjson.dumps` (orjson where it writes what `json` means, `json` elsewhere): whatever it
writes reads back, with `json` and with `fastjson.loads`, as the value `json.dumps` would have
written; NaN and Infinity stay themselves (orjson alone would make them null)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.runtime import fastjson
from tcpsched.runtime.journal_lines import encode_line

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4),
    max_leaves=20)


def canonical(value: Any) -> str:
    """One spelling per JSON value (NaN equals NaN here, unlike in Python)."""
    return json.dumps(value, sort_keys=True)


@settings(max_examples=400, deadline=None)
@given(value=values)
def test_dumps_reads_back_as_json_would(value: Any) -> None:
    """Any JSON-able value: the bytes read back (with both readers) as json's own text does."""
    expected = canonical(json.loads(json.dumps(value)))
    data = fastjson.dumps(value)
    assert canonical(json.loads(data)) == expected
    assert canonical(fastjson.loads(data)) == expected


def test_non_finite_floats_beside_a_none_are_kept() -> None:
    """A None makes orjson's `null` ambiguous: a NaN or an Infinity anywhere goes to json."""
    data = fastjson.dumps({"error": None, "result": [1.5, {"x": (math.inf, -math.inf)}],
                           "nan": math.nan})
    assert data == b'{"error":null,"result":[1.5,{"x":[Infinity,-Infinity]}],"nan":NaN}'


def test_a_journal_line_of_a_finish_is_orjsons_and_reads_back() -> None:
    """The common finish record (Nones, times, a small result) takes orjson's bytes."""
    record = {"op": "finish", "id": "14dd21c3bd0f", "attempt": 1, "state": "succeeded",
              "at": 1796182123.541091, "result": 0, "exit_code": None, "error": None}
    line = encode_line(7, record, 2)
    assert b'"exit_code":null' in line and b"NaN" not in line
    assert json.loads(line)["rec"] == record
