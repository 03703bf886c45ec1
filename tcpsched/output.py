"""Writing a command's output so that every byte arrives, or the command says it did not.

Why not `print`: with `PYTHONUNBUFFERED=1` (or `python -u`, common in containers and CI),
`sys.stdout` is a text layer straight over a raw `FileIO`. A write to a pipe may be partial
(the reader is slower than the writer and the kernel hands back a short count), and the text
layer ignores the count it gets back: the rest of the document is dropped silently and the
process still exits 0. `python -m tcpsched --json wait ... | (sleep 1; wc -c)` then printed
exactly one pipe buffer (65,536 bytes) and the newline. So output goes through `write_all`,
which writes the encoded bytes to the file descriptor itself and loops on the count; a
descriptor left non-blocking by whoever shares it (a parent, another process on the same
pipe) is waited on with `select` instead of failing with EAGAIN.

Failures are a result, not a traceback: a reader that went away (`| head`) is `BrokenPipe`
(exit 141, what a shell reports for a command that SIGPIPE ended, and said nowhere: the reader
chose to stop), and any other error (disk full, I/O error) is `OutputError` with one line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import sys
from typing import TextIO

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a writer whose reader left
EXIT_OUTPUT_ERROR = 74  # sysexits.h EX_IOERR: the output could not be written


class OutputError(Exception):
    """The output could not be written whole (other than a reader that went away)."""


class ReaderGone(OutputError):
    """The reader closed the pipe (`| head`): not an error worth a message."""


def _encode(text: str, stream: TextIO) -> bytes:
    """`text` in the stream's encoding; what it cannot encode is shown as escapes, never an
    exception (a table may hold any character a job printed)."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    errors = getattr(stream, "errors", None) or "strict"
    if errors == "strict":
        errors = "backslashreplace"
    return text.encode(encoding, errors)


def write_all(text: str, stream: TextIO | None = None) -> None:
    """Write `text` to `stream` (stdout) whole, looping over partial writes.

    Raises ReaderGone when the reader closed the pipe, OutputError on any other failure."""
    stream = stream if stream is not None else sys.stdout
    try:
        stream.flush()  # whatever was printed before must come first
        fd = stream.fileno()
    except BrokenPipeError:
        raise ReaderGone() from None
    except io.UnsupportedOperation:
        # A stream in memory (a test's capture, an embedding application): no descriptor,
        # and no partial writes either.
        stream.write(text)
        stream.flush()
        return
    except (OSError, ValueError) as exc:  # ValueError: closed
        raise OutputError(f"cannot write the output: {exc}") from None
    view = memoryview(_encode(text, stream))
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except BrokenPipeError:
            raise ReaderGone() from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise ReaderGone() from None
            raise OutputError(f"cannot write the output: {exc.strerror or exc}") from None
        view = view[written:]


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit does not print
    "Exception ignored ... BrokenPipeError" about a reader that went away."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def write_error(line: str) -> None:
    """One line on stderr; a stderr that is gone too is left alone (there is no one to tell)."""
    with contextlib.suppress(OutputError):
        write_all(line + "\n", sys.stderr)
