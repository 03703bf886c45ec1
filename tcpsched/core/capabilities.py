"""What a worker agrees to run, and the one reading of `--allow-call` that everyone shares.

Theory of operation: a worker may refuse shell jobs (`--no-shell`) and may allow only some
callables (`--allow-call ENTRY`, repeatable). It advertises both when it registers; the
scheduler places a job only on a worker whose `Capabilities.refusal` is None, and the worker
applies the same rule again before it imports anything. What a rule cannot see without
importing the module is checked by the worker when it resolves the callable
(`runtime/executor.py`): with a module entry, the object must be defined in that module.

An ENTRY is one of:

- `MODULE` (or `MODULE:`): the top-level callables *defined in* MODULE or one of its
  submodules, named `MODULE[.SUB]:NAME`, NAME one identifier not starting with `_`. No dotted
  path after the colon, so `mytasks:os.system` is refused even when `mytasks` imports `os`, and
  `mytasks:system` is refused when `system` was imported into `mytasks` from elsewhere.
- `MODULE:NAME` (NAME may be dotted, as `builtins:str.split`): exactly that callable.

No part of an entry or of an allowed job may start with `__` (no dunder access), and the
entry's parts must be identifiers. With no entry at all, every callable is allowed.
"""

from __future__ import annotations

import re

import attrs

ALLOW_CALL_ENTRIES_MAX = 256
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PUBLIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _dotted(text: str) -> bool:
    parts = text.split(".")
    return all(_IDENTIFIER.match(p) and not p.startswith("__") for p in parts)


def parse_allow_call(entry: str) -> str:
    """An `--allow-call` entry in its normal form (`mod:` becomes `mod`), or ValueError."""
    text = entry.strip()
    module, sep, name = text.partition(":")
    if not module or not _dotted(module) or (name and not _dotted(name)):
        raise ValueError(
            f"--allow-call {entry!r} must be MODULE, MODULE: or MODULE:NAME (dotted "
            "identifiers, none starting with '__')"
        )
    return f"{module}:{name}" if sep and name else module


def call_grant(function: str, entries: tuple[str, ...]) -> str | None:
    """Which entry lets `function` run: the module it must be defined in for a module entry,
    "" for an exact `MODULE:NAME` entry (run as named), None if no entry allows it.
    An empty `entries` allows everything (""): the worker was given no `--allow-call`."""
    if not entries:
        return ""
    module, _, name = function.partition(":")
    for entry in entries:
        if ":" in entry:
            if function == entry:
                return ""
            continue
        if module != entry and not module.startswith(entry + "."):
            continue
        below = module[len(entry) + 1:].split(".") if module != entry else []
        if _PUBLIC_NAME.match(name) and all(_PUBLIC_NAME.match(p) for p in below):
            return entry
    return None


@attrs.frozen
class Capabilities:
    """What one worker runs: shell jobs or not, and its `--allow-call` entries (normal form)."""

    allow_shell: bool = True
    allow_call: tuple[str, ...] = ()

    @property
    def is_unrestricted(self) -> bool:
        return self.allow_shell and not self.allow_call

    def refusal(self, kind: str, function: str | None) -> str | None:
        """Why this worker will not run a job of this kind and function, or None."""
        if kind == "shell":
            return None if self.allow_shell else "does not run shell jobs (--no-shell)"
        if call_grant(function or "", self.allow_call) is None:
            return (f"does not allow {function} (--allow-call {' '.join(self.allow_call)}: "
                    "MODULE allows MODULE:NAME for NAME defined there, MODULE:NAME only itself)")
        return None
