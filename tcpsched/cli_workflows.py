"""The CLI's workflow commands and flags: `map`, `retry`, `--after` and `--group`.

Theory of operation: `add_workflow_parsers` adds to the parsers `cli_parser.add_command_parsers`
built (so the console and shell completion get them too): `map` and `retry`, `--after` on
`submit` and `map`, and `--group` on `status`, `wait`, `list` and `cancel`. `execute_workflow`
runs what is theirs and returns None for everything else, which `cli.execute` then runs.

`map --items FILE.jsonl`: one JSON value a line, each one item; blank lines are skipped. The
function gets the item as its one argument, or with `--unpack` a JSON array item as its
argument list. A line that is not JSON is refused with its line number before anything is
submitted.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from tcpsched import formatting
from tcpsched.errors import ConfigError
from tcpsched.formatting_groups import group_text

if TYPE_CHECKING:
    from tcpsched.cli import CommandResult
    from tcpsched.client import Client

# The submit options `map` shares (the same argparse actions, so the same checks and help).
MAP_SHARED_OPTIONS = ("priority", "retries", "timeout", "delay", "env", "cwd", "after", "tags")
CHUNK_SIZE_MAX = 1_000_000


def add_workflow_parsers(sub: Any, command: Any) -> None:
    """`sub` is the subparsers action, `command(name, summary, description)` makes one."""
    submit = sub.choices["submit"]
    submit.add_argument("--after", action="append", default=[], metavar="JOB",
                        help="run only once this job has succeeded; cancelled if it fails or "
                        "is cancelled (repeatable: all must succeed; an id, key or id prefix "
                        "of a job that exists now)")
    p = command("map", "one job per chunk of items, sharing a group id",
                "Split FILE.jsonl (one JSON item a line) into jobs of --chunk-size items "
                "each, sharing a new group id; prints the group and the job ids. A chunk "
                "job calls the function once per item and its result is the list of the "
                "results; `status --group`, `wait --group`, `list --group`, `cancel --group` "
                "and `retry --group` act on the group.")
    p.add_argument("--call", required=True, metavar="MODULE:FUNCTION",
                   help="the callable each item is passed to")
    p.add_argument("--items", required=True, metavar="FILE.jsonl",
                   help="one JSON value per line, each one item (blank lines are skipped)")
    p.add_argument("--chunk-size", type=_chunk_size, default=1, metavar="K",
                   help=f"items per job, 1 to {CHUNK_SIZE_MAX} (default: 1, one job per "
                   "item; as many as there are items: one job for the whole batch)")
    p.add_argument("--unpack", action="store_true",
                   help="a JSON array item is the argument list, not one argument")
    for action in submit._actions:
        if action.dest in MAP_SHARED_OPTIONS:
            p._add_action(action)
    for name in ("status", "wait", "list", "cancel"):
        sub.choices[name].add_argument(
            "--group", default=None, metavar="G",
            help="every job of this group (the id `map` printed) instead of one job")
    p = command("retry", "requeue failed or cancelled jobs as a new attempt, same id",
                "Requeue a failed or cancelled job (or those of a group) as a new attempt "
                "with the same id and history; its attempt count goes on. A job cancelled "
                "because its parent failed is not revived with the parent: retry it too, or "
                "`retry --group G`, which requeues parents before their children.")
    p.add_argument("job", nargs="?", metavar="JOB", help="job id, idempotency key or id prefix")
    p.add_argument("--group", default=None, metavar="G", help="every such job of this group")
    p.add_argument("--state", choices=("failed", "cancelled"), default=None,
                   help="with --group: only jobs in this state (default: both)")


def _chunk_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 1 <= value <= CHUNK_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"must be 1 to {CHUNK_SIZE_MAX}, not {value}")
    return value


def read_items(path: str, unpack: bool) -> list[Any]:
    """The items of a JSON-lines file; ConfigError names the file and line of a bad one."""
    items: list[Any] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise ConfigError(f"map: {path} line {number} is not JSON ({exc})"
                                      ) from None
                if unpack:
                    if not isinstance(item, list):
                        raise ConfigError(f"map: {path} line {number}: --unpack needs a JSON "
                                          "array on every line")
                    item = tuple(item)
                items.append(item)
    except OSError as exc:
        raise ConfigError(f"map: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"map: {path} is not UTF-8 text ({exc.reason})") from None
    if not items:
        raise ConfigError(f"map: {path} holds no items")
    return items


async def execute_workflow(client: Client, args: Any, style: formatting.Styler
                           ) -> CommandResult | None:
    """Run `map`, `retry` or a `--group` form; None when the command is none of those."""
    from tcpsched import cli

    command = args.command
    group = getattr(args, "group", None)
    if command == "map":
        return await _map(client, args)
    if command == "retry":
        if (args.job is None) == (group is None):
            raise ConfigError("retry takes JOB or --group G")
        if args.state is not None and group is None:
            raise ConfigError("retry --state goes with --group")
        records = await client.retry(args.job, group=group, state=args.state)
        note = None if records else "no job was retried (none failed or cancelled)"
        return cli.CommandResult(cli.EXIT_OK, records, formatting.jobs_table(records, style),
                                 note)
    if command not in ("status", "wait", "list", "cancel"):
        return None
    single = getattr(args, "job", None) or getattr(args, "jobs", None)
    if group is None:
        if not single and command != "list":
            raise ConfigError(f"{command} takes JOB or --group G")
        return None
    if single:
        raise ConfigError(f"{command} takes JOB or --group G, not both")
    if command == "status":
        summary = await client.group_status(group)
        return cli.CommandResult(cli.EXIT_OK, summary, group_text(summary))
    if command == "wait":
        ids = await client.group_ids(group)
        return await cli._wait(client, argparse.Namespace(**{**vars(args), "jobs": ids}),
                               style)
    if command == "list":
        records = await client.list_group(group, args.state, args.limit)
        return cli.CommandResult(cli.EXIT_OK, records, formatting.jobs_table(records, style))
    records = await client.cancel_group(group)
    return cli.CommandResult(cli.EXIT_OK, records, formatting.jobs_table(records, style),
                             None if records else f"group {group}: every job had finished")


async def _map(client: Client, args: Any) -> CommandResult:
    from tcpsched import cli
    from tcpsched.cli_parser import parse_env
    from tcpsched.client_workflows import new_group

    items = read_items(args.items, args.unpack)
    group = new_group()
    options: dict[str, Any] = dict(
        priority=args.priority, retries=args.retries, timeout=args.timeout, delay=args.delay,
        env=parse_env(args.env), cwd=args.cwd, after=tuple(args.after),
        tags=tuple(t.strip() for t in args.tags.split(",") if t.strip()),
        chunk_size=args.chunk_size, group=group)
    ids = await client.map(args.call, items, **options)
    value = {"group": group, "ids": ids}
    return cli.CommandResult(cli.EXIT_OK, value,
                             f"group {group}: {len(ids)} job(s) for {len(items)} item(s)")
