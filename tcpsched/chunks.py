"""What a chunk job of `map(..., chunk_size=K)` runs on the worker: the function once per item.

Theory of operation: `Client.map` with a chunk size above 1 submits one job per chunk of K
items whose function is `call_each` and whose arguments are the user's function (as
"module:function") and the chunk's argument lists. The result of a chunk job is the list of the
function's results, in item order; `Client.gather_results` flattens the chunks back into one
list in item order. A chunk fails as a whole when one of its items raises (the job's error names
the item's index in the chunk), and is retried as a whole.

A worker started with `--allow-call` runs chunk jobs only if its list admits this module
(`--allow-call tcpsched.chunks`); admitting it admits any function through it, which is why
a restricted worker does not get it by default.
"""

from __future__ import annotations

import importlib
from typing import Any

CHUNK_FUNCTION = "tcpsched.chunks:call_each"


def load(function: str) -> Any:
    """The callable "module:function" (dots after the colon reach attributes) names."""
    module_name, _, qualname = function.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def call_each(function: str, arg_lists: list[list[Any]]) -> list[Any]:
    """`function(*args)` for each argument list, in order; the results as a list."""
    target = load(function)
    out = []
    for index, args in enumerate(arg_lists):
        try:
            out.append(target(*args))
        except Exception as exc:
            raise RuntimeError(f"item {index} of the chunk: {type(exc).__name__}: {exc}"
                               ) from exc
    return out
