"""The grammar of the one-shot commands, shared with the console: every command's parser, the
global options each one carries, the exit codes, and a parsed `submit` turned into a JobSpec.

`tcpsched/cli.py` runs what these parse; the console adds the same parsers to its own
(`add_command_parsers`), so a line typed there means what it means on the command line.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from tcpsched.cli_schedule import add_schedule_parser, sub_options_for
from tcpsched.cli_workflows import add_workflow_parsers
from tcpsched.config import (
    HelpFormatter,
    UsageParser,
    add_tls_flags,
    version_text,
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
from tcpsched.errors import (
    ConfigError,
)
from tcpsched.output import (
    EXIT_BROKEN_PIPE,
    EXIT_OUTPUT_ERROR,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_WAIT_TIMEOUT = 5
EXIT_QUEUE_FULL = 6
COMMANDS = ("submit", "status", "wait", "logs", "list", "cancel", "workers", "coordinators",
            "stats", "leader", "completion", "schedule", "map", "retry")
STATES = tuple(s.value for s in JobState)
SHELLS = ("bash", "zsh", "fish")
LIST_LIMIT_MAX = 1_000_000

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    ok
  {EXIT_JOB_FAILED}    a job failed or was cancelled (wait, logs)
  {EXIT_USAGE}    usage error: bad flag, unknown job, idempotency key reused for another job
  {EXIT_UNAVAILABLE}    no coordinator reachable, or no leader within --connect-timeout
  {EXIT_AUTH}    authentication refused (token, TLS certificate, TLS/plain mismatch)
  {EXIT_WAIT_TIMEOUT}    wait --timeout ran out with jobs not yet finished
  {EXIT_QUEUE_FULL}    refused for overload: the leader's queue is full (--max-pending); retry later
  {EXIT_OUTPUT_ERROR}   the output could not be written (disk full, I/O error)
  {EXIT_BROKEN_PIPE}  the reader closed the pipe before all output was written (| head)

environment: TCPSCHED_COORDINATORS, TCPSCHED_TOKEN, TCPSCHED_TOKEN_FILE stand in for
--coordinators and --token-file when those are not given."""


def parse_arg(text: str) -> Any:
    """A --call ARG: JSON where it parses (2 is an int, '"2"' a string), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _number(kind: type, minimum: float | None = None, maximum: float | None = None,
            unit: str = "", above: float | None = None) -> Any:
    """An argparse type for a finite number within bounds; the message names the bounds.

    `above` is an exclusive lower bound ("must be more than 0 seconds"). The errors are
    `ArgumentTypeError`s: argparse shows their text, whereas for a ValueError it shows only
    "invalid float value", which hides what would have been accepted."""
    parts = []
    if above is not None:
        parts.append(f"more than {_bound(above)}{unit}"
                     + (f" (at least {_bound(minimum)})" if minimum is not None else ""))
    elif minimum is not None:
        parts.append(f"at least {_bound(minimum)}{unit}")
    if maximum is not None:
        parts.append(f"at most {_bound(maximum)}{unit}")
    bounds = "must be " + " and ".join(parts)

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{bounds}, not {text!r}, which is not "
                f"{'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{bounds}, not {text!r}")
        if ((above is not None and not value > above)
                or (minimum is not None and value < minimum)
                or (maximum is not None and value > maximum)):
            raise argparse.ArgumentTypeError(f"{bounds}, not {text!r}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _seconds(*, above: float | None = None, minimum: float | None = None) -> Any:
    """A duration flag in seconds, at most a year (what a job spec accepts)."""
    return _number(float, minimum=minimum, maximum=SECONDS_MAX, unit=" seconds", above=above)


def _timeout() -> Any:
    """submit --timeout: more than 0, and no shorter than a process can be killed in."""
    return _number(float, minimum=TIMEOUT_S_MIN, maximum=SECONDS_MAX, unit=" seconds", above=0)


def _global_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                    after_command: bool) -> None:
    """The options every command takes. After the command their default is SUPPRESS, so a
    command's parser sets only what was given there and keeps what came before it."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    parser.add_argument("--coordinators", default=default(None), metavar="HOST:PORT,...",
                        help="coordinator addresses, comma-separated (default: "
                        "$TCPSCHED_COORDINATORS, else 127.0.0.1:7001)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print one JSON document instead of text (default: text)")
    parser.add_argument("--token-file", default=default(None), metavar="FILE",
                        help="file holding the cluster's shared token (default: "
                        "$TCPSCHED_TOKEN, else $TCPSCHED_TOKEN_FILE, else no token)")
    parser.add_argument("--connect-timeout", type=_number(float, above=0, maximum=SECONDS_MAX,
                                                          unit=" seconds"),
                        default=default(5.0), metavar="S",
                        help="give up finding a coordinator or leader after S seconds "
                        "(default: 5)")
    add_tls_flags(parser, default=default(None))


def add_command_parsers(parser: UsageParser, *, cli: bool = False) -> Any:
    """The commands shared with the console. With `cli`, also the global options after each
    command and the commands only the one-shot CLI has (`logs`, `completion`)."""
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    sub.required = True

    def command(name: str, summary: str, description: str | None = None) -> UsageParser:
        p: UsageParser = sub.add_parser(
            name, help=summary, description=description or summary[0].upper() + summary[1:]
            + ".", formatter_class=HelpFormatter, epilog=EXIT_CODES_HELP if cli else None)
        if cli:
            _global_options(p.add_argument_group("global options (also before the "
                                                 "command)"), after_command=True)
        return p

    p = command("submit", "queue a job", "Queue a job; prints its id.")
    p.add_argument("--priority", type=_number(int, PRIORITY_MIN, PRIORITY_MAX), default=0,
                   metavar="P", help=f"higher runs first, {PRIORITY_MIN} to {PRIORITY_MAX} "
                   "(default: 0)")
    p.add_argument("--retries", type=_number(int, 0, RETRIES_MAX), default=0, metavar="R",
                   help=f"attempts after a failure, 0 to {RETRIES_MAX} (default: 0)")
    p.add_argument("--timeout", type=_timeout(), default=None, metavar="S",
                   help=f"kill the job after S seconds, more than 0 (at least "
                   f"{TIMEOUT_S_MIN:g}) and at most {SECONDS_MAX} (a year) (default: none)")
    p.add_argument("--delay", type=_seconds(minimum=0), default=0.0, metavar="S",
                   help=f"run no sooner than S seconds from now, 0 to {SECONDS_MAX} "
                   "(default: 0)")
    p.add_argument("--id", dest="key", default=None, metavar="KEY",
                   help="idempotency key: the same key and spec twice make one job, the same "
                   "key with another spec is refused (exit 2); status, wait and cancel "
                   "accept the key in place of the id (default: a random key)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the job, over the worker's (repeatable; "
                   "default: none)")
    p.add_argument("--cwd", default=None, metavar="DIR",
                   help="directory the job runs in, on the worker (default: the worker's "
                   "--workdir)")
    p.add_argument("--tags", default="", metavar="a,b",
                   help="run only on a worker with every one of these tags (its --tags); "
                   "while no live worker has them the job stays pending and `explain` says "
                   "why (default: any worker)")
    p.add_argument("--queue-wait", type=_seconds(minimum=0), default=0.0, metavar="S",
                   help=f"while the leader's queue is full, back off and resend for up to S "
                   f"seconds before exiting {EXIT_QUEUE_FULL} (default: 0, exit at once)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--shell", metavar="CMD", help="a shell command, run by /bin/sh")
    what.add_argument("--call", nargs="+", metavar=("MODULE:FUNCTION", "ARG"),
                      help="a Python callable and its positional arguments, each parsed as "
                      "JSON where it parses and taken as a string otherwise")
    p.add_argument("--kwargs", default=None, metavar="JSON",
                   help="keyword arguments for --call, a JSON object (default: none)")

    p = command("status", "one job's record",
                "One job's record, by id, idempotency key or id prefix (at least 4 "
                "characters).")
    p.add_argument("job", nargs="?", metavar="JOB", help="job id, idempotency key or id prefix")

    p = command("wait", "block until jobs are finished; exit 0 if all succeeded",
                "Block until every job is finished; prints their records. Exit 0 if all "
                f"succeeded, {EXIT_JOB_FAILED} if one failed or was cancelled, "
                f"{EXIT_WAIT_TIMEOUT} if --timeout ran out first.")
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job ids, keys or id prefixes")
    p.add_argument("--timeout", type=_seconds(minimum=0), default=None, metavar="S",
                   help=f"stop waiting after S seconds, 0 (look once) to {SECONDS_MAX}; "
                   f"unfinished jobs then exit {EXIT_WAIT_TIMEOUT} (default: wait forever)")

    p = command("list", "jobs, newest first",
                "Jobs, newest first, fetched a page at a time. When more jobs match than "
                "--limit, a note on stderr gives the --page cursor that continues the "
                "listing (--json output stays one array of records).")
    p.add_argument("--state", choices=STATES, default=None,
                   help="only jobs in this state (default: every state)")
    p.add_argument("--limit", type=_number(int, 1, LIST_LIMIT_MAX), default=50, metavar="N",
                   help=f"show at most N jobs, 1 to {LIST_LIMIT_MAX} (default: 50)")
    p.add_argument("--page", default=None, metavar="CURSOR",
                   help="continue after this job id, as the note of a previous listing says "
                   "(default: from the newest job)")

    p = command("explain", "why a job went where it went, or why it is still pending",
                "Why a job went where it went (the policy, the worker, its load then), or "
                "why it is still pending (parents, delay, retry backoff, tags no live worker "
                "has, full or tripped workers).")
    p.add_argument("job", metavar="JOB", help="job id, idempotency key or id prefix")

    p = command("cancel", "cancel a pending job, or kill a running one")
    p.add_argument("job", nargs="?", metavar="JOB", help="job id, idempotency key or id prefix")

    add_workflow_parsers(sub, command)
    command("workers", "registered workers")
    command("stats", "cluster figures")
    command("leader", "which coordinator leads")
    command("coordinators", "every coordinator: role, epoch, log position, lag, reachability")
    add_schedule_parser(command, sub_options_for(_global_options, cli), _number, _timeout)
    if cli:
        p = command("logs", "a job's stdout and stderr",
                    f"A job's stdout (to stdout) and stderr (to stderr), whole; with --follow, "
                    f"as it comes while the job runs, until it ends. Exit {EXIT_JOB_FAILED} "
                    "if the job failed or was cancelled.")
        p.add_argument("job", metavar="JOB", help="job id, idempotency key or id prefix")
        p.add_argument("--follow", action="store_true",
                       help="stream the output while the job runs and exit when it ends "
                       "(with --json: print the whole output once it ends) (default: what "
                       "it has now)")
        p = command("completion", "a shell completion script",
                    "Print a completion script for SHELL, generated from this parser. "
                    "bash: `source <(python -m tcpsched completion bash)`; zsh: write it to "
                    "a file named _tcpsched on $fpath; fish: write it to "
                    "~/.config/fish/completions/tcpsched.fish.")
        p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    return sub


def build_parser(prog: str = "python -m tcpsched") -> UsageParser:
    parser = UsageParser(prog=prog, description="Drive a tcpsched cluster.",
                         formatter_class=HelpFormatter, epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and exit")
    _global_options(parser, after_command=False)
    add_command_parsers(parser, cli=True)
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
                   delay=args.delay, key=args.key, env=parse_env(args.env), cwd=args.cwd,
                   tags=tuple(t.strip() for t in args.tags.split(",") if t.strip()),
                   after=tuple(args.after))
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
