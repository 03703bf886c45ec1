"""JobSpec validation, the legal state transitions, and the public record's fields."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core.jobs import (
    JOB_ID_BYTES_MAX,
    LEGAL_TRANSITIONS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRIES_MAX,
    TERMINAL_STATES,
    JobRecord,
    JobSpec,
    JobState,
    is_legal,
)

# The contract's job record fields (DESIGN.md), which `to_public` must offer.
PUBLIC_FIELDS = {
    "id", "state", "kind", "args", "priority", "retries", "attempts", "timeout", "tags",
    "after", "worker", "submitted_at", "started_at", "finished_at", "exit_code", "result",
    "stdout", "stderr", "error", "env", "cwd",
}  # fmt: skip


def test_valid_shell_and_call_specs() -> None:
    """The two kinds of job build with their own fields and sensible defaults."""
    s = JobSpec(kind="shell", command="echo hi")
    assert (s.priority, s.retries, s.timeout, s.delay, s.key) == (0, 0, None, 0.0, None)
    c = JobSpec(kind="call", function="pkg.mod:obj.method", args=(1, "x"), kwargs={"k": 2})
    assert c.args == (1, "x") and c.kwargs == {"k": 2}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (dict(kind="batch", command="x"), "kind must be"),
        (dict(kind="shell"), "needs a command"),
        (dict(kind="shell", command="   "), "non-empty"),
        (dict(kind="shell", command="x", function="m:f"), "no function"),
        (dict(kind="shell", command="x", args=(1,)), "no args"),
        (dict(kind="shell", command="x", kwargs={"a": 1}), "no args"),
        (dict(kind="call"), "needs a function"),
        (dict(kind="call", function="m:f", command="x"), "no command"),
        (dict(kind="call", function="nocolon"), "module:function"),
        (dict(kind="call", function="m:f()"), "module:function"),
        (dict(kind="call", function="1m:f"), "module:function"),
        (dict(kind="call", function="m:"), "module:function"),
        (dict(kind="shell", command="x", priority=PRIORITY_MAX + 1), "priority"),
        (dict(kind="shell", command="x", priority=PRIORITY_MIN - 1), "priority"),
        (dict(kind="shell", command="x", retries=-1), "retries"),
        (dict(kind="shell", command="x", retries=RETRIES_MAX + 1), "retries"),
        (dict(kind="shell", command="x", timeout=0), "timeout"),
        (dict(kind="shell", command="x", timeout=-1.0), "timeout"),
        (dict(kind="shell", command="x", timeout=float("inf")), "timeout"),
        (dict(kind="shell", command="x", delay=-0.5), "delay"),
        (dict(kind="shell", command="x", key=""), "idempotency key"),
        (dict(kind="shell", command="x", key="k" * (JOB_ID_BYTES_MAX + 1)), "idempotency key"),
        (dict(kind="shell", command="x", tags=("",)), "tags"),
        (dict(kind="shell", command="x", tags=("t" * 65,)), "tags"),
        (dict(kind="shell", command="x", env={"1A": "x"}), "env name"),
        (dict(kind="shell", command="x", env={"A-B": "x"}), "env name"),
        (dict(kind="shell", command="x", env={"A": 1}), "must be a string"),
        (dict(kind="shell", command="x", env={"A": "a\0b"}), "without NUL"),
        (dict(kind="shell", command="x", env={f"V{i}": "" for i in range(257)}), "at most 256"),
        (dict(kind="shell", command="x", env={"A": "v" * 40_000}), "at most"),
        (dict(kind="shell", command="x", env={f"V{i}": "v" * 30_000 for i in range(10)}),
         "in all"),
        (dict(kind="shell", command="x", cwd=""), "cwd"),
        (dict(kind="shell", command="x", cwd="a\0"), "cwd"),
        (dict(kind="call", function="m:f", cwd="/" * 5000), "cwd"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(fields: dict[str, Any], reason: str) -> None:
    """A bad spec never gets built; the ValueError names what is wrong."""
    with pytest.raises(ValueError, match=reason):
        JobSpec(**fields)


@given(st.integers())
def test_priority_bounds(priority: int) -> None:
    """A priority is accepted exactly when it lies in [PRIORITY_MIN, PRIORITY_MAX]."""
    inside = PRIORITY_MIN <= priority <= PRIORITY_MAX
    try:
        JobSpec(kind="shell", command="x", priority=priority)
    except ValueError:
        assert not inside
    else:
        assert inside


@given(st.floats(allow_nan=True))
def test_timeout_must_be_positive_and_finite(timeout: float) -> None:
    """A timeout is accepted exactly when it is a positive number of at most a year."""
    inside = 0 < timeout <= 365 * 86400
    try:
        JobSpec(kind="shell", command="x", timeout=timeout)
    except ValueError:
        assert not inside
    else:
        assert inside


def test_transitions_allow_only_the_job_life() -> None:
    """pending -> running -> terminal (or back to pending); terminal states are final."""
    assert is_legal(JobState.PENDING, JobState.RUNNING)
    assert is_legal(JobState.PENDING, JobState.CANCELLED)
    assert is_legal(JobState.RUNNING, JobState.PENDING)
    assert is_legal(JobState.RUNNING, JobState.SUCCEEDED)
    assert not is_legal(JobState.PENDING, JobState.SUCCEEDED)
    assert not is_legal(JobState.PENDING, JobState.PENDING)
    for terminal in TERMINAL_STATES:
        assert terminal.is_terminal
        assert LEGAL_TRANSITIONS[terminal] == frozenset()
        for other in JobState:
            assert not is_legal(terminal, other)
    assert not JobState.PENDING.is_terminal and not JobState.RUNNING.is_terminal
    assert set(LEGAL_TRANSITIONS) == set(JobState)


def test_public_record_has_the_contract_fields() -> None:
    """to_public offers every field of the contract, command for shell, function for call."""
    shell = JobRecord(id="j1", seq=1, spec=JobSpec(kind="shell", command="echo hi", key="k"))
    out = shell.to_public()
    assert PUBLIC_FIELDS | {"command"} <= set(out)
    assert out["command"] == "echo hi" and "function" not in out
    assert out["state"] == "pending" and out["key"] == "k"
    call = JobRecord(id="j2", seq=2, spec=JobSpec(kind="call", function="m:f", args=(1, [2])))
    out = call.to_public()
    assert PUBLIC_FIELDS | {"function"} <= set(out)
    assert out["function"] == "m:f" and out["args"] == [1, [2]] and "command" not in out
    assert "key" not in out


def test_env_and_cwd_survive_journal_maps_and_snapshot_rows() -> None:
    """A job's env and cwd round-trip through both stored forms; a job without them stays a
    plain nine-field snapshot row (the fast restart path)."""
    from tcpsched.core.records import job_from_dict, job_from_row, job_to_dict, job_to_row

    spec = JobSpec(kind="shell", command="make", env={"CI": "1", "EMPTY": ""}, cwd="/srv/app")
    job = JobRecord(id="j1", seq=1, spec=spec)
    assert job_from_row(job_to_row(job)) == job
    assert job_from_dict(job_to_dict(job)) == job
    plain = JobRecord(id="j2", seq=2, spec=JobSpec(kind="shell", command="make"))
    assert len(job_to_row(plain)) == 9
    assert job_from_row(job_to_row(plain)) == plain
    assert job_to_dict(plain).keys() == {"id", "seq", "state", "kind", "command"}
