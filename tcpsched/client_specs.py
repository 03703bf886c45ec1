"""What a client checks of a job before it sends it, and how it names a function.

Theory of operation: a frame the coordinator refuses gets the connection closed, and the
client's resend after the reconnect would be refused again, so the client refuses such a job
itself first, with a one-line reason (`spec_problem`: text that is not UTF-8, values msgpack
cannot carry, items over the coordinator's limits). Batches are sized without packing every
job's arguments twice (`size_bound`, `flat_bytes`): packing them once here and again in the
Submit cost a quarter of the client's time per job. `function_name` turns a function object
into the "module:qualname" a worker can import, or says why it cannot.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from tcpsched.core.codec import UnpackLimits, limit_problem, limits_cannot_bind
from tcpsched.core.jobs import JobSpec
from tcpsched.errors import RequestError

SPEC_OVERHEAD_BYTES = 512  # a job's share of a Submit besides its strings and values
UNPACKABLE_BYTES = 2**62  # a bound no batch passes: the exact encoding then says what is wrong


def size_bound(spec: JobSpec, limits: UnpackLimits | None = None) -> int:
    """An upper bound of the bytes `spec` adds to an encoded Submit, without encoding it:
    strings count 4 bytes a character, args and kwargs are sized by msgpack's C packer.

    With `limits`, also checks what the coordinator would refuse (`spec_problem`): then
    RequestError for a job over its limits, and -1 for arguments that do not pack."""
    values = flat_bytes(spec.args)
    if values is None or spec.kwargs:
        # Not a flat list of plain values: msgpack's C packer sizes it (and says if it
        # cannot pack it); the Submit that carries it is packed once more when it is sent.
        try:
            values = len(msgpack.packb(spec.args)) + len(msgpack.packb(spec.kwargs))
        except (TypeError, ValueError, OverflowError):
            return UNPACKABLE_BYTES if limits is None else -1
    else:
        values += 1  # the empty kwargs map
    texts = (spec.command, spec.function, spec.key, *spec.tags, *spec.after)
    if limits is not None:
        problem = spec_problem(spec, limits, values)
        if problem is not None:
            raise RequestError(problem if problem.startswith("job too large")
                               else f"cannot send the job: {problem}")
    return SPEC_OVERHEAD_BYTES + values + sum(4 * len(t) + 5 for t in texts if t is not None)


_PLAIN_BYTES = {bool: 1, type(None): 1, float: 9}  # msgpack's largest encoding of each


def flat_bytes(values: tuple[Any, ...]) -> int | None:
    """An upper bound of the bytes `values` packs to when every item is a plain scalar
    msgpack surely packs (None, bool, float, an int in range, an ASCII string), without
    packing it; None otherwise. `map` of scalars is the common case, and packing every job's
    arguments once here and again in its Submit cost a quarter of the client's time per job."""
    size = 5  # the array header
    for value in values:
        kind = type(value)
        if kind is int:
            if not -(2**63) <= value < 2**64:
                return None
            size += 9
        elif kind is str:
            if not value.isascii():
                return None
            size += 5 + len(value)
        else:
            plain = _PLAIN_BYTES.get(kind)
            if plain is None:
                return None
            size += plain
    return size


def which_job(index: int, jobs: Sequence[JobSpec]) -> str:
    return "the job" if len(jobs) == 1 else f"job {index + 1} of the batch"


def utf8_problem(text: str) -> str | None:
    """Why `text` cannot travel as UTF-8, or None. A lone surrogate is what Python makes of a
    byte that was not UTF-8 in a command line or a file name (surrogateescape)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        code = ord(char)
        what = (f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF
                else f"the lone surrogate U+{code:04X}")
        return (f"is not valid UTF-8 text: it holds {what} at character {exc.start} "
                "(tcpsched sends text as UTF-8)")
    return None


def value_problem(value: Any, where: str) -> str | None:
    """Why a job argument cannot be packed, or None: text that is not UTF-8, an integer out
    of msgpack's range, or a type other than None, bool, int, float, str, bytes, list, map."""
    if value is None or isinstance(value, bool | float | bytes):
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**64 else f"{where} holds an integer out of range"
    if isinstance(value, str):
        problem = utf8_problem(value)
        return None if problem is None else f"{where} {problem}"
    if isinstance(value, list | tuple):
        for item in value:
            if (problem := value_problem(item, where)) is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := utf8_problem(key)) is not None:
                return f"{where} has a key that {problem}"
            if (problem := value_problem(item, where)) is not None:
                return problem
        return None
    return (f"{where} holds a value of type {type(value).__name__}; only None, bool, int, "
            "float, str, "
            "bytes, lists and maps can be sent")


def spec_problem(spec: JobSpec, limits: UnpackLimits, values_bytes: int | None) -> str | None:
    """Why the coordinator would refuse `spec` (whose args and kwargs pack to `values_bytes`,
    None when they do not pack), or None. Checked before sending: a refused frame gets the
    connection closed, and the resend after the reconnect is closed again."""
    for what, text in (("command", spec.command), ("key", spec.key),
                       *(("tag", t) for t in spec.tags), *(("after", a) for a in spec.after)):
        if text is not None and (problem := utf8_problem(text)) is not None:
            return f"the {what} {problem}"
    if values_bytes is None:
        return (value_problem(list(spec.args), "an argument")
                or value_problem(spec.kwargs, "a keyword argument")
                or "the arguments cannot be packed")
    for what, items in (("tags", spec.tags), ("after", spec.after)):
        if len(items) > limits.array_items_max:
            return f"job too large to send: {what} holds {len(items)} items, over the limit " \
                   f"of {limits.array_items_max}"
    if not limits_cannot_bind(values_bytes, limits):
        for what, value in (("args", list(spec.args)), ("kwargs", spec.kwargs)):
            if (problem := limit_problem(value, limits)) is not None:
                return (f"job too large to send: its {what} hold {problem} (the "
                        "coordinator's --max-array-items and --max-map-items)")
    return None


def function_name(function: str | Callable[..., Any]) -> str:
    """What a call job names: "module:qualname" given as is, or made from a function object.

    The worker imports the module and looks the name up, so only a function it can find that
    way will do: not a lambda, not a function defined inside another (`<locals>`), and not one
    of `__main__`, which is the submitting script, not a module the worker can import."""
    if isinstance(function, str):
        return function
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not callable(function) or not isinstance(qualname, str):
        raise RequestError(f"a call job needs a function or a 'module:function' string, not "
                           f"{type(function).__name__}")
    if not isinstance(module, str):
        # A builtin method of a C type (e.g. math.sqrt is fine, but a bound method of an
        # instance has no module the worker could import the instance from).
        raise RequestError(f"cannot tell which module {qualname} comes from: give "
                           "'module:function'")
    if "<lambda>" in qualname:
        raise RequestError("a lambda cannot run on a worker (it has no importable name): "
                           "define a function at the top level of a module")
    if "<locals>" in qualname:
        raise RequestError(f"{qualname} is defined inside another function, so a worker cannot "
                           "import it: define it at the top level of a module")
    if inspect.ismethod(function) and not isinstance(function.__self__, type):
        raise RequestError(f"{qualname} is bound to an object, which a worker cannot import: "
                           "submit a module-level function (or a classmethod)")
    if module == "__main__":
        raise RequestError(f"{qualname} is defined in the script being run (__main__), which "
                           "a worker cannot import: move it into a module on the worker's "
                           "PYTHONPATH and import it from there")
    return f"{module}:{qualname}"


def make_spec(kind: str, **fields: Any) -> JobSpec:
    try:
        return JobSpec(kind=kind, **fields)
    except (ValueError, TypeError) as exc:
        raise RequestError(str(exc)) from None
