"""The generated per-class wire functions (core/wirecompile.py) against the generic walk they
replace: the same message or the same error, for well-formed and for hostile maps, and the
same bytes on the wire."""

from __future__ import annotations

import typing
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import codec
from tcpsched.core import messages as m
from tcpsched.errors import RemoteProtocolError

CLASSES = [*codec._WIRE_MESSAGES, m.AttemptRef]
FIELDS = sorted({f.name for cls in CLASSES for f in attrs.fields(cls)})

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)


def generic_structure(cls: type, obj: Any) -> Any:
    """The field-by-field walk codec did before the generated functions: the reference."""
    if not isinstance(obj, dict):
        codec._fail(f"{cls.__name__}: expected map, got {type(obj).__name__}")
    kwargs: dict[str, Any] = {}
    for name, check, has_default in codec._shape(cls).fields:
        if name in obj:
            kwargs[name] = check(obj[name])
        elif not has_default:
            codec._fail(f"{cls.__name__}: missing field {name!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"{cls.__name__}: {exc}") from None


def generic_unstructure(value: Any) -> Any:
    """A message as nested plain maps and lists, field by field: the reference."""
    if attrs.has(type(value)):
        return {f.name: generic_unstructure(getattr(value, f.name))
                for f in attrs.fields(type(value))}
    if isinstance(value, tuple | list):
        return [generic_unstructure(v) for v in value]
    if isinstance(value, dict):
        return {k: generic_unstructure(v) for k, v in value.items()}
    return value


def outcome(fn: Any, cls: type, obj: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(cls, obj)
    except RemoteProtocolError as exc:
        return "error", str(exc)


@settings(max_examples=600, deadline=None)
@given(cls=st.sampled_from(CLASSES),
       fields=st.dictionaries(st.sampled_from(FIELDS), wire_values, max_size=8))
def test_generated_structure_equals_the_generic_one_on_any_map(cls: type,
                                                               fields: dict[str, Any]) -> None:
    """Random maps (mostly wrong): the same message, or the same error message."""
    assert outcome(codec._structure, cls, fields) == outcome(generic_structure, cls,
                                                             fields)


def sample(hint: Any) -> Any:
    """A value a field of `hint` accepts."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, type(int | None)) and inner:
        return sample(inner[0])
    origin = typing.get_origin(hint)
    if origin is tuple:
        return [sample(typing.get_args(hint)[0])]
    if origin is dict:
        return {"k": "v"}
    if attrs.has(hint):
        hints = typing.get_type_hints(hint)
        return {f.name: sample(hints[f.name]) for f in attrs.fields(hint)}
    return {int: 1, str: "s", bool: True, bytes: b"b", float: 1.5}.get(hint, 7)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_class_round_trips_with_the_same_bytes_as_the_generic_walk(cls: type) -> None:
    """A valid instance of each class: generated and generic structure agree, and the map the
    generated unstructure makes packs to the same bytes as the generic one's."""
    hints = typing.get_type_hints(cls)
    obj = {f.name: sample(hints[f.name]) for f in attrs.fields(cls)}
    kind, msg = outcome(generic_structure, cls, obj)
    if kind == "error":  # a validator wants more than a sample (a nonce's length...)
        assert outcome(codec._structure, cls, obj) == (kind, msg)
        return
    assert codec._structure(cls, obj) == msg
    generic = generic_unstructure(msg)
    compiled = codec._UNSTRUCTURERS.get(cls) or codec._unstructurer(cls)
    assert compiled is not None
    assert msgpack.packb(compiled(msg), use_bin_type=True) == msgpack.packb(generic,
                                                                             use_bin_type=True)
