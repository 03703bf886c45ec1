"""The worker's shortcut past packing a result to measure it (`_surely_taken` in
core/workerproto.py): whenever it says a coordinator takes a result, `peer_refusal` (the real
check, which packs and, for big ones, unpacks it as the coordinator would) agrees."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.codec import peer_refusal
from tcpsched.core.limits import WireLimits
from tcpsched.core.workerproto import _surely_taken

results = st.builds(
    m.Result, job_id=st.text(max_size=40), attempt=st.integers(1, 2**63 - 1),
    state=st.sampled_from(["succeeded", "failed", "cancelled"]),
    exit_code=st.none() | st.integers(-2**70, 2**70),
    result=st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
    | st.text(max_size=300) | st.lists(st.integers(), max_size=5),
    stdout=st.text(max_size=300), stderr=st.text(max_size=100),
    error=st.none() | st.text(max_size=50),
    started_at=st.floats(0, 2e9), finished_at=st.floats(0, 2e9))
limits = st.builds(WireLimits, frame_bytes_max=st.integers(1, 4096),
                   array_items_max=st.integers(1, 4096), map_items_max=st.integers(1, 4096))


@settings(max_examples=500, deadline=None)
@given(result=results, wire=limits)
def test_a_result_the_shortcut_passes_is_one_the_coordinator_takes(result: m.Result,
                                                                  wire: WireLimits) -> None:
    """Never a false pass: a shortcut yes is always the real check's yes."""
    if _surely_taken(result, wire):
        assert peer_refusal(result, wire, m.WORKER_TO_COORDINATOR) is None


def test_the_common_small_result_takes_the_shortcut() -> None:
    """A no-op call's result under the default limits is passed without packing it."""
    result = m.Result(job_id="14dd21c3bd0f", attempt=1, state="succeeded", exit_code=None,
                      result=7, stdout="", stderr="", error=None, started_at=1.0,
                      finished_at=2.0)
    assert _surely_taken(result, WireLimits())
    assert not _surely_taken(result, WireLimits(map_items_max=16))
