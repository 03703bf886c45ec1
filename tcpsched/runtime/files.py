"""Durable file writes: the few system calls that make a write survive a power cut.

Theory of operation: data in a file is durable once the file is fsynced; a file's *name* (a
create, a rename, a delete) is durable once its directory is fsynced too. `write_durably`
replaces a file atomically the usual way (write a temporary beside it, fsync it, `os.replace`
it over the old one, fsync the directory), so a crash leaves either the old content or the new,
never a mix; a write that fails removes its temporary file. `write_all` loops because
`os.write` may write less than it was given.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def describe_os_error(exc: OSError) -> str:
    """`file: reason` for one line of a message (`No space left on device`, not `[Errno 28]`)."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def remove_quietly(path: Path) -> None:
    """Delete `path` if it is there, ignoring errors: cleanup on a path that already failed."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir).

    On failure (a full disk, most often) the temporary file is removed again, so a failed
    write leaves the directory as it was and gives back whatever space it took.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)

