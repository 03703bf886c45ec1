"""The one-shot commands (`python -m tcpsched COMMAND`), shared with the console.

`build_parser()` is the grammar of every command; `execute(client, args)` runs one parsed
command against a connected client and returns what to print and the exit code, so the console
runs exactly the same code. Exit codes: 0 ok, 1 a job failed or was cancelled (`wait`), 2 usage
error (bad flags, unknown job), 3 no coordinator reachable, 4 authentication refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from tcpsched import formatting
from tcpsched.client import Client
from tcpsched.config import (
    UsageParser,
    add_tls_flags,
    parse_coordinators,
    read_token,
    tls_from_args,
)
from tcpsched.core.jobs import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRIES_MAX,
    SECONDS_MAX,
    TIMEOUT_S_MIN,
    JobSpec,
    JobState,
)
from tcpsched.core.printable import escape_controls
from tcpsched.errors import (
    AuthError,
    ConfigError,
    JobNotFound,
    JobTimeout,
    NotLeaderError,
    RequestError,
    TcpschedError,
    UnavailableError,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_AUTH = 0, 1, 2, 3, 4
COMMANDS = ("submit", "status", "wait", "list", "cancel", "workers", "coordinators", "stats",
            "leader")
STATES = tuple(s.value for s in JobState)


@attrs.frozen
class CommandResult:
    exit_code: int
    value: Any  # what --json prints
    text: str  # what a person reads
    error: str | None = None  # one line for stderr


def parse_arg(text: str) -> Any:
    """A --call ARG: JSON where it parses (2 is an int, '"2"' a string), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _number(kind: type, minimum: float | None = None, maximum: float | None = None,
            unit: str = "") -> Any:
    """An argparse type for a finite number within bounds; the message names the bounds.

    The errors are `ArgumentTypeError`s: argparse shows their text, whereas for a ValueError
    it shows only "invalid float value", which hides what would have been accepted."""
    low = "" if minimum is None else _bound(minimum)
    high = "" if maximum is None else _bound(maximum) + unit
    if minimum is not None and maximum is not None:
        bounds = f"must be at least {low} and at most {high}"
    elif minimum is not None:
        bounds = f"must be at least {low}"
    else:
        bounds = f"must be at most {high}"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; it {bounds}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r} {bounds}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _seconds(minimum: float) -> Any:
    """A duration flag: at least `minimum`, at most a year (what a job spec accepts)."""
    return _number(float, minimum, SECONDS_MAX, unit=" seconds (365 days)")


def add_command_parsers(parser: UsageParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    sub.required = True

    p = sub.add_parser("submit", help="queue a job", description="Queue a job.")
    p.add_argument("--priority", type=_number(int, PRIORITY_MIN, PRIORITY_MAX), default=0,
                   help=f"higher runs first, {PRIORITY_MIN} to {PRIORITY_MAX} (0)")
    p.add_argument("--retries", type=_number(int, 0, RETRIES_MAX), default=0,
                   help=f"retries after failure, 0 to {RETRIES_MAX} (0)")
    p.add_argument("--timeout", type=_seconds(TIMEOUT_S_MIN), default=None,
                   metavar="S", help=f"kill the job after S seconds, {TIMEOUT_S_MIN:g} to "
                   f"{SECONDS_MAX} (365 days)")
    p.add_argument("--delay", type=_seconds(0), default=0.0, metavar="S",
                   help=f"run no sooner than S seconds from now, 0 to {SECONDS_MAX} (365 days)")
    p.add_argument("--id", dest="key", default=None, metavar="KEY",
                   help="idempotency key: the same key twice makes one job")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the job, over the worker's (repeatable)")
    p.add_argument("--cwd", default=None, metavar="DIR",
                   help="directory the job runs in, on the worker (the worker's --workdir)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--shell", metavar="CMD", help="a shell command")
    what.add_argument("--call", nargs="+", metavar=("MODULE:FUNCTION", "ARG"),
                      help="a Python callable and its arguments (JSON where they parse)")
    p.add_argument("--kwargs", default=None, metavar="JSON",
                   help="keyword arguments for --call, a JSON object")

    p = sub.add_parser("status", help="one job's record")
    p.add_argument("job", metavar="JOB")

    p = sub.add_parser("wait", help="block until jobs are finished; exit 0 if all succeeded")
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.add_argument("--timeout", type=_seconds(0), default=None, metavar="S",
                   help=f"stop waiting after S seconds, 0 to {SECONDS_MAX}")

    p = sub.add_parser("list", help="jobs, newest first")
    p.add_argument("--state", choices=STATES, default=None)
    p.add_argument("--limit", type=_number(int, 0), default=50, metavar="N")

    p = sub.add_parser("cancel", help="cancel a pending job, or kill a running one")
    p.add_argument("job", metavar="JOB")

    sub.add_parser("workers", help="registered workers")
    sub.add_parser("stats", help="cluster figures")
    sub.add_parser("leader", help="which coordinator leads")
    sub.add_parser("coordinators", help="every coordinator: role, epoch, log position, lag")


def build_parser(prog: str = "python -m tcpsched") -> UsageParser:
    parser = UsageParser(prog=prog, description="Drive a tcpsched cluster.")
    parser.add_argument("--coordinators", default=None, metavar="HOST:PORT,...",
                        help="coordinator addresses (TCPSCHED_COORDINATORS, 127.0.0.1:7001)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--token-file", default=None, metavar="F")
    parser.add_argument("--connect-timeout", type=_number(float, 0.1, SECONDS_MAX), default=5.0,
                        metavar="S", help="give up finding a coordinator after S seconds (5)")
    add_tls_flags(parser)
    add_command_parsers(parser)
    return parser


def parse_env(entries: list[str]) -> dict[str, str]:
    """`--env NAME=VALUE` flags as a map (a later NAME wins); the JobSpec checks the names."""
    env: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ConfigError(f"submit: --env {entry!r} must look like NAME=VALUE")
        env[name] = value
    return env


def spec_from_args(args: Any) -> JobSpec:
    options = dict(priority=args.priority, retries=args.retries, timeout=args.timeout,
                   delay=args.delay, key=args.key, env=parse_env(args.env), cwd=args.cwd)
    try:
        if args.shell is not None:
            if args.kwargs is not None:
                raise ConfigError("--kwargs goes with --call, not --shell")
            return JobSpec(kind="shell", command=args.shell, **options)
        function, *raw = args.call
        kwargs: dict[str, Any] = {}
        if args.kwargs is not None:
            try:
                kwargs = json.loads(args.kwargs)
            except ValueError as exc:
                raise ConfigError(f"--kwargs is not valid JSON: {exc}") from None
            if not isinstance(kwargs, dict):
                raise ConfigError("--kwargs must be a JSON object")
        return JobSpec(kind="call", function=function, args=tuple(parse_arg(a) for a in raw),
                       kwargs=kwargs, **options)
    except ValueError as exc:
        raise ConfigError(f"submit: {exc}") from None


async def execute(client: Client, args: Any, style: formatting.Styler | None = None
                  ) -> CommandResult:
    """Run one parsed command. Errors from the cluster propagate as TcpschedError."""
    style = style or (lambda text, _state: text)
    command = args.command
    if command == "submit":
        job_id = await client.submit(spec_from_args(args))
        return CommandResult(EXIT_OK, {"id": job_id}, job_id)
    if command == "status":
        record = await client.status(args.job)
        return CommandResult(EXIT_OK, record, formatting.record_text(record, style))
    if command == "wait":
        records = await client.wait_records(args.jobs, args.timeout)
        states = [_field(r, "state") for r in records]
        unfinished = [s for s in states if s in ("pending", "running")]
        ok = all(s == "succeeded" for s in states)
        error = None
        if unfinished:
            error = (f"timed out after {args.timeout:g}s: {len(unfinished)} of {len(records)} "
                     "job(s) not finished")
        elif not ok:
            bad = [s for s in states if s != "succeeded"]
            error = f"{len(bad)} of {len(records)} job(s) did not succeed"
        return CommandResult(EXIT_OK if ok else EXIT_JOB_FAILED, records,
                             formatting.jobs_table(records, style), error)
    if command == "list":
        records = await client.list(args.state, args.limit)
        return CommandResult(EXIT_OK, records, formatting.jobs_table(records, style))
    if command == "cancel":
        record = await client.cancel(args.job)
        error = None
        if _field(record, "state") not in ("cancelled",):
            error = (f"job {formatting.text(_field(record, 'id'))} had already "
                     f"{formatting.text(_field(record, 'state'))}; nothing to cancel")
        return CommandResult(EXIT_OK, record, formatting.record_text(record, style), error)
    if command == "workers":
        workers = await client.workers()
        return CommandResult(EXIT_OK, workers, formatting.workers_table(workers, style))
    if command == "stats":
        stats = await client.stats()
        return CommandResult(EXIT_OK, stats, formatting.stats_text(stats))
    if command == "coordinators":
        rows = await client.coordinators()
        return CommandResult(EXIT_OK, rows, formatting.coordinators_table(rows, style))
    if command == "leader":
        leader = await client.leader()
        shown = " ".join(formatting.text(_field(leader, k)) for k in ("id", "address"))
        return CommandResult(EXIT_OK, leader,
                             f"{shown} epoch {formatting.text(_field(leader, 'epoch'))}")
    raise ConfigError(f"unknown command {command!r}")


def _field(value: Any, name: str) -> Any:
    """`value[name]` of a reply that should be a map, or None: a reply is what a peer sent."""
    return value.get(name) if isinstance(value, dict) else None


def error_line(exc: BaseException | str) -> str:
    """An error as the one line a user sees: whitespace collapsed, control characters
    escaped (a message may quote a job id, a name or a command a peer chose)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return escape_controls(text)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, AuthError):
        return EXIT_AUTH
    if isinstance(exc, UnavailableError | NotLeaderError):
        return EXIT_UNAVAILABLE  # 3: no coordinator reachable, or no leader within the timeout
    if isinstance(exc, JobTimeout):
        return EXIT_JOB_FAILED
    if isinstance(exc, ConfigError | JobNotFound | RequestError):
        return EXIT_USAGE
    return EXIT_USAGE


async def _run(args: Any) -> CommandResult:
    client = Client(parse_coordinators(args.coordinators), read_token(args.token_file),
                    connect_timeout=args.connect_timeout, tls=tls_from_args(args))
    try:
        return await execute(client, args)
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        import uvloop

        result = uvloop.run(_run(args))
    except TcpschedError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    try:
        print(formatting.json_document(result.value) if args.json else result.text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `... | head` closed the pipe: that is the reader's choice, not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if result.error:
        line = error_line(result.error)
        print(f"error: {line}" if result.exit_code else f"note: {line}", file=sys.stderr)
    return result.exit_code
