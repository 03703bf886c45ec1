"""The one-shot commands (`python -m tcpsched COMMAND`), shared with the console.

`cli_parser.build_parser()` is the grammar of every command; `execute(client, args)` runs one
parsed command against a connected client and returns what to print and the exit code, so the
console runs exactly the same code. The global options (`--coordinators`, `--json`, `--token-file`,
`--connect-timeout`, the TLS flags) are accepted before or after the command: each command's
parser carries them too, with defaults that leave what was given before the command alone.

Output is written by `output.write_all`, never by `print`: see that module for why a plain
print lost everything past the first pipe buffer with a slow reader.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import attrs

from tcpsched import formatting
from tcpsched.cli_parser import (
    EXIT_AUTH,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_QUEUE_FULL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    build_parser,
    spec_from_args,
)
from tcpsched.cli_schedule import execute_schedule
from tcpsched.cli_workflows import execute_workflow
from tcpsched.client import Client
from tcpsched.config import (
    parse_coordinators,
    read_token,
    tls_from_args,
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

LIST_PAGE_JOBS = 1000  # jobs asked for per round trip when a listing spans several pages


@attrs.frozen
class CommandResult:
    exit_code: int
    value: Any  # what --json prints
    text: str  # what a person reads
    error: str | None = None  # one line for stderr
    stderr_text: str = ""  # `logs`: the job's stderr, written to ours as it is


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
