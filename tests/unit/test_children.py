"""core/children.py: a job's children are found by a scan from the newest job back to it."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.children import children_of


@attrs.frozen
class _Spec:
    after: tuple[str, ...] = ()


@attrs.frozen
class _State:
    value: str = "pending"


@attrs.frozen
class _Job:
    id: str
    spec: _Spec
    state: _State = _State()


def _run(build: Any) -> tuple[Any, int]:
    steps = 0
    while True:
        try:
            next(build)
            steps += 1
        except StopIteration as done:
            return done.value, steps


@given(parents=st.lists(st.lists(st.integers(0, 30), max_size=3), min_size=1, max_size=40),
       target=st.integers(0, 39), step=st.integers(1, 7))
def test_children_are_the_jobs_naming_the_parent(parents: list[list[int]], target: int,
                                                 step: int) -> None:
    """Whatever the step size, the answer is every later job whose after names the parent,
    newest first; within one step the scan never looks past the parent."""
    jobs = [_Job(f"j{i}", _Spec(tuple(f"j{p}" for p in ps if p < i)))
            for i, ps in enumerate(parents)]
    target %= len(jobs)
    parent = f"j{target}"
    found, _ = _run(children_of(parent, reversed(jobs), 1000, step=step))
    expected = [j.id for j in reversed(jobs) if parent in j.spec.after]
    assert [row["id"] for row in found] == expected
    looked: list[str] = []

    def newest_first() -> Any:
        for job in reversed(jobs):
            looked.append(job.id)
            yield job

    _run(children_of(parent, newest_first(), 1000, step=len(jobs)))
    assert looked[-1] == parent and len(looked) == len(jobs) - target


def test_limit_and_steps() -> None:
    """`limit` caps the answer; a long scan yields between bounded steps."""
    jobs = [_Job("p", _Spec())] + [_Job(f"c{i}", _Spec(("p",))) for i in range(10)]
    found, steps = _run(children_of("p", reversed(jobs), 3, step=2))
    assert [row["id"] for row in found] == ["c9", "c8", "c7"]
    found, steps = _run(children_of("p", reversed(jobs), 100, step=2))
    assert len(found) == 10 and steps == 5
