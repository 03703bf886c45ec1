"""Per-class functions, generated once at import, that turn a message into its wire map and
back with the checks of `core/codec.py`, unrolled.

Why: every message a coordinator, worker or client sends or takes goes through these, several
per job; the generic versions walk the class's fields and call one checker (or converter) per
field, nested calls included. Generated code reads each field by name, tests the common case
inline (a `str` field holding a str, an `int` one an int, a finite float) and calls the
generic checker only otherwise, so what is accepted, what is refused and every error message
stay exactly those of the checkers (`_build_checker` in codec.py), which the fallback calls.

Going out, fields whose values msgpack packs as they are (scalars, tuples and maps of
scalars) are taken as they are; free-form values (`Any`) still go through `unstructure`
(replies may hold attrs objects), and attrs-typed fields through their own generated function.
"""

from __future__ import annotations

import keyword
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs

_MISSING = object()
_SCALARS = (str, int, bool, bytes, float)
# An inline test that holds exactly where the checker would return the value unchanged.
_FAST = {
    str: "type(v) is str",
    int: "type(v) is int",
    bool: "type(v) is bool",
    bytes: "type(v) is bytes",
    float: "(type(v) is float and v - v == 0.0)",
}


def _optional_of(hint: Any) -> Any | None:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and len(args) == 2:
            return options[0]
    return None


def _fast_test(hint: Any) -> str | None:
    if hint in _FAST:
        return _FAST[hint]
    inner = _optional_of(hint)
    if inner in _FAST:
        return f"(v is None or {_FAST[inner]})"
    return None


def _plain_on_the_wire(hint: Any) -> bool:
    """Whether values of `hint` are packed by msgpack as they are (no attrs inside)."""
    if hint in _SCALARS:
        return True
    inner = _optional_of(hint)
    if inner is not None:
        return _plain_on_the_wire(inner)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return typing.get_args(hint)[0] in _SCALARS
    if origin is dict:
        return typing.get_args(hint) == (str, str)
    return False


def compile_structure(cls: type, fields: tuple[tuple[str, Callable[[Any], Any], bool], ...],
                      fail: Callable[[str], typing.NoReturn],
                      error: type[Exception]) -> Callable[[Any], Any]:
    """`obj` (an unpacked map) as an instance of `cls`, checked by `fields` (name, checker,
    has a default) as codec's `_structure` does."""
    hints = typing.get_type_hints(cls)
    name = cls.__name__
    env: dict[str, Any] = {"cls": cls, "fail": fail, "error": error, "MISSING": _MISSING}
    lines = ["def structure(obj):",
             "    if not isinstance(obj, dict):",
             f"        fail({name + ': expected map, got '!r} + type(obj).__name__)"]
    for i, (field, check, has_default) in enumerate(fields):
        env[f"c{i}"] = check
        fast = _fast_test(hints[field])
        value = f"v if {fast} else c{i}(v)" if fast else f"c{i}(v)"
        if typing.get_origin(hints[field]) is tuple:
            # An empty array (a heartbeat's `running`, most of the time) is the checker's ()
            # without calling it.
            value = f"() if (type(v) is list and not v) else c{i}(v)"
        lines += [f"    v = obj.get({field!r}, MISSING)",
                  "    if v is not MISSING:",
                  f"        a{i} = {value}",
                  "    else:",
                  f"        a{i} = MISSING" if has_default else
                  f"        fail({f'{name}: missing field {field!r}'!r})"]
    # Every field given (the usual case): one call with keywords, without building a dict of
    # them first; otherwise only the given ones, the others left to their defaults.
    optional = [f"a{i} is not MISSING" for i, (_, _, has_default) in enumerate(fields)
                if has_default]
    named = ", ".join(f"{field}=a{i}" for i, (field, _, _) in enumerate(fields))
    given = ", ".join(f"({field!r}, a{i})" for i, (field, _, _) in enumerate(fields))
    lines.append("    try:")
    if all(field.isidentifier() and not keyword.iskeyword(field) for field, _, _ in fields):
        lines += [f"        if {' and '.join(optional) or 'True'}:",
                  f"            return cls({named})"]
    lines += [f"        return cls(**{{k: a for k, a in ({given},) if a is not MISSING}})"
              if fields else "        return cls()",
              "    except (ValueError, TypeError) as exc:",
              f"        raise error({name + ': '!r} + str(exc)) from None"]
    exec("\n".join(lines), env)  # our own source, built from our own classes
    return env["structure"]  # type: ignore[no-any-return]


def compile_unstructure(cls: type, unstructure: Callable[[Any], Any],
                        nested: Callable[[type], Callable[[Any], Any]]
                        ) -> Callable[[Any], dict[str, Any]]:
    """The map `unstructure` would make of an instance of `cls` (as msgpack packs it: tuples
    of scalars may stay tuples). `nested(attrs_class)` gives that class's own function."""
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {"u": unstructure}
    items = []
    for i, field in enumerate(f.name for f in attrs.fields(cls)):
        hint = hints[field]
        inner = _optional_of(hint) or hint
        if _plain_on_the_wire(hint):
            items.append(f"{field!r}: msg.{field}")
        elif attrs.has(inner):
            env[f"n{i}"] = nested(inner)
            if inner is hint:
                items.append(f"{field!r}: n{i}(msg.{field})")
            else:
                items.append(f"{field!r}: None if msg.{field} is None else n{i}(msg.{field})")
        elif typing.get_origin(hint) is tuple and attrs.has(typing.get_args(hint)[0]):
            env[f"n{i}"] = nested(typing.get_args(hint)[0])
            items.append(f"{field!r}: [n{i}(x) for x in msg.{field}]")
        else:
            items.append(f"{field!r}: u(msg.{field})")
    source = "def unstructure(msg):\n    return {" + ", ".join(items) + "}"
    exec(source, env)  # our own source, built from our own classes
    return env["unstructure"]  # type: ignore[no-any-return]
