"""Tab completion for the console: what it knows about the cluster, and what it offers.

`Catalog` is a small memory of recent job ids (with state and description) and worker names,
filled by whatever commands return and by the poller; `ConsoleCompleter` offers command
names, each command's flags (read from the CLI's own parsers, so the two never disagree), flag
choices, and the catalog's ids and names where a command takes them. Completion only reads
memory: it never asks the cluster, so pressing Tab never waits on the network.
"""

from __future__ import annotations

import collections
import shlex
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from tcpsched import formatting
from tcpsched.config import UsageParser

RECENT_JOBS_MAX = 500

# Console-only commands and what `help` says about them (the CLI's come from its parser).
CONSOLE_COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("[COMMAND]", "list the commands, or explain one"),
    "watch": ("[JOB|jobs|workers|group G]",
              "a live view, refreshed every second, until a key is pressed"),
    "logs": ("JOB [--follow]", "a job's stdout and stderr (--follow: as it comes, until it ends)"),
    "worker": ("NAME", "one worker and the jobs running on it"),
    "use": ("HOST:PORT[,...]", "talk to another cluster"),
    "quit": ("", "leave the console (also exit, Ctrl-D)"),
    "exit": ("", "leave the console"),
}


@attrs.define
class Catalog:
    """Recent job ids (with state and a short description) and worker names, for completion."""

    jobs: collections.OrderedDict[str, tuple[str, str]] = attrs.field(
        factory=collections.OrderedDict)
    workers: dict[str, str] = attrs.field(factory=dict)
    addresses: list[str] = attrs.field(factory=list)
    groups: dict[str, None] = attrs.field(factory=dict)  # group ids seen, oldest first

    def note_group(self, group: Any) -> None:
        if isinstance(group, str):
            self.groups.pop(group, None)
            self.groups[group] = None
            while len(self.groups) > RECENT_JOBS_MAX:
                del self.groups[next(iter(self.groups))]

    def note_job(self, record: dict[str, Any]) -> None:
        job_id = record.get("id")
        self.note_group(record.get("group"))
        if not isinstance(job_id, str):
            return
        self.jobs.pop(job_id, None)
        self.jobs[job_id] = (str(record.get("state", "")), formatting.what(record))
        while len(self.jobs) > RECENT_JOBS_MAX:
            self.jobs.popitem(last=False)

    def note_value(self, value: Any) -> None:
        """Remember whatever job records or ids a command returned."""
        if isinstance(value, dict) and isinstance(value.get("ids"), list):
            self.note_group(value.get("group"))  # what `map` printed
        elif isinstance(value, dict) and "state" in value:
            self.note_job(value)
        elif isinstance(value, dict) and isinstance(value.get("id"), str):
            self.note_job({"id": value["id"], "state": "pending"})
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and "name" in item and "slots" in item:
                    if isinstance(item["name"], str):
                        self.workers[item["name"]] = str(item.get("state", ""))
                elif isinstance(item, dict):
                    self.note_job(item)

    def recent_jobs(self) -> list[tuple[str, tuple[str, str]]]:
        return list(reversed(self.jobs.items()))


class ConsoleCompleter(Completer):
    """Command names, each command's flags, job states, recent job ids and worker names."""

    def __init__(self, catalog: Catalog, parsers: dict[str, UsageParser],
                 summaries: dict[str, str]) -> None:
        self.catalog = catalog
        self.parsers = parsers
        self.summaries = {**summaries, **{n: h for n, (_u, h) in CONSOLE_COMMANDS.items()}}
        self.commands = sorted({*parsers, *CONSOLE_COMMANDS})

    def _flags(self, command: str) -> dict[str, Any]:
        parser = self.parsers.get(command)
        if parser is None:
            return {}
        return {flag: action for flag, action in parser._option_string_actions.items()
                if flag.startswith("--")}

    def get_completions(self, document: Document, complete_event: CompleteEvent
                        ) -> Iterator[Completion]:
        text = document.text_before_cursor
        try:
            words = shlex.split(text)
        except ValueError:  # inside an open quote: a shell command or JSON, nothing to offer
            return
        current = ""
        if text and not text[-1].isspace() and words:
            current = words.pop()
        words = [w for w in words if w != "--json"]
        for candidate, meta in self._candidates(words, current):
            if candidate.startswith(current):
                yield Completion(candidate, start_position=-len(current), display_meta=meta)

    def _candidates(self, words: list[str], current: str) -> Iterable[tuple[str, str]]:
        if not words:
            return [(c, self._summary(c)) for c in self.commands]
        command, previous = words[0], words[-1]
        flags = self._flags(command)
        if current.startswith("-"):
            return [(f, a.help or "") for f, a in flags.items() if f != "--help"] + [
                ("--json", "print the JSON document"), ("--help", "explain this command")]
        taking_value = flags.get(previous)
        if previous != command and taking_value is not None and taking_value.nargs != 0:
            if previous == "--group":
                return [(g, "group") for g in reversed(self.catalog.groups)]
            choices = taking_value.choices or ()
            return [(str(c), "") for c in choices]
        positionals = [w for w in words[1:] if not w.startswith("-")]
        jobs = [(job_id, f"{state} {what}") for job_id, (state, what)
                in self.catalog.recent_jobs()]
        if command == "watch" and positionals == ["group"]:
            return [(g, "group") for g in reversed(self.catalog.groups)]
        if command in ("status", "cancel", "logs", "explain", "retry"):
            return jobs if not positionals else []
        if command == "wait":
            return [j for j in jobs if j[0] not in positionals]
        if command == "watch" and not positionals:
            return [("jobs", "the newest jobs"), ("workers", "the workers"),
                    ("group", "a group's progress bar"), *jobs]
        if command == "worker" and not positionals:
            return sorted(self.catalog.workers.items())
        if command == "help" and not positionals:
            return [(c, self._summary(c)) for c in self.commands]
        if command == "use" and not positionals:
            return [(a, "") for a in self.catalog.addresses]
        return []

    def _summary(self, command: str) -> str:
        return self.summaries.get(command, "")
