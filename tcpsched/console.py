"""`python -m tcpsched.console`: the interactive console, a prompt_toolkit REPL.

Theory of operation: one `PromptSession.prompt_async()` after another, under `patch_stdout()`.
Every line is split like a shell would split it; console commands (`help`, `watch`, `logs`,
`worker`, `use`, `quit`) are handled here, everything else goes through the one-shot CLI's own
parser and `execute()`, so both speak exactly the same language. A `--json` anywhere on a line
prints that command's JSON document instead of the table.

Beside the REPL, a `Poller` (console_toolbar.py) asks the cluster for its figures every second
and the bottom toolbar only reads what it last saw; Tab completion (console_completion.py)
offers commands, flags and the recent job ids and worker names the poller and the commands
noted; console_text.py says how results become terminal text. When the coordinator goes away,
the poller says so in the toolbar and keeps asking; the command client reconnects on the next
command (see `Client`), so the console outlives a coordinator restart without doing anything
special.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import ANSI, HTML
from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import FormattedTextControl, HSplit, Layout, Window
from prompt_toolkit.layout.dimension import D
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout

from tcpsched import cli, cli_parser, formatting
from tcpsched.client import Client
from tcpsched.config import (
    TlsSettings,
    UsageParser,
    add_tls_flags,
    parse_coordinators,
    read_token,
    tls_from_args,
)
from tcpsched.console_completion import CONSOLE_COMMANDS, Catalog, ConsoleCompleter
from tcpsched.console_text import colour, json_text, one_line, plain, screen_safe, truncate
from tcpsched.console_toolbar import POLL_INTERVAL_S, Poller
from tcpsched.core.printable import escape_controls
from tcpsched.errors import ConfigError, TcpschedError
from tcpsched.follow import follow
from tcpsched.formatting_groups import group_text

PROMPT = "tcpsched> "
MAX_LINES = 200
TERMINAL = ("succeeded", "failed", "cancelled")


def default_history_path() -> Path:
    """$XDG_STATE_HOME/tcpsched/history where XDG is in use, else ~/.tcpsched_history."""
    state_home = os.environ.get("XDG_STATE_HOME")
    if state_home:
        return Path(state_home) / "tcpsched" / "history"
    return Path.home() / ".tcpsched_history"


# -- the console --------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """What one line did: what was printed and whether it was an error (for tests and
    scripts that drive the console)."""

    line: str
    text: str
    is_error: bool


def _catch_sigint(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> bool:
    """Run `handler` on Ctrl-C while a command runs. False where this loop cannot: then Ctrl-C
    arrives as KeyboardInterrupt instead, which the console handles the same way."""
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        # NotImplementedError: a loop without signal handlers (Windows' proactor loop);
        # RuntimeError or ValueError: not the main thread, or no wake-up fd to signal through.
        return False
    return True


class Console:
    def __init__(
        self,
        addresses: Sequence[str],
        token: bytes | None = None,
        *,
        connect_timeout: float = 5.0,
        history: History | None = None,
        input: Input | None = None,
        output: Output | None = None,
        max_lines: int = MAX_LINES,
        poll_interval_s: float = POLL_INTERVAL_S,
        on_outcome: Callable[[Outcome], None] | None = None,
        handle_sigint: bool = True,
        tls: TlsSettings | None = None,
    ) -> None:
        self.token = token
        self.tls = tls
        self.connect_timeout_s = connect_timeout
        self.max_lines = max_lines
        self.poll_interval_s = poll_interval_s
        self.on_outcome = on_outcome
        self.handle_sigint = handle_sigint
        self.catalog = Catalog()
        self.parser = UsageParser(prog="", add_help=False)
        cli_parser.add_command_parsers(self.parser)
        self.parsers: dict[str, UsageParser] = dict(_subparsers(self.parser))
        self.completer = ConsoleCompleter(self.catalog, self.parsers, _summaries(self.parser))
        self.addresses = tuple(addresses)
        self.client = self._new_client()
        self.poller = Poller(self.addresses, token, self.catalog, poll_interval_s, tls)
        self._poll_task: asyncio.Task[None] | None = None
        self.output = output
        self.session: PromptSession[str] = PromptSession(
            history=history, completer=self.completer, complete_while_typing=False,
            bottom_toolbar=self._toolbar, refresh_interval=poll_interval_s,
            input=input, output=output,
        )  # fmt: skip
        self.watching = asyncio.Event()  # set while a watch view is on screen
        self._remember(addresses)

    def _new_client(self) -> Client:
        return Client(self.addresses, self.token, connect_timeout=self.connect_timeout_s,
                      name=f"console-{os.getpid()}", tls=self.tls)

    def _remember(self, addresses: Sequence[str]) -> None:
        joined = ",".join(addresses)
        if joined not in self.catalog.addresses:
            self.catalog.addresses.append(joined)

    def _toolbar(self) -> HTML:
        return HTML(self.poller.toolbar_text(",".join(self.addresses)))

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and run lines until quit, exit or Ctrl-D."""
        self._start_poller()
        self.emit(f"tcpsched console for {','.join(self.addresses)} — type help, Tab completes, "
                  "Ctrl-D leaves")
        try:
            while True:
                try:
                    line = await self.session.prompt_async(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not await self.run_line(line):
                    break
        finally:
            await self._stop_poller()
            await self.client.close()

    def _start_poller(self) -> None:
        self._poll_task = asyncio.ensure_future(self.poller.run())

    async def _stop_poller(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        await self.poller.close()

    async def run_line(self, line: str) -> bool:
        """Run one line; False when the console should end. Ctrl-C cancels a long command."""
        task = asyncio.ensure_future(self._dispatch(line))
        loop = asyncio.get_running_loop()
        installed = False
        interrupted: list[bool] = []

        def interrupt() -> None:
            interrupted.append(True)
            task.cancel()

        if self.handle_sigint:
            installed = _catch_sigint(loop, interrupt)
        try:
            return await task
        except asyncio.CancelledError:
            if not interrupted:  # we are being cancelled ourselves: never swallow that
                raise
            self.report(line, "interrupted", is_error=True)
            return True
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    async def _dispatch(self, line: str) -> bool:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.report(line, f"cannot split the line: {exc}", is_error=True)
            return True
        as_json = "--json" in words
        words = [w for w in words if w != "--json"]
        if not words:
            return True
        command, rest = words[0], words[1:]
        try:
            if command in ("quit", "exit"):
                return False
            if "-h" in rest or "--help" in rest:
                self.report(line, self.help_text(command))
            elif command == "help":
                self.report(line, self.help_text(rest[0] if rest else None))
            elif command == "watch":
                await self.watch(" ".join(rest[:2]) if rest[:1] == ["group"]
                                 else rest[0] if rest else "jobs", line)
            elif command == "logs":
                await self._logs(line, rest, as_json)
            elif command == "worker":
                await self._worker(line, rest, as_json)
            elif command == "use":
                await self._use(line, rest)
            elif command in self.parsers:
                await self._cli_command(line, words, as_json)
            else:
                self.report(line, f"unknown command {command!r} (type help to list them)",
                            is_error=True)
        except TcpschedError as exc:
            self.report(line, one_line(exc), is_error=True)
        except SystemExit:  # argparse printing its own help; the console goes on
            self.report(line, "")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # A reply is what a peer sent: a value the renderers did not foresee is a bug to
            # report, never a reason to end the operator's session.
            self.report(line, f"unexpected {type(exc).__name__} while showing the reply: "
                              f"{one_line(exc)}", is_error=True)
        return True

    async def _cli_command(self, line: str, words: list[str], as_json: bool) -> None:
        args = self.parser.parse_args(words)
        result = await cli.execute(self.client, args, colour)
        self.catalog.note_value(result.value)
        text = json_text(result.value) if as_json else result.text
        if result.error and result.exit_code:
            self.report(line, text + "\n" + colour(f"error: {result.error}", "failed"),
                        is_error=True)
        elif result.error:
            self.report(line, text + f"\nnote: {result.error}")
        else:
            self.report(line, text)

    async def _logs(self, line: str, rest: list[str], as_json: bool) -> None:
        following = "--follow" in rest
        rest = [word for word in rest if word != "--follow"]
        if len(rest) != 1:
            raise ConfigError("logs: give one job id (logs JOB [--follow])")
        if following and not as_json:
            await self._follow_logs(line, rest[0])
            return
        record = await (self.client.wait(rest[0]) if following
                        else self.client.status(rest[0]))
        if not isinstance(record, dict):
            record = {"id": record}
        self.catalog.note_job(record)
        if as_json:
            self.report(line, json_text({k: record.get(k) for k in ("id", "stdout", "stderr")}))
            return
        parts = []
        for stream in ("stdout", "stderr"):
            body = record.get(stream) or ""
            body = body.rstrip("\n") if isinstance(body, str) else formatting.text(body)
            parts.append(f"\x1b[1m── {stream} ──\x1b[0m\n"
                         + (escape_controls(body, keep_newlines=True) or "(empty)"))
        state = formatting.text(record.get("state"))
        self.report(line, f"job {formatting.text(record.get('id'))} {colour(state, state)}\n"
                    + "\n".join(parts))

    async def _follow_logs(self, line: str, job: str) -> None:
        """The job's output as it comes, each piece shown at once, then how it ended."""

        def write(stream: str, text: str) -> None:
            shown = escape_controls(text.rstrip("\n"), keep_newlines=True)
            self.emit(shown if stream == "stdout" else colour(shown, "failed"))

        view = await follow(self.client, job, write, lambda text: self.emit(f"note: {text}"))
        state = formatting.text(view.get("state"))
        self.report(line, f"job {formatting.text(view.get('id'))} {colour(state, state)}",
                    is_error=state in ("failed", "cancelled"))

    async def _worker(self, line: str, rest: list[str], as_json: bool) -> None:
        if len(rest) != 1:
            raise ConfigError("worker: give one worker name (worker NAME)")
        workers: Sequence[dict[str, Any]] = await self.client.workers()
        self.catalog.note_value(workers)
        found = [w for w in workers if isinstance(w, dict) and w.get("name") == rest[0]]
        if not found:
            raise ConfigError(f"no worker named {rest[0]!r}")
        running = [r for r in await self.client.list("running", 1000)
                   if isinstance(r, dict) and r.get("worker") == rest[0]]
        if as_json:
            self.report(line, json_text({"worker": found[0], "running": running}))
            return
        self.report(line, formatting.workers_table(found, colour) + "\n\n"
                    + formatting.jobs_table(running, colour))

    async def _use(self, line: str, rest: list[str]) -> None:
        if len(rest) != 1:
            raise ConfigError("use: give the coordinator addresses (use HOST:PORT[,...])")
        addresses = parse_coordinators(rest[0])
        await self._stop_poller()
        await self.client.close()
        self.addresses = addresses
        self.client = self._new_client()
        self.catalog.jobs.clear()
        self.catalog.workers.clear()
        self._remember(addresses)
        self.poller = Poller(addresses, self.token, self.catalog, self.poll_interval_s,
                             self.tls)
        self._start_poller()
        try:
            leader = await self.client.leader()
        except TcpschedError as exc:
            self.report(line, f"now using {rest[0]}, but {one_line(exc)}", is_error=True)
            return
        self.report(line, f"now using {','.join(addresses)} (leader c{leader['id']} at "
                          f"{leader['address']}, epoch {leader['epoch']})")

    # -- help -----------------------------------------------------------------------------------

    def help_text(self, command: str | None) -> str:
        if command is None:
            rows = []
            for name, parser in self.parsers.items():
                usage = " ".join(parser.format_usage().split()[2:]).replace("[-h] ", "")
                rows.append((name, usage.replace("[-h]", ""), self.completer._summary(name)))
            rows += [(n, u, h) for n, (u, h) in CONSOLE_COMMANDS.items()]
            width = 30
            lines = ["Commands (add --json to any command for its JSON document):"]
            for name, usage, summary in rows:
                head = f"{name} {usage}".strip()
                if len(head) > width:
                    lines += [f"  {head}", f"  {'':<{width}}  {summary}"]
                else:
                    lines.append(f"  {head:<{width}}  {summary}")
            lines.append("help COMMAND explains one; Tab completes commands, flags and job ids.")
            return "\n".join(lines)
        if command in self.parsers:
            return self.parsers[command].format_help().rstrip().replace("usage:  ", "usage: ", 1)
        if command in CONSOLE_COMMANDS:
            usage, summary = CONSOLE_COMMANDS[command]
            return f"usage: {command} {usage}".rstrip() + f"\n\n{summary}"
        raise ConfigError(f"unknown command {command!r} (type help to list them)")

    # -- watch ----------------------------------------------------------------------------------

    async def watch(self, target: str, line: str = "watch") -> None:
        """Redraw a view every second until a key is pressed.

        The view fits the terminal: a fixed header line, and below it a window of the
        remaining rows that never wraps and scrolls inside (arrows, PgUp/PgDn, Home/End), so
        a view taller than the terminal does not push its header off the screen."""
        view = ["loading…"]
        offset = [0]  # the first body line shown

        async def render() -> str:
            if target == "workers":
                workers = await self.client.workers()
                stats = await self.client.stats()
                self.catalog.note_value(workers)
                figures = stats if isinstance(stats, dict) else {}
                counts = "  ".join(f"{k} {formatting.text(figures.get(k, 0))}" for k in (
                    "pending", "running", "succeeded", "failed", "reassigned"))
                return formatting.workers_table(workers, colour) + "\n\n" + counts
            if target == "group" or target.startswith("group "):
                name = target.partition(" ")[2]
                if not name:
                    raise ConfigError("watch group takes the group id (the one `map` printed)")
                return group_text(await self.client.group_status(name))
            if target == "jobs":
                rows = max(self._rows() - 4, 5)
                records = await self.client.list(None, rows)
                self.catalog.note_value(records)
                return formatting.jobs_table(records, colour)
            record = await self.client.status(target)
            self.catalog.note_job(record)
            return formatting.record_text(record, colour)

        # Fail before opening the view if the target does not exist.
        view[0] = await render()
        bindings = KeyBindings()

        def body_rows() -> int:
            return max(self._rows() - 1, 1)

        def scroll(delta: int | None) -> None:
            lines = view[0].count("\n") + 1
            top = max(lines - body_rows(), 0)
            offset[0] = top if delta is None else min(max(offset[0] + delta, 0), top)

        for keys, step in (("up", -1), ("down", 1), ("pageup", None), ("pagedown", None),
                           ("home", 0), ("end", None)):
            def _scroll(event: Any, keys: str = keys, step: int | None = step) -> None:
                if keys == "pageup":
                    scroll(-body_rows())
                elif keys == "pagedown":
                    scroll(body_rows())
                elif keys == "home":
                    offset[0] = 0
                else:
                    scroll(step)
                event.app.invalidate()

            bindings.add(keys)(_scroll)

        @bindings.add(Keys.Any)
        @bindings.add("c-c")
        @bindings.add("c-d")
        def _stop(event: Any) -> None:
            event.app.exit()

        def header() -> ANSI:
            stamp = time.strftime("%H:%M:%S")
            lines = view[0].count("\n") + 1
            where = ""
            if lines > body_rows():
                last = min(offset[0] + body_rows(), lines)
                where = f" — lines {offset[0] + 1}-{last} of {lines}, ↑↓ PgUp PgDn scroll"
            return ANSI(f"\x1b[1mwatching {target}\x1b[0m — {stamp}{where} — any other key "
                        "stops")

        def body() -> ANSI:
            scroll(0)  # keep the offset within the view, which may have shrunk
            lines = view[0].split("\n")
            return ANSI(screen_safe("\n".join(lines[offset[0]:offset[0] + body_rows()])))

        app: Application[None] = Application(
            layout=Layout(HSplit([
                Window(FormattedTextControl(header), height=1, wrap_lines=False),
                Window(FormattedTextControl(body), height=lambda: D(max=body_rows()),
                       wrap_lines=False),
            ])),
            key_bindings=bindings, full_screen=False, input=self.session.input,
            output=self.session.output,
        )  # fmt: skip

        async def refresh() -> None:
            while True:
                await asyncio.sleep(self.poll_interval_s)
                try:
                    view[0] = await render()
                except TcpschedError as exc:
                    view[0] = colour(f"{one_line(exc)} — retrying", "failed")
                app.invalidate()

        async with asyncio.TaskGroup() as tasks:
            refresher = tasks.create_task(refresh())
            self.watching.set()
            try:
                await app.run_async(handle_sigint=False)
            finally:
                self.watching.clear()
                refresher.cancel()
        self.report(line, "", quiet=True)

    def _rows(self) -> int:
        try:
            return self.session.output.get_size().rows
        except (OSError, ValueError):
            return 24

    # -- output ---------------------------------------------------------------------------------

    def report(self, line: str, text: str, is_error: bool = False, quiet: bool = False) -> None:
        if is_error and text and not text.startswith(("error", "\x1b")) and "\n" not in text:
            text = colour(f"error: {text}", "failed")
        if text and not quiet:
            self.emit(truncate(text, self.max_lines))
        if self.on_outcome is not None:
            self.on_outcome(Outcome(line, plain(text), is_error))

    def emit(self, text: str) -> None:
        shown = ANSI(screen_safe(text))
        if self.output is not None:
            print_formatted_text(shown, output=self.output)
        else:
            print_formatted_text(shown)


def _subparsers(parser: UsageParser) -> Iterator[tuple[str, UsageParser]]:
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            yield from choices.items()


def _summaries(parser: UsageParser) -> dict[str, str]:
    """Each command's one-line help, as the CLI's parser gives it."""
    out: dict[str, str] = {}
    for action in parser._actions:
        for choice in getattr(action, "_choices_actions", ()):
            out[choice.dest] = choice.help or ""
    return out



def console_parser() -> UsageParser:
    p = UsageParser(prog="python -m tcpsched.console",
                    description="The interactive console of a tcpsched cluster.")
    p.add_argument("--coordinators", default=None, metavar="HOST:PORT,...",
                   help="coordinator addresses (TCPSCHED_COORDINATORS, 127.0.0.1:7001)")
    p.add_argument("--token-file", default=None, metavar="F")
    p.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                   help="give up on a command after S seconds without a coordinator (5)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="history file ($XDG_STATE_HOME/tcpsched/history or ~/.tcpsched_history)")
    p.add_argument("--max-lines", type=int, default=MAX_LINES, metavar="N",
                   help=f"truncate longer outputs, with a note (0: never; {MAX_LINES})")
    add_tls_flags(p)
    return p


async def _main(args: Any) -> int:
    history_path = Path(args.history) if args.history else default_history_path()
    try:
        history_path.parent.mkdir(parents=True, exist_ok=True)
        history: History | None = FileHistory(str(history_path))
    except OSError:
        history = None
    console = Console(parse_coordinators(args.coordinators), read_token(args.token_file),
                      connect_timeout=args.connect_timeout, history=history,
                      max_lines=args.max_lines, tls=tls_from_args(args))
    with patch_stdout(raw=True):
        await console.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = console_parser().parse_args(argv)
        parse_coordinators(args.coordinators)
        read_token(args.token_file)
        tls_from_args(args)
        import uvloop

        return uvloop.run(_main(args))
    except TcpschedError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return cli.exit_code_for(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
