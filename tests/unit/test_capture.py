"""Thread calls' prints and logs are routed to their own job (runtime/capture.py), and the
worker's live output coalesces what they print (runtime/liveout.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from tcpsched.core import messages as m
from tcpsched.core.limits import WireLimits
from tcpsched.runtime.capture import CURRENT, JobCapture, RoutedHandler, RoutedStream
from tcpsched.runtime.liveout import LiveOutput


def test_concurrent_threads_each_write_to_their_own_capture() -> None:
    """Two threads printing at once through one routed stream each land in their own
    capture; a write outside any call goes to the stream it replaced."""
    fallback = io.StringIO()
    stream = RoutedStream("stdout", fallback)
    captures = {name: JobCapture(1 << 20) for name in ("a", "b")}
    barrier = threading.Barrier(2)

    def job(name: str) -> None:
        CURRENT.set(captures[name])
        barrier.wait()
        for i in range(500):
            stream.write(f"{name}{i}\n")

    threads = [threading.Thread(target=job, args=(n,)) for n in captures]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stream.write("worker\n")
    for name, capture in captures.items():
        assert capture.text("stdout") == "".join(f"{name}{i}\n" for i in range(500))
    assert fallback.getvalue() == "worker\n"


def test_logging_inside_a_call_goes_to_its_stderr_only() -> None:
    """A record logged in a call's context is in that call's stderr; outside, the handler
    writes nothing."""
    handler = RoutedHandler()
    logger = logging.getLogger("tcpsched-test-capture")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        capture = JobCapture(1 << 20)
        token = CURRENT.set(capture)
        logger.warning("inside %d", 1)
        CURRENT.reset(token)
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    assert capture.text("stderr") == "WARNING:tcpsched-test-capture:inside 1\n"


async def test_writes_of_one_loop_turn_go_in_one_output_message() -> None:
    """Many writes before the loop runs again become one `Output`, with both streams, and
    nothing is sent (nor lost) while unregistered: `resend` sends it on registration."""
    sent: list[m.Output] = []
    registered = False

    def send(msg: m.Output) -> bool:
        if registered:
            sent.append(msg)
        return registered

    live = LiveOutput(send, WireLimits, interval_s=0.0)
    output = live.open("j", 1)
    for i in range(100):
        output.feed("stdout", f"{i}\n".encode())
    output.feed("stderr", "é".encode()[:1])  # half a character: held until the rest comes
    output.feed("stderr", "é".encode()[1:])
    for _ in range(3):
        await asyncio.sleep(0)
    assert sent == []
    registered = True
    live.resend()
    for _ in range(3):
        await asyncio.sleep(0)
    (msg,) = sent
    assert msg.stdout == "".join(f"{i}\n" for i in range(100)) and msg.stdout_offset == 0
    assert msg.stderr == "é"
    live.close(output)


def test_bytes_written_to_the_buffer_inside_a_call_go_to_its_capture() -> None:
    """`sys.stdout.buffer.write` inside a call is that call's output, split characters and
    all; outside, it is the replaced stream's buffer."""
    fallback = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stream = RoutedStream("stdout", fallback)
    capture = JobCapture(1 << 20)
    token = CURRENT.set(capture)
    data = "é\n".encode()
    stream.buffer.write(data[:1])  # type: ignore[attr-defined]
    stream.buffer.write(data[1:])  # type: ignore[attr-defined]
    CURRENT.reset(token)
    assert capture.text("stdout") == "é\n"
    assert stream.buffer is fallback.buffer


async def test_a_quiet_attempt_sends_nothing_on_resend_and_a_late_print_still_goes() -> None:
    """An attempt that printed nothing has nothing to send again on registration; once it
    prints, its output goes as usual (its spool is made then)."""
    sent: list[m.Output] = []
    live = LiveOutput(lambda msg: sent.append(msg) is None, WireLimits, interval_s=0.0)
    quiet = live.open("q", 1)
    loud = live.open("l", 1)
    live.resend()
    for _ in range(3):
        await asyncio.sleep(0)
    assert sent == [] and quiet.drain() == {}
    loud.feed("stdout", b"late\n")
    for _ in range(3):
        await asyncio.sleep(0)
    assert [(msg.job_id, msg.stdout, msg.stderr) for msg in sent] == [("l", "late\n", "")]
    live.close(quiet)
    live.close(loud)
