"""The one-shot commands (`python -m tcpsched COMMAND`), shared with the console.

`build_parser()` is the grammar of every command; `execute(client, args)` runs one parsed
command against a connected client and returns what to print and the exit code, so the console
runs exactly the same code. The global options (`--coordinators`, `--json`, `--token-file`,
`--connect-timeout`, the TLS flags) are accepted before or after the command: each command's
parser carries them too, with defaults that leave what was given before the command alone.

Output is written by `output.write_all`, never by `print`: see that module for why a plain
print lost everything past the first pipe buffer with a slow reader.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from tcpsched import formatting
from tcpsched.cli_schedule import add_schedule_parser, execute_schedule, sub_options_for
from tcpsched.cli_workflows import add_workflow_parsers, execute_workflow
from tcpsched.client import Client
from tcpsched.config import (
    HelpFormatter,
    UsageParser,
    add_tls_flags,
    parse_coordinators,
    read_token,
    tls_from_args,
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
from tcpsched.core.printable import escape_controls
from tcpsched.errors import (
    AuthError,
    ConfigError,
    JobNotFound,
    JobTimeout,
    NotLeaderError,
    QueueFull,
    RequestError,
    TcpschedError,
    UnavailableError,
)
from tcpsched.follow import follow
from tcpsched.output import (
    EXIT_BROKEN_PIPE,
    EXIT_OUTPUT_ERROR,
    OutputError,
    ReaderGone,
    silence_stdout,
    write_all,
    write_error,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_WAIT_TIMEOUT = 5
EXIT_QUEUE_FULL = 6
COMMANDS = ("submit", "status", "wait", "logs", "list", "cancel", "workers", "coordinators",
            "stats", "leader", "completion", "schedule", "map", "retry")
STATES = tuple(s.value for s in JobState)
SHELLS = ("bash", "zsh", "fish")
LIST_PAGE_JOBS = 1000  # jobs asked for per round trip when a listing spans several pages
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


@attrs.frozen
class CommandResult:
    exit_code: int
    value: Any  # what --json prints
    text: str  # what a person reads
    error: str | None = None  # one line for stderr
    stderr_text: str = ""  # `logs`: the job's stderr, written to ours as it is


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


async def execute(client: Client, args: Any, style: formatting.Styler | None = None
                  ) -> CommandResult:
    """Run one parsed command. Errors from the cluster propagate as TcpschedError."""
    style = style or (lambda text, _state: text)
    command = args.command
    workflow = await execute_workflow(client, args, style)
    if workflow is not None:
        return workflow
    if command == "submit":
        spec = spec_from_args(args)
        saved, client.queue_full_wait_s = client.queue_full_wait_s, args.queue_wait
        try:
            job_id = await client.submit(spec)
        finally:
            client.queue_full_wait_s = saved
        return CommandResult(EXIT_OK, {"id": job_id}, job_id)
    if command == "explain":
        explained = await client.explain(args.job)
        return CommandResult(EXIT_OK, explained, formatting.explain_text(explained))
    if command == "status":
        record = await client.status(args.job)
        return CommandResult(EXIT_OK, record, formatting.record_text(record, style))
    if command == "wait":
        return await _wait(client, args, style)
    if command == "list":
        return await _list(client, args, style)
    if command == "logs":
        return await _logs(client, args)
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
    if command == "schedule":
        value, shown = await execute_schedule(client, args, spec_from_args)
        return CommandResult(EXIT_OK, value, shown)
    if command == "leader":
        leader = await client.leader()
        shown = " ".join(formatting.text(_field(leader, k)) for k in ("id", "address"))
        return CommandResult(EXIT_OK, leader,
                             f"{shown} epoch {formatting.text(_field(leader, 'epoch'))}")
    raise ConfigError(f"unknown command {command!r}")


async def _wait(client: Client, args: Any, style: formatting.Styler) -> CommandResult:
    records = await client.wait_records(args.jobs, args.timeout)
    states = [_field(r, "state") for r in records]
    unfinished = [s for s in states if s in ("pending", "running")]
    bad = [s for s in states if s != "succeeded" and s not in unfinished]
    table = formatting.jobs_table(records, style)
    if unfinished:
        error = (f"timed out after {args.timeout:g} seconds: {len(unfinished)} of "
                 f"{len(records)} job(s) not finished")
        if bad:
            error += f", {len(bad)} did not succeed"
        return CommandResult(EXIT_WAIT_TIMEOUT, records, table, error)
    if bad:
        return CommandResult(EXIT_JOB_FAILED, records, table,
                             f"{len(bad)} of {len(records)} job(s) did not succeed")
    return CommandResult(EXIT_OK, records, table)


async def _list(client: Client, args: Any, style: formatting.Styler) -> CommandResult:
    """Pages of at most LIST_PAGE_JOBS until --limit jobs are shown or none are left; the
    cursor of what is left goes into a note (stderr), so `--json` stays an array."""
    records: list[dict[str, Any]] = []
    cursor = args.page
    while len(records) < args.limit:
        page, cursor = await client.list_page(args.state, min(LIST_PAGE_JOBS,
                                                              args.limit - len(records)),
                                              cursor)
        records.extend(page)
        if cursor is None or not page:
            cursor = None
            break
    note = None
    if cursor is not None:
        note = (f"showing the newest {len(records)} matching jobs; more may follow: "
                f"list --page {cursor}" + (f" --state {args.state}" if args.state else ""))
    return CommandResult(EXIT_OK, records, formatting.jobs_table(records, style), note)


async def _logs(client: Client, args: Any) -> CommandResult:
    if args.follow and not args.json:
        return await _follow_logs(client, args)
    record = (await client.wait_records([args.job]))[0] if args.follow \
        else await client.status(args.job)
    stdout, stderr = (_field(record, k) or "" for k in ("stdout", "stderr"))
    state = _field(record, "state")
    value = {"stdout": stdout, "stderr": stderr, "state": state}
    failed = state in ("failed", "cancelled")
    error = f"job {formatting.text(_field(record, 'id'))} {state}" if failed else None
    # Exactly the job's output (to a terminal with its control characters escaped, see
    # `_render`), stdout to ours and stderr to ours.
    return CommandResult(EXIT_JOB_FAILED if failed else EXIT_OK, value, _output_text(stdout),
                         error, _output_text(stderr))


async def _follow_logs(client: Client, args: Any) -> CommandResult:
    """`logs --follow`: the output written as it comes, each piece whole (`write_all`, so a
    slow reader gets every byte), stdout to ours and stderr to ours; then the job's outcome."""

    def write(stream: str, text: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        if target.isatty():
            text = escape_controls(text, keep_newlines=True)
        write_all(text, target)

    view = await follow(client, args.job, write, lambda text: write_error(f"note: {text}"))
    state = _field(view, "state")
    failed = state in ("failed", "cancelled")
    error = f"job {formatting.text(_field(view, 'id'))} {state}" if failed else None
    return CommandResult(EXIT_JOB_FAILED if failed else EXIT_OK, view, "", error)


def _output_text(body: Any) -> str:
    return body if isinstance(body, str) else formatting.text(body)


def completion_script(shell: str, prog: str = "tcpsched") -> str:
    """A completion script for `shell`, generated by shtab from the CLI's own parser, so it
    knows every command, flag and choice there is."""
    import shtab

    return shtab.complete(build_parser(prog=prog), shell=shell)


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
        return EXIT_WAIT_TIMEOUT
    if isinstance(exc, QueueFull):
        return EXIT_QUEUE_FULL
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


def _render(args: Any, result: CommandResult) -> tuple[str, str]:
    """What goes to stdout, and (for `logs`) the job's stderr for ours. A job's output bound
    for a terminal has its control characters escaped, as everywhere (core/printable.py);
    into a pipe or a file it goes exactly as the job wrote it."""
    if args.json:
        return formatting.json_document(result.value) + "\n", ""
    if args.command == "logs":
        out, err = result.text, result.stderr_text
        if sys.stdout.isatty():
            out = escape_controls(out, keep_newlines=True)
        if sys.stderr.isatty():
            err = escape_controls(err, keep_newlines=True)
        return out, err
    return result.text + "\n", ""


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: parse, run, write the output whole; every failure one line and an exit code."""
    try:
        try:
            args = build_parser().parse_args(argv)
            if args.command == "completion":
                result = CommandResult(EXIT_OK, None, completion_script(args.shell))
            else:
                import uvloop

                result = uvloop.run(_run(args))
        except TcpschedError as exc:
            write_error(f"error: {error_line(exc)}")
            return exit_code_for(exc)
        except KeyboardInterrupt:
            write_error("error: interrupted")
            return 130
        if args.command == "completion":
            write_all(result.text)
        else:
            out, err = _render(args, result)
            write_all(out)
            if err:
                write_all(err, sys.stderr)
    except ReaderGone:
        # `... | head` closed the pipe: the reader chose to stop; say nothing, but do not
        # claim success either (the output did not all arrive).
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except OutputError as exc:
        silence_stdout()
        write_error(f"error: {error_line(exc)}")
        return EXIT_OUTPUT_ERROR
    if result.error:
        line = error_line(result.error)
        write_error(f"error: {line}" if result.exit_code else f"note: {line}")
    return result.exit_code
