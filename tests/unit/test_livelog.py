"""Live output (core/livelog.py, core/liveside.py): bounded spools and tails with consistent
offsets, and `tail` requests that wait for output and are answered when it comes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tcpsched.core import messages as m
from tcpsched.core.events import Closed, Connected, Received
from tcpsched.core.livelog import AttemptSpool, Chunk, LiveTails, TextWindow
from tests.unit.test_scheduler import CLIENT, Harness

PIECES = st.lists(st.text(min_size=0, max_size=40), max_size=60)


@given(pieces=PIECES, cap=st.integers(1, 100))
def test_a_window_holds_the_newest_characters_at_their_offsets(pieces: list[str], cap: int
                                                               ) -> None:
    """Whatever is appended, a window holds exactly the stream's newest `cap` characters, and
    `since` returns the stream from an offset (or from the oldest held one)."""
    window = TextWindow(cap)
    stream = ""
    for piece in pieces:
        window.put(window.end, piece)
        stream += piece
        assert window.end == len(stream)
        assert window.text == stream[-cap:] if stream else window.text == ""
        assert len(window.text) <= cap
    for offset in range(len(stream) + 2):
        at, text = window.since(offset)
        assert text == stream[at:]
        assert at == max(min(offset, len(stream)), window.start)


@given(pieces=PIECES, takes=st.lists(st.booleans(), max_size=60), cap=st.integers(1, 64))
def test_spool_chunks_carry_the_stream_at_their_offsets(pieces: list[str], takes: list[bool],
                                                        cap: int) -> None:
    """Every chunk a spool hands out is the stream's text at the offset it names; offsets
    never go back, so a leader assembling them holds the stream's newest text."""
    spool = AttemptSpool(cap)
    stream = ""
    tails = LiveTails(tail_chars_max=cap * 2)
    last = 0
    for piece, take in zip(pieces, takes + [True] * len(pieces), strict=False):
        spool.add("stdout", piece)
        stream += piece
        if take and (chunk := spool.take()) is not None:
            assert chunk.stdout == stream[chunk.stdout_offset:]
            assert chunk.stdout_offset >= last
            last = chunk.stdout_offset
            tails.put("j", 1, chunk)
    chunk = spool.take()
    if chunk is not None:
        tails.put("j", 1, chunk)
    read = tails.read("j", 1, (0, 0))
    if stream:
        assert read is not None
        assert stream.endswith(read.stdout) and read.stdout
        assert read.stdout_offset + len(read.stdout) == len(stream)


def test_a_job_printing_100_mb_keeps_the_spool_and_the_tail_bounded() -> None:
    """100 MB printed in 64 KiB writes with a flush now and then: the worker's spool and the
    leader's tail never hold more than their caps, and the offsets count every character."""
    spool = AttemptSpool()
    tails = LiveTails()
    piece = "x" * 1023 + "\n"
    written = 0
    for i in range(100 * 1024 * 1024 // len(piece)):
        spool.add("stdout", piece)
        written += len(piece)
        if i % 997 == 0:
            chunk = spool.take()
            assert chunk is not None
            assert len(chunk.stdout) <= 64 * 1024
            tails.put("j", 1, chunk)
        assert len(spool.windows["stdout"].text) <= 64 * 1024
    chunk = spool.take()
    assert chunk is not None
    tails.put("j", 1, chunk)
    assert tails.chars <= tails.tail_chars_max
    read = tails.read("j", 1, (0, 0))
    assert read is not None
    assert read.stdout_offset + len(read.stdout) == written
    assert read.stdout_offset > 0  # a gap: the reader is told where the text starts


def test_the_global_cap_empties_the_least_recently_written_tail() -> None:
    """Past `total_chars_max`, whole tails are emptied oldest-written first; their offsets
    stay, so a reader there sees a gap, never text of another job."""
    tails = LiveTails(tail_chars_max=100, total_chars_max=250)
    for job in ("a", "b", "c"):
        tails.put(job, 1, Chunk(0, job * 100, 0, ""))
    assert tails.chars <= 250
    assert tails.read("a", 1, (0, 0)) == tails.read("a", 1, (100, 0))
    read = tails.read("a", 1, (0, 0))
    assert read is not None and read.stdout == "" and read.stdout_offset == 100
    tails.put("a", 1, Chunk(100, "A" * 100, 0, ""))  # a is written again: b goes next
    assert tails.chars <= 250
    b = tails.read("b", 1, (0, 0))
    assert b is not None and b.stdout == ""
    c = tails.read("c", 1, (0, 0))
    assert c is not None and c.stdout == "c" * 100


def test_a_new_attempt_replaces_the_tail_and_an_ended_one_is_dropped() -> None:
    """A chunk of another attempt starts a fresh tail; `ended` frees it and tells the job's
    subscribers; unsubscribed callbacks are not called."""
    tails = LiveTails()
    calls: list[str] = []
    token = tails.subscribe("j", calls.append)
    assert token is not None
    tails.put("j", 1, Chunk(0, "one", 0, ""))
    tails.put("j", 2, Chunk(0, "two", 0, "e"))
    assert tails.read("j", 1, (0, 0)) is None
    read = tails.read("j", 2, (0, 0))
    assert read is not None and (read.stdout, read.stderr) == ("two", "e")
    assert tails.chars == 4
    tails.put("j", 2, Chunk(0, "two", 0, "e"))  # nothing new: nobody is told
    tails.ended("j")
    assert tails.chars == 0 and len(tails) == 0
    assert calls == ["j", "j", "j"]
    tails.unsubscribe(token)
    tails.ended("j")
    assert calls == ["j", "j", "j"] and tails.subscribers == 0


def test_subscribers_are_bounded() -> None:
    """Past `subscribers_max`, subscribe says no (None) rather than grow."""
    tails = LiveTails(subscribers_max=2)
    assert tails.subscribe("a", print) is not None
    assert tails.subscribe("b", print) is not None
    assert tails.subscribe("c", print) is None


# -- the scheduler: Output in, tail out ----------------------------------------------------------


def _running(h: Harness) -> tuple[str, int]:
    h.connect("w1")
    job_id = h.submit("echo")
    (assign,) = h.assigns("w1")
    return job_id, assign.attempt


def _tail(h: Harness, req_id: int, job_id: str, **options: Any) -> None:
    h.step(Received(CLIENT, m.Tail(req_id=req_id, job_id=job_id, **options)))


def _replies(h: Harness, req_id: int) -> list[Any]:
    return [msg for c, msg in h.sent if c == CLIENT and getattr(msg, "req_id", None) == req_id]


def _output(h: Harness, job_id: str, attempt: int, at: int, text: str) -> None:
    h.step(Received(h.conns["w1"], m.Output(job_id=job_id, attempt=attempt, stdout_offset=at,
                                            stdout=text, stderr_offset=0, stderr="")))


def test_a_waiting_tail_is_answered_when_output_comes_then_with_the_final_rest() -> None:
    """A `tail` with nothing to show waits; the worker's Output answers it with the text; the
    next one, once the job finished, gets the rest of the final output and `done`."""
    h = Harness()
    job_id, attempt = _running(h)
    _tail(h, 101, job_id, wait=10.0)
    assert _replies(h, 101) == []
    _output(h, job_id, attempt, 0, "line 1\n")
    (reply,) = _replies(h, 101)
    assert reply.value["stdout"] == "line 1\n" and reply.value["stdout_offset"] == 0
    assert reply.value["state"] == "running" and not reply.value["done"]
    _tail(h, 102, job_id, attempt=attempt, stdout_offset=7, wait=10.0)
    assert _replies(h, 102) == []
    h.step(Received(h.conns["w1"], m.Result(
        job_id=job_id, attempt=attempt, state="failed", exit_code=3, result=None,
        stdout="line 1\nline 2\n", stderr="", error="exit code 3", started_at=h.now,
        finished_at=h.now)))
    (reply,) = _replies(h, 102)
    assert reply.value["done"] and reply.value["state"] == "failed"
    assert (reply.value["stdout_offset"], reply.value["stdout"]) == (7, "line 2\n")
    assert reply.value["exit_code"] == 3
    assert len(h.sched.tails) == 0 and h.sched.tails.subscribers == 0


def test_a_waiting_tail_times_out_empty_and_a_closed_one_is_forgotten() -> None:
    """A `tail` past its wait gets an empty answer (the client asks again); one whose
    connection closed is dropped, and never answered."""
    h = Harness()
    job_id, _attempt = _running(h)
    _tail(h, 101, job_id, wait=1.0)
    h.advance(1.5, beating=("w1",))
    (reply,) = _replies(h, 101)
    assert reply.value["stdout"] == "" and not reply.value["done"]
    other = 2000
    h.step(Connected(other, "client", "other"))
    h.step(Received(other, m.Tail(req_id=9, job_id=job_id, wait=30.0)))
    assert h.sched.tails.subscribers == 1
    h.step(Closed(other, "gone"))
    assert h.sched.tails.subscribers == 0


def test_output_of_a_stale_attempt_or_another_worker_is_dropped() -> None:
    """Only the current attempt on its own worker grows the tail."""
    h = Harness()
    job_id, attempt = _running(h)
    _output(h, job_id, attempt + 1, 0, "stale")
    h.connect("w2")
    h.step(Received(h.conns["w2"], m.Output(job_id=job_id, attempt=attempt, stdout_offset=0,
                                            stdout="not yours", stderr_offset=0, stderr="")))
    assert len(h.sched.tails) == 0
    _tail(h, 101, job_id)
    (reply,) = _replies(h, 101)
    assert reply.value["stdout"] == ""


def test_an_unknown_job_is_not_found() -> None:
    """A `tail` of a job nobody knows is a not_found error."""
    h = Harness()
    _tail(h, 101, "nope-nope")
    (reply,) = _replies(h, 101)
    assert isinstance(reply, m.ErrorReply) and reply.kind == "not_found"
