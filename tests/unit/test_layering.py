"""The layers hold: `tcpsched/core` does no I/O and knows nothing above it; nothing unpickles.

Imports are read with `ast`, not by importing, so a forbidden import hidden in a function body
is caught too. Imports inside `if TYPE_CHECKING:` exist only for type checkers and are allowed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpsched

PACKAGE_DIR = Path(tcpsched.__file__).resolve().parent
CORE_DIR = PACKAGE_DIR / "core"

# What the sans-I/O core must never touch: I/O, the clock, global randomness, threads,
# processes, code execution from bytes, or the layers above it.
CORE_FORBIDDEN = (
    "asyncio", "socket", "time", "os", "random", "pickle", "subprocess", "threading",
    "tcpsched.runtime", "tcpsched.coordinator", "tcpsched.worker", "tcpsched.client",
    "tcpsched.cli", "tcpsched.console", "tcpsched.__main__", "tcpsched.testing",
)  # fmt: skip
EVERYWHERE_FORBIDDEN = ("pickle", "cPickle", "_pickle", "shelve", "marshal")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(source: str, module: str, is_package: bool = False, *,
                   type_checking: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import outside `if TYPE_CHECKING:` blocks (and
    inside them too with `type_checking`, for checks of type cycles).

    `from X import Y` yields both X and X.Y, since Y may be a submodule.
    """
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                yield from visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


def _matches(name: str, forbidden: tuple[str, ...]) -> str | None:
    for bad in forbidden:
        if name == bad or name.startswith(bad + "."):
            return bad
    return None


def violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    module = _module_name(path)
    source = path.read_text()
    return [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: imports {name}"
        for line, name in imported_names(source, module, path.name == "__init__.py")
        if _matches(name, forbidden)
    ]


CORE_MODULES = sorted(CORE_DIR.rglob("*.py"))
ALL_MODULES = sorted(PACKAGE_DIR.rglob("*.py"))


def test_the_scan_finds_the_core_modules() -> None:
    """The scan really sees the core (a wrong path would make every check pass vacuously)."""
    names = {p.name for p in CORE_MODULES}
    assert {"codec.py", "messages.py", "jobqueue.py", "dispatch.py", "scheduler.py"} <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_imports_no_io_no_clock_no_randomness_and_nothing_above_it(path: Path) -> None:
    """A core module imports none of the I/O, clock, random, process or upper-layer modules."""
    assert violations(path, CORE_FORBIDDEN) == []


# The scheduler composes its sides; only the node, which runs it while leading, may know it.
SCHEDULER_IMPORTERS_ALLOWED = ("scheduler.py", "node.py")


@pytest.mark.parametrize("path", [p for p in CORE_MODULES
                                  if p.name not in SCHEDULER_IMPORTERS_ALLOWED],
                         ids=lambda p: p.name)
def test_no_core_module_but_the_node_imports_the_scheduler(path: Path) -> None:
    """The sides the scheduler owns never import it, not even for types: no import cycle."""
    module = _module_name(path)
    found = [f"{path.name}:{line}: imports {name}"
             for line, name in imported_names(path.read_text(), module, type_checking=True)
             if _matches(name, ("tcpsched.core.scheduler",))]
    assert found == []


def test_the_scheduler_composes_its_sides_instead_of_inheriting_them() -> None:
    """Scheduler has no base class but object: its sides are objects it owns, not mixins."""
    from tcpsched.core.scheduler import Scheduler

    assert Scheduler.__bases__ == (object,)


def test_the_cycle_check_sees_imports_made_only_for_the_type_checker() -> None:
    """The scheduler-import check counts imports inside `if TYPE_CHECKING:` blocks too."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    from tcpsched.core.scheduler import SchedulerConfig\n")
    names = {name for _line, name in imported_names(source, "tcpsched.core.x",
                                                    type_checking=True)}
    assert "tcpsched.core.scheduler" in names
    assert "tcpsched.core.scheduler" not in {
        name for _line, name in imported_names(source, "tcpsched.core.x")}


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_nothing_in_tcpsched_imports_pickle(path: Path) -> None:
    """No module can turn bytes into code: pickle and its relatives are never imported."""
    assert violations(path, EVERYWHERE_FORBIDDEN) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import time\n", ["time"]),
        ("import os.path\n", ["os"]),
        ("from asyncio import sleep\n", ["asyncio"]),
        ("def f():\n    import random\n", ["random"]),
        ("from ..runtime import transport\n", ["tcpsched.runtime"]),
        ("from tcpsched import worker\n", ["tcpsched.worker"]),
        ("from tcpsched.runtime.executor import Executor\n", ["tcpsched.runtime"]),
        ("x = __import__('socket')\n", ["socket"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random\n", []),
        ("import typing\nif typing.TYPE_CHECKING:\n    import asyncio\nelse:\n    import os\n",
         ["os"]),
        ("import timeit\nimport osmosis\nfrom . import jobs\n", []),
    ],
)
def test_the_scanner_catches_what_it_must(source: str, found: list[str]) -> None:
    """The checker itself: forbidden imports in any form are found; TYPE_CHECKING is exempt."""
    hits = {
        _matches(name, CORE_FORBIDDEN)
        for _line, name in imported_names(source, "tcpsched.core.example")
    }
    hits.discard(None)
    assert sorted(hits) == sorted(found)  # type: ignore[type-var]
