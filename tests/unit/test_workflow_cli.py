"""The CLI, client and console pieces of workflows that need no cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.document import Document

from tcpsched import cli_parser
from tcpsched.chunks import CHUNK_FUNCTION, call_each
from tcpsched.cli_workflows import execute_workflow, read_items
from tcpsched.client import _chunks
from tcpsched.client_workflows import flatten_results
from tcpsched.config import UsageParser
from tcpsched.console import _subparsers
from tcpsched.console_completion import Catalog, ConsoleCompleter
from tcpsched.errors import ConfigError, RequestError
from tcpsched.formatting_groups import group_text, progress_bar


def test_items_file_lines_blank_lines_and_unpack(tmp_path: Path) -> None:
    """One JSON value a line is one item; blank lines are skipped; --unpack makes an array
    line the argument list."""
    path = tmp_path / "items.jsonl"
    path.write_text('1\n\n"two"\n[3, 4]\n   \n')
    assert read_items(str(path), unpack=False) == [1, "two", [3, 4]]
    path.write_text("[1, 2]\n[3]\n")
    assert read_items(str(path), unpack=True) == [(1, 2), (3,)]


@pytest.mark.parametrize(("text", "unpack", "message"), [
    ('1\n{"a": \n', False, "line 2 is not JSON"),
    ("1\n2\n", True, "line 1: --unpack needs a JSON array"),
    ("\n\n", False, "holds no items"),
    (b"\xff\n", False, "is not UTF-8"),
])
def test_bad_items_file_is_one_clear_error(tmp_path: Path, text: Any, unpack: bool,
                                           message: str) -> None:
    """A bad items file is refused with a message naming the line (or what is wrong)."""
    path = tmp_path / "items.jsonl"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_items(str(path), unpack)
    with pytest.raises(ConfigError, match="cannot read"):
        read_items(str(tmp_path / "missing.jsonl"), unpack)


def test_chunks_and_call_each_keep_item_order() -> None:
    """Chunks are K argument lists in item order (a tuple item is its argument list); a chunk
    job returns the function's results in order; gathered, chunks are spread out."""
    chunks = list(_chunks([1, (2, 3), 4, 5, 6], 2))
    assert chunks == [[[1], [2, 3]], [[4], [5]], [[6]]]
    assert call_each("operator:add", [[1, 2], [3, 4]]) == [3, 7]
    with pytest.raises(RuntimeError, match="item 1 of the chunk: TypeError"):
        call_each("operator:neg", [[1], ["x"]])
    records = [{"id": "a", "state": "succeeded", "function": CHUNK_FUNCTION, "result": [1, 2]},
               {"id": "b", "state": "succeeded", "function": "operator:neg", "result": 3}]
    assert flatten_results(records) == [1, 2, 3]
    with pytest.raises(RequestError, match="job c is failed: boom"):
        flatten_results([*records, {"id": "c", "state": "failed", "error": "boom"}])


def test_group_text_draws_progress_and_eta() -> None:
    """The bar fills with progress; counts, throughput and ETA follow on the second line."""
    assert progress_bar(0.5, 10) == "[#####.....]  50.0%"
    summary = {"group": "g1", "total": 4, "done": 2, "progress": 0.5, "throughput": 0.25,
               "eta_s": 8.0, "counts": {"pending": 2, "succeeded": 2}}
    first, second = group_text(summary).split("\n")
    assert first.startswith("group g1  [####") and first.endswith("2/4 done")
    assert second == "pending 2  succeeded 2  0.25 jobs/s  ETA 8s"
    assert group_text({**summary, "eta_s": 0.0}).endswith("finished")


def _parse(*words: str) -> Any:
    return cli_parser.build_parser().parse_args(list(words))


@pytest.mark.parametrize("words", [
    ("retry",), ("retry", "abcd", "--group", "g"), ("retry", "abcd", "--state", "failed"),
    ("status",), ("cancel",), ("wait",), ("status", "abcd", "--group", "g"),
])
def test_job_or_group_is_required_and_not_both(words: tuple[str, ...]) -> None:
    """retry, status, cancel and wait take JOB or --group G: neither or both is a usage
    error before anything is sent."""
    with pytest.raises(ConfigError):
        asyncio.run(execute_workflow(None, _parse(*words), lambda t, _s: t))  # type: ignore[arg-type]


def test_submit_after_is_repeatable_and_map_shares_submit_options() -> None:
    """--after repeats into the spec; map takes the submit options and --chunk-size."""
    args = _parse("submit", "--after", "a1b2", "--after", "key", "--shell", "true")
    assert cli_parser.spec_from_args(args).after == ("a1b2", "key")
    args = _parse("map", "--call", "m:f", "--items", "x.jsonl", "--chunk-size", "100",
                  "--priority", "3", "--after", "a1b2")
    assert (args.chunk_size, args.priority, args.after) == (100, 3, ["a1b2"])
    with pytest.raises(ConfigError, match="--chunk-size must be 1 to"):
        _parse("map", "--call", "m:f", "--items", "x.jsonl", "--chunk-size", "0")


def _complete(completer: ConsoleCompleter, text: str) -> list[str]:
    return [c.text for c in completer.get_completions(Document(text), None)]  # type: ignore[arg-type]


def test_console_completes_groups_seen_and_the_new_commands() -> None:
    """map and retry are commands; a group `map` printed completes after --group and after
    `watch group`."""
    catalog = Catalog()
    parser = UsageParser(prog="", add_help=False)
    cli_parser.add_command_parsers(parser)
    completer = ConsoleCompleter(catalog, dict(_subparsers(parser)), {})
    assert {"map", "retry"} <= set(_complete(completer, ""))
    catalog.note_value({"group": "8e1f0c2a", "ids": ["a", "b"]})
    assert _complete(completer, "status --group ") == ["8e1f0c2a"]
    assert _complete(completer, "watch group ") == ["8e1f0c2a"]
    assert "group" in _complete(completer, "watch ")
