"""A worker never sends a result the coordinator would refuse: the check uses the limits the
coordinator enforces (one definition, core/limits.py), and what fails it becomes a failed
attempt that does fit."""

from __future__ import annotations

import random
from typing import Any

from tcpsched.core import messages as m
from tcpsched.core.codec import FrameDecoder, UnpackLimits, encode, peer_refusal
from tcpsched.core.limits import WireLimits
from tcpsched.core.workerproto import RESULT_SENDS_MAX, WorkerConfig, WorkerProtocol


def result(value: Any, stdout: str = "") -> m.Result:
    return m.Result(job_id="j1", attempt=1, state="succeeded", exit_code=None, result=value,
                    stdout=stdout, stderr="", error=None, started_at=1.0, finished_at=2.0)


def accepted(msg: m.Result, limits: WireLimits) -> bool:
    """Whether a coordinator decoding with `limits` takes the frame (its own decoder)."""
    decoder = FrameDecoder(limits.frame_bytes_max, m.WORKER_TO_COORDINATOR,
                           UnpackLimits.from_wire_limits(limits))
    try:
        decoder.feed(encode(msg, limits.frame_bytes_max * 2))
        return decoder.next_message() == msg
    except Exception:
        return False


def test_peer_refusal_agrees_with_the_coordinators_decoder() -> None:
    """What peer_refusal passes, the coordinator's decoder takes; what it refuses, the
    decoder refuses, with the limit named."""
    limits = WireLimits(frame_bytes_max=64 * 1024, array_items_max=1000, map_items_max=500)
    cases = [result(["a"] * 999), result(["a"] * 1001), result({str(i): i for i in range(501)}),
             result("x" * 70_000), result([[1] * 600, [2] * 600]), result(None, "out")]
    for msg in cases:
        why = peer_refusal(msg, limits, m.WORKER_TO_COORDINATOR)
        assert (why is None) == accepted(msg, limits), (why, msg.result)
    assert "array of 1001 items" in str(peer_refusal(cases[1], limits))
    assert "--max-map-items" in str(peer_refusal(cases[2], limits))
    assert "--max-frame" in str(peer_refusal(cases[3], limits))


def test_worker_turns_an_unsendable_result_into_a_failed_attempt() -> None:
    """Over the limits, or lost on RESULT_SENDS_MAX connections: a failed attempt that says
    why and fits; a result within the limits goes unchanged."""
    worker = WorkerProtocol(WorkerConfig(name="w", slots=1, coordinators=("c",)),
                            random.Random(0), 0.0)
    worker.limits = WireLimits(frame_bytes_max=8192, array_items_max=100, map_items_max=100)
    fine = result([1, 2, 3])
    assert worker._deliverable(fine) is fine
    big = worker._deliverable(result(list(range(101))))
    assert big.state == "failed" and big.result is None
    assert big.error is not None and "array of 101 items" in big.error
    huge = worker._deliverable(result(None, stdout="x" * 10_000))
    assert huge.state == "failed" and "--max-frame" in str(huge.error)
    assert peer_refusal(huge, worker.limits) is None  # the replacement itself fits
    lost = worker._deliverable(fine, sends=RESULT_SENDS_MAX)
    assert lost.state == "failed" and "lost 3 times" in str(lost.error)
