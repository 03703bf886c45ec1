"""A call child's per-call work (runtime/callchild.py `_Child.run`), run in this process: what
a call prints or logs is its own, a quiet call costs no capture, and live frames precede the
reply and come only when something was printed."""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import msgpack

from tcpsched.runtime import callchild


def request(function: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"function": function, "args": list(args), "kwargs": {}, "defined_in": None,
            "cwd": None, "env": {}, **extra}


def result(reply: dict[str, Any]) -> Any:
    assert reply["ok"], reply
    return msgpack.unpackb(reply["result"], raw=False)


def noisy(text: str) -> int:
    print(text)
    logging.getLogger("user").warning("logged %s", text)
    return len(text)


def drops_root_handlers() -> None:
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


async def coroutine_value(n: int) -> int:
    return n * 2


def pending_bytes(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(1 << 16)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def test_a_quiet_call_has_empty_outputs_and_leaves_one_root_handler() -> None:
    """A call that prints nothing replies with empty outputs; the streams are put back and the
    root logger holds the child's handler once, however many calls ran."""
    child = callchild._Child(1 << 20, 1 << 20, 0)
    stdout, stderr = sys.stdout, sys.stderr
    try:
        for i in range(3):
            reply = child.run(request("builtins:abs", -i))
            assert result(reply) == i
            assert reply["stdout"] == "" and reply["stderr"] == ""
        assert sys.stdout is stdout and sys.stderr is stderr
        assert logging.getLogger().handlers.count(child._handler) == 1
    finally:
        logging.getLogger().removeHandler(child._handler)


def test_prints_and_logs_land_in_their_own_call_only() -> None:
    """print() and logging of a call are in its reply; a record logged between calls is in
    no call's output; a call that took the root handlers off does not lose the next call's
    logs."""
    child = callchild._Child(1 << 20, 1 << 20, 0)
    try:
        first = child.run(request(f"{__name__}:noisy", "one"))
        assert result(first) == 3
        assert first["stdout"] == "one\n"
        assert "logged one" in first["stderr"]
        logging.getLogger("between").warning("between calls")
        child.run(request(f"{__name__}:drops_root_handlers"))
        second = child.run(request(f"{__name__}:noisy", "two"))
        assert second["stdout"] == "two\n"
        assert "logged two" in second["stderr"]
        assert "between calls" not in second["stderr"] + first["stderr"]
    finally:
        logging.getLogger().removeHandler(child._handler)


def test_a_coroutine_function_is_awaited_in_the_childs_loop() -> None:
    """A coroutine function's value is awaited, not sent as a coroutine."""
    child = callchild._Child(1 << 20, 1 << 20, 0)
    try:
        assert result(child.run(request(f"{__name__}:coroutine_value", 21))) == 42
    finally:
        logging.getLogger().removeHandler(child._handler)
        if child._loop is not None:
            child._loop.close()


def test_live_frames_only_when_printed_and_before_the_reply() -> None:
    """With live output asked for, a quiet call sends no frame at all; a printing call's
    frame is on the socket by the time run() returns, or not at all (the reply has it all)."""
    ours, theirs = socket.socketpair()
    child = callchild._Child(1 << 20, 1 << 20, 0)
    child.live = callchild._LiveFrames(ours)
    try:
        quiet = child.run(request("builtins:abs", -5, live=True))
        assert result(quiet) == 5
        assert pending_bytes(theirs) == b""
        loud = child.run(request(f"{__name__}:noisy", "live", live=True))
        assert loud["stdout"] == "live\n"
        sent = pending_bytes(theirs)
        while sent:  # whatever was sent is whole frames of this call's output
            (length,) = callchild.HEADER.unpack_from(sent)
            frame = msgpack.unpackb(sent[4:4 + length], raw=False)
            assert frame["out"] in ("stdout", "stderr") and frame["data"]
            sent = sent[4 + length:]
        child.live.add("stdout", b"after the call")  # not active: dropped
        assert pending_bytes(theirs) == b""
    finally:
        logging.getLogger().removeHandler(child._handler)
        ours.close()
        theirs.close()


def unsendable() -> object:
    return object()


def huge() -> bytes:
    return b"x" * (2 << 20)


def test_a_result_that_cannot_be_packed_fails_only_its_call() -> None:
    """The child's one packer is left empty by a result it cannot pack or that is too big:
    the next call's result comes back whole, and the reply frame is exactly that call's."""
    child = callchild._Child(1 << 20, 1 << 20, 0)
    try:
        failed = child.run(request(f"{__name__}:unsendable"))
        assert not failed["ok"] and "result cannot be sent" in failed["error"]
        too_big = child.run(request(f"{__name__}:huge"))
        assert not too_big["ok"] and "over" in too_big["error"]
        reply = child.run(request("builtins:abs", -7))
        assert result(reply) == 7
        framed = callchild._frame(reply, child.packer)
        (length,) = callchild.HEADER.unpack_from(framed)
        assert len(framed) == 4 + length
        assert msgpack.unpackb(framed[4:], raw=False) == reply
    finally:
        logging.getLogger().removeHandler(child._handler)
