"""Handshake slots (core/admission.py) without sockets: bounded in all and per source, oldest
out first, and a newcomer always admitted.

Each test pins one rule of the slots; a hypothesis run of random admits and releases checks
the bounds after every step against a plain list model.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.admission import HandshakeSlots


def test_below_the_bounds_nobody_is_evicted() -> None:
    """Room left: admitting evicts nothing."""
    slots = HandshakeSlots(total_max=4, per_source_max=2)
    assert slots.admit("a1", "A") == [] and slots.admit("b1", "B") == []
    assert len(slots) == 2 and "a1" in slots


def test_a_full_source_loses_its_own_oldest() -> None:
    """A source at its cap: its oldest goes, connections of other sources stay."""
    slots = HandshakeSlots(total_max=10, per_source_max=2)
    slots.admit("a1", "A")
    slots.admit("b1", "B")
    slots.admit("a2", "A")
    assert slots.admit("a3", "A") == ["a1"]
    assert "b1" in slots and "a3" in slots and slots.pending_from("A") == 2


def test_all_slots_full_evicts_from_the_busiest_source() -> None:
    """All slots taken: the victim is the oldest of the source holding the most, even when
    the newcomer comes from elsewhere, so a flood from one address cannot push out others."""
    slots = HandshakeSlots(total_max=4, per_source_max=3)
    slots.admit("b1", "B")  # the oldest of all, but its source holds only one
    for key in ("a1", "a2", "a3"):
        slots.admit(key, "A")
    assert slots.admit("c1", "C") == ["a1"]
    assert "b1" in slots


def test_release_frees_a_slot_and_ignores_unknown_keys() -> None:
    """A released slot is free again; releasing twice (an evicted connection's handler ends)
    is harmless."""
    slots = HandshakeSlots(total_max=1, per_source_max=1)
    slots.admit("a1", "A")
    slots.release("a1")
    slots.release("a1")
    assert slots.admit("b1", "B") == [] and len(slots) == 1


def test_statistics_count_admissions_and_evictions() -> None:
    """statistics() is a snapshot of what is pending and what happened so far."""
    slots = HandshakeSlots(total_max=2, per_source_max=2)
    for key in ("a1", "a2", "a3"):
        slots.admit(key, "A")
    stats = slots.statistics()
    assert (stats.pending, stats.sources, stats.admitted, stats.evicted) == (2, 1, 3, 1)


def test_limits_must_be_positive_and_a_key_is_admitted_once() -> None:
    """Zero limits and a key admitted twice are programming errors."""
    with pytest.raises(ValueError):
        HandshakeSlots(total_max=0, per_source_max=1)
    slots = HandshakeSlots(total_max=2, per_source_max=2)
    slots.admit("a1", "A")
    with pytest.raises(ValueError):
        slots.admit("a1", "A")


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 40)),
                max_size=200),
       st.integers(1, 8), st.integers(1, 8))
def test_random_admits_and_releases_keep_every_bound(
        ops: list[tuple[bool, int, int]], total_max: int, per_source_max: int) -> None:
    """After every step: at most total_max pending, at most per_source_max per source, the
    newcomer holds a slot, and each victim was the oldest of its source."""
    slots = HandshakeSlots(total_max, per_source_max)
    model: list[tuple[int, str]] = []  # (key, source), oldest first
    next_key = 0
    for is_admit, source_no, pick in ops:
        source = f"10.0.0.{source_no}"
        if is_admit or not model:
            key, next_key = next_key, next_key + 1
            victims = slots.admit(key, source)
            for victim in victims:
                victim_source = next(s for k, s in model if k == victim)
                assert victim == next(k for k, s in model if s == victim_source)
                model = [(k, s) for k, s in model if k != victim]
            model.append((key, source))
            assert key in slots
        else:
            key = model[pick % len(model)][0]
            slots.release(key)
            model = [(k, s) for k, s in model if k != key]
        assert len(slots) == len(model) <= total_max
        for src in {s for _k, s in model}:
            count = sum(1 for _k, s in model if s == src)
            assert slots.pending_from(src) == count <= min(per_source_max, total_max)
