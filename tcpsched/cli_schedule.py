"""`schedule add|list|show|remove|pause|resume`: cron and interval schedules, for the one-shot
CLI and the console alike (cli.py registers the grammar and hands the command here).

The job a schedule submits on each tick is described with the submit flags that make sense
for a repeated job (--shell/--call, --kwargs, --priority, --retries, --timeout, --env,
--cwd); --id is not one of them: each tick's job is keyed NAME@TICK (UTC), which is what
makes a tick one job, checkably.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from tcpsched import formatting
from tcpsched.client import Client
from tcpsched.core.jobs import PRIORITY_MAX, PRIORITY_MIN, RETRIES_MAX
from tcpsched.core.schedules import CATCH_UP, EVERY_S_MAX, EVERY_S_MIN, NEXT_SHOWN_MAX

ACTIONS = ("add", "list", "show", "remove", "pause", "resume")
RUNS_SHOWN = 20


def add_schedule_parser(command: Callable[..., Any], sub_options: Callable[[Any], None],
                        number: Callable[..., Any], timeout: Callable[[], Any]) -> None:
    """The `schedule` command. `command` makes a command's parser (cli.py's helper),
    `sub_options` adds the global options to an action's parser, `number`/`timeout` are
    cli.py's checked argparse types."""
    p = command("schedule", "cron and interval schedules: add, list, show, remove, pause, "
                "resume", "Jobs fired by the leader on a cron expression or every S seconds, "
                "exactly once per tick across failovers (each tick's job has the idempotency "
                "key NAME@TICK).")
    actions = p.add_subparsers(dest="schedule_action", metavar="ACTION",
                               parser_class=type(p))
    actions.required = True

    def action(name: str, summary: str) -> Any:
        a = actions.add_parser(name, help=summary, description=summary[0].upper()
                               + summary[1:] + ".", formatter_class=p.formatter_class)
        sub_options(a)
        return a

    a = action("add", "add a schedule")
    a.add_argument("name", metavar="NAME", help="the schedule's name: letters, digits, _.:-")
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR",
                      help='a cron expression, e.g. "*/5 * * * *" (minute hour day month '
                      "weekday; a sixth leading field counts seconds)")
    when.add_argument("--every", type=number(float, EVERY_S_MIN, EVERY_S_MAX, unit=" seconds"),
                      metavar="S", help=f"every S seconds, {EVERY_S_MIN:g} to "
                      f"{EVERY_S_MAX:g}, from the whole second after the add")
    a.add_argument("--tz", default=None, metavar="ZONE",
                   help="the time zone --cron is read in, an IANA name such as Europe/Paris "
                   "(default: UTC)")
    a.add_argument("--no-overlap", action="store_true",
                   help="skip a tick while the previous run is pending or running (schedule "
                   "show says so)")
    a.add_argument("--catch-up", choices=CATCH_UP, default="once",
                   help="ticks missed while no leader was elected: fire once after recovery, "
                   "or skip them (default: once)")
    a.add_argument("--priority", type=number(int, PRIORITY_MIN, PRIORITY_MAX), default=0,
                   metavar="P", help="the jobs' priority (default: 0)")
    a.add_argument("--retries", type=number(int, 0, RETRIES_MAX), default=0, metavar="R",
                   help="attempts after a failure (default: 0)")
    a.add_argument("--timeout", type=timeout(), default=None, metavar="S",
                   help="kill a job after S seconds (default: none)")
    a.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the jobs (repeatable)")
    a.add_argument("--cwd", default=None, metavar="DIR",
                   help="directory the jobs run in, on the worker")
    what = a.add_mutually_exclusive_group(required=True)
    what.add_argument("--shell", metavar="CMD", help="a shell command, run by /bin/sh")
    what.add_argument("--call", nargs="+", metavar=("MODULE:FUNCTION", "ARG"),
                      help="a Python callable and its positional arguments (JSON where they "
                      "parse, else strings)")
    a.add_argument("--kwargs", default=None, metavar="JSON",
                   help="keyword arguments for --call, a JSON object")
    a.add_argument("--tags", default="", metavar="a,b",
                   help="run the jobs only on a worker having every one of these tags")
    a.set_defaults(delay=0.0, key=None, after=[])

    action("list", "every schedule, with its next fire time and last run")
    a = action("show", "one schedule: next fire times, last runs and their states")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--next", type=number(int, 0, NEXT_SHOWN_MAX), default=5, metavar="N",
                   dest="next_count", help="how many next fire times (default: 5)")
    for name, summary in (("remove", "remove a schedule (jobs it fired stay)"),
                          ("pause", "stop firing a schedule (ticks while paused are not "
                           "owed)"),
                          ("resume", "fire a paused schedule again, from its next tick")):
        action(name, summary).add_argument("name", metavar="NAME")


async def execute_schedule(client: Client, args: Any,
                           spec_from_args: Callable[[Any], Any]) -> tuple[Any, str]:
    """Run `schedule ACTION`: (what --json prints, what a person reads)."""
    action = args.schedule_action
    if action == "add":
        spec = spec_from_args(args)
        value = await client.schedule_add(args.name, spec, cron=args.cron, tz=args.tz,
                                          every=args.every, no_overlap=args.no_overlap,
                                          catch_up=args.catch_up)
        return value, f"schedule {_name(value)} added; next fire {_first_next(value)}"
    if action == "list":
        rows = await client.schedule_list()
        return rows, schedules_table(rows)
    if action == "show":
        value = await client.schedule_show(args.name, args.next_count)
        return value, schedule_text(value)
    if action == "remove":
        value = await client.schedule_remove(args.name)
        return value, f"schedule {_name(value)} removed"
    value = await getattr(client, f"schedule_{action}")(args.name)
    state = "paused" if _get(value, "paused") else "active"
    return value, f"schedule {_name(value)} {state}; next fire {_first_next(value)}"


# -- text -----------------------------------------------------------------------------------


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _name(value: Any) -> str:
    return formatting.text(_get(value, "name"))


def _zone(value: Any) -> Any:
    tz = _get(value, "tz")
    try:
        return ZoneInfo(tz) if isinstance(tz, str) else None
    except (ValueError, KeyError, OSError):
        return None


def when_text(ts: Any, zone: Any = None) -> str:
    """A Unix time in the schedule's zone (a cron's) or the local one (--every)."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return formatting.text(ts)
    try:
        dt = datetime.fromtimestamp(ts, zone or UTC)
        if zone is None:
            dt = dt.astimezone()
    except (OverflowError, OSError, ValueError):
        return f"{ts:g}"
    return dt.strftime("%Y-%m-%d %H:%M:%S %Z")


def _first_next(value: Any) -> str:
    upcoming = _get(value, "next_at")
    if _get(value, "paused"):
        return "none (paused)"
    return when_text(upcoming[0], _zone(value)) if isinstance(upcoming, list) and upcoming \
        else "-"


def timing_text(value: Any) -> str:
    if _get(value, "every") is not None:
        every = _get(value, "every")
        return f"every {every:g}s" if isinstance(every, int | float) else "every ?"
    return f"{formatting.text(_get(value, 'cron'))} ({formatting.text(_get(value, 'tz') or 'UTC')})"


def _last_text(value: Any) -> str:
    runs = _get(value, "runs")
    if isinstance(runs, list) and runs and isinstance(runs[0], dict):
        run = runs[0]
        if run.get("skipped"):
            return "skipped"
        return formatting.text(run.get("state"))
    return formatting.text(_get(value, "last_job")) if _get(value, "last_job") else "-"


def schedules_table(rows_in: Any) -> str:
    rows_in = [r for r in rows_in if isinstance(r, dict)] if isinstance(rows_in, list) else []
    if not rows_in:
        return "(no schedules)"
    rows = [[formatting.text(r.get("name")), formatting.short(timing_text(r), 32),
             "paused" if r.get("paused") else "active", _first_next(r),
             formatting.text(r.get("last_job")), formatting.text(r.get("fired")),
             formatting.text(r.get("skipped")), formatting.short(formatting.what(r), 40)]
            for r in rows_in]
    return formatting.table(("NAME", "WHEN", "STATE", "NEXT FIRE", "LAST JOB", "FIRED",
                             "SKIPPED", "JOB"), rows)


def schedule_text(value: Any) -> str:
    if not isinstance(value, dict):
        return formatting.text(value)
    zone = _zone(value)
    lines = [
        f"name:      {_name(value)}",
        f"when:      {timing_text(value)}",
        f"state:     {'paused' if value.get('paused') else 'active'}",
        f"job:       {formatting.what(value)}",
        "overlap:   " + ("a tick is skipped while a run is unfinished"
                         if value.get("no_overlap") else "allowed"),
        f"catch-up:  {formatting.text(value.get('catch_up'))}",
        f"fired:     {formatting.text(value.get('fired'))} (skipped "
        f"{formatting.text(value.get('skipped'))}, missed ticks folded in "
        f"{formatting.text(value.get('missed'))})",
    ]
    if value.get("running"):
        lines.append(f"running:   {formatting.text(value.get('running'))}")
    upcoming = value.get("next_at")
    lines.append("next fires:" if upcoming else "next fires: none" + (
        " (paused)" if value.get("paused") else ""))
    if isinstance(upcoming, list):
        lines.extend(f"  {when_text(ts, zone)}" for ts in upcoming)
    runs = value.get("runs")
    runs = [r for r in runs if isinstance(r, dict)][:RUNS_SHOWN] if isinstance(runs, list) \
        else []
    if not runs:
        lines.append("last runs: none yet")
        return "\n".join(lines)
    lines.append("last runs (newest first):")
    rows = [[when_text(r.get("tick_at"), zone), formatting.text(r.get("job")),
             "skipped" if r.get("skipped") else formatting.text(r.get("state")),
             formatting.text(r.get("missed")), formatting.short(r.get("skipped") or "", 60)]
            for r in runs]
    table = formatting.table(("TICK", "JOB", "STATE", "MISSED", "NOTE"), rows)
    lines.extend("  " + line for line in table.split("\n"))
    return "\n".join(lines)


def sub_options_for(global_options: Callable[..., None], cli: bool) -> Callable[[Any], None]:
    """The global options on an action's parser (the one-shot CLI takes them anywhere)."""

    def add(parser: argparse.ArgumentParser) -> None:
        if cli:
            global_options(parser.add_argument_group("global options (also before the "
                                                     "command)"), after_command=True)

    return add
