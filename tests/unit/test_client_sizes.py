"""The client sizes a batch of jobs without packing flat arguments twice (`flat_bytes`):
its figure is never below what msgpack really packs, and anything else is packed to be sized."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.client_specs import flat_bytes

PLAIN = (st.none() | st.booleans() | st.floats(allow_nan=False)
         | st.integers(-(2**63), 2**64 - 1) | st.text(alphabet=st.characters(max_codepoint=127)))


@given(st.lists(PLAIN, max_size=20).map(tuple))
def test_flat_arguments_are_never_sized_below_their_packing(args: tuple[object, ...]) -> None:
    """For plain scalars the bound holds at least the packed bytes."""
    bound = flat_bytes(args)
    assert bound is not None and bound >= len(msgpack.packb(args))


def test_other_arguments_are_left_to_the_packer() -> None:
    """Nested values, non-ASCII text and out-of-range integers get no shortcut."""
    for args in (([1],), ({"a": 1},), ("é",), (2**64,), (-(2**63) - 1,), (b"x",)):
        assert flat_bytes(args) is None
