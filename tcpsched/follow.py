"""Following a job's output while it runs (`logs JOB --follow` in the CLI and the console).

Theory of operation: the reader keeps, per stream, the offset it has shown up to, and asks the
leader (`Client.tail`) for what lies past it, waiting up to `FOLLOW_WAIT_S` when there is
nothing yet (a long poll: one request in flight, so a reader that is slower than the job costs
the leader nothing, and the reader's own pace is the only back-pressure it needs). Each answer
names the offset its text starts at: later than ours means the leader no longer held the text
in between (its tail is bounded, or a new leader started without it), which is said in a note,
never made up. Another attempt than the one followed starts again at offset 0. The answer that
says the job is finished carries the rest of the final output; following ends with it. A
failover is the client's business (it finds the new leader and asks again with the same
offsets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tcpsched.client import Client
from tcpsched.core.livelog import STREAMS
from tcpsched.errors import JobTimeout

FOLLOW_WAIT_S = 10.0  # how long one request waits for output before it is asked again


async def follow(client: Client, job: str, write: Callable[[str, str], object],
                 note: Callable[[str], object], wait_s: float = FOLLOW_WAIT_S
                 ) -> dict[str, Any]:
    """Show `job`'s output as it comes: `write(stream, text)` for each piece, `note(text)`
    for what the reader should know (a gap, a new attempt); returns the last answer, once the
    job is finished (its `state`, `exit_code`, `error`)."""
    attempt: int | None = None
    offsets = dict.fromkeys(STREAMS, 0)
    job_id = job
    while True:
        try:
            view = await client.tail(job_id, attempt, (offsets["stdout"], offsets["stderr"]),
                                     wait_s)
        except JobTimeout:  # the answer was late (a loaded or failing-over leader): ask again
            continue
        job_id = str(view.get("id") or job_id)
        current = view.get("attempt")
        if isinstance(current, int) and current != attempt:
            if attempt:
                note(f"job {job_id}: attempt {current} started")
            if attempt is not None:
                offsets = dict.fromkeys(STREAMS, 0)
            attempt = current
        for stream in STREAMS:
            at, text = view.get(f"{stream}_offset"), view.get(stream)
            if not isinstance(at, int) or not isinstance(text, str):
                continue
            if at > offsets[stream]:
                note(f"job {job_id}: {at - offsets[stream]} characters of {stream} were not "
                     "kept while it ran (see `logs` once it has finished)")
            fresh = text[max(offsets[stream] - at, 0):]
            if fresh:
                write(stream, fresh)
            offsets[stream] = max(offsets[stream], at + len(text))
        if view.get("done"):
            return view
